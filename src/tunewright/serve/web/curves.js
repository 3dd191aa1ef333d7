// Loss curves of one run, its checkpoints, and its evaluation report: shared by the job page and the run page.
import { get, text, download } from "./api.js";
import { lineChart } from "./chart.js";
import { h, table, fmt } from "./dom.js";

export function lossSeries(rows, name = "") {
  const at = (key) => rows.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]);
  const prefix = name ? `${name} ` : "";
  return [{ name: `${prefix}training loss`, points: at("loss") }, { name: `${prefix}validation loss`, points: at("eval_loss"), dashed: true }];
}

// A live curve: fetches only the steps after the last one it has.
export class LiveCurve {
  constructor(runId) { this.runId = runId; this.rows = []; this.node = h("div", { id: "loss-chart" }); }
  async poll() {
    const after = this.rows.length ? this.rows[this.rows.length - 1].step : -1;
    const page = await get(`/v1/runs/${encodeURIComponent(this.runId)}/metrics?after_step=${after}`);
    if (page.data.length || !this.node.firstChild) {
      this.rows.push(...page.data);
      this.node.replaceChildren(lineChart("loss curve", lossSeries(this.rows)));
    }
    return this.rows;
  }
  get last() { return this.rows[this.rows.length - 1] || {}; }
}

export function evalTable(results) {
  if (!results || !results.comparison || !Object.keys(results.comparison).length) {
    const metrics = results && results.metrics ? Object.values(results.metrics)[0] || {} : {};
    return table([{ label: "metric", value: (r) => r[0] }, { label: "value", num: true, value: (r) => fmt.num(r[1]) }],
      Object.entries(metrics).filter(([, v]) => typeof v === "number"));
  }
  const interval = (c) => (typeof c.low === "number" ? `[${fmt.num(c.low, 3)}, ${fmt.num(c.high, 3)}]` : "–");
  return table([{ label: "metric", value: (r) => r[0] }, { label: "base", num: true, value: (r) => fmt.num(r[1].base) },
    { label: "tuned", num: true, value: (r) => fmt.num(r[1].tuned) }, { label: "Δ", num: true, value: (r) => fmt.num(r[1].delta) },
    { label: "95% CI", value: (r) => interval(r[1]) }, { label: "verdict", value: (r) => r[1].verdict || "" }],
    Object.entries(results.comparison));
}

// The report is self-contained HTML: fetched with the key, shown in a sandboxed frame, downloadable.
export async function reportSection(run) {
  const section = h("section", { id: "report", "aria-labelledby": "report-title" }, h("h2", { id: "report-title" }, "Evaluation"));
  if (run.eval) section.append(evalTable(run.eval));
  if (!run.has_report) {
    section.append(h("p", { class: "muted" }, "No evaluation report yet. Jobs write one when created with “Evaluate after training”; "
      + "for a CLI run: tunewright eval RUN --data TEST --compare-base."));
    return section;
  }
  const path = `/v1/runs/${encodeURIComponent(run.id)}/report`;
  const frame = h("iframe", { class: "report", title: "Evaluation report", sandbox: "" });
  frame.srcdoc = await text(path);
  section.append(h("div", { class: "actions" },
    h("button", { type: "button", class: "secondary", id: "download-report", onclick: () => download(path, `${run.id}-report.html`) }, "Download report")),
  frame);
  return section;
}
