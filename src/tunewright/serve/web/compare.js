// Compare runs and jobs: loss curves overlaid, hyperparameters side by side (differences highlighted), eval metrics.
import { get } from "./api.js";
import { COLORS, lineChart } from "./chart.js";
import { lossSeries } from "./curves.js";
import { fmt, h, table } from "./dom.js";

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out);
    else out[`${prefix}${k}`] = Array.isArray(v) ? v.join(", ") : v;
  }
  return out;
}

export async function comparePage({ view, query }) {
  const runs = (await get("/v1/runs")).data;
  const chosen = new Set((query.get("ids") || "").split(",").filter(Boolean));
  const picker = h("fieldset", { id: "compare-pick" }, h("legend", {}, "Runs and jobs to compare (two or more)"),
    runs.map((r) => h("label", { class: "inline", for: `pick-${r.id}` },
      h("input", { type: "checkbox", id: `pick-${r.id}`, value: r.id, checked: chosen.has(r.id),
        onchange: (e) => { e.target.checked ? chosen.add(r.id) : chosen.delete(r.id); location.hash = `#/compare?ids=${[...chosen].join(",")}`; } }),
      `${r.id} (${r.status})`)));
  view.append(h("h1", {}, "Compare"), h("section", {}, picker));
  const picked = runs.filter((r) => chosen.has(r.id));
  if (picked.length < 2) { view.append(h("p", { class: "muted" }, "Pick at least two.")); return; }
  const metrics = await Promise.all(picked.map((r) => get(`/v1/runs/${encodeURIComponent(r.id)}/metrics`)));
  const series = picked.flatMap((r, i) => lossSeries(metrics[i].data, r.id).map((s) => ({ ...s, color: COLORS[i % COLORS.length] })));
  view.append(h("section", { id: "compare-curves" }, h("h2", {}, "Loss"), lineChart("loss curves overlaid", series)));
  const flat = picked.map((r) => flatten({ model: r.model, method: r.method, objective: r.objective, ...r.hyperparameters }));
  const keys = [...new Set(flat.flatMap(Object.keys))].sort();
  const differs = (k) => new Set(flat.map((f) => JSON.stringify(f[k] ?? null))).size > 1;
  view.append(h("section", { id: "compare-hparams" }, h("h2", {}, "Hyperparameters"),
    h("p", { class: "muted" }, "Rows that differ are highlighted."),
    table([{ label: "setting", value: (k) => k }, ...picked.map((r, i) => ({ label: r.id, value: (k) => fmt.num(flat[i][k]) }))], keys,
      (k) => ({ class: differs(k) ? "differs" : null, "data-key": k }))));
  const evalKeys = [...new Set(picked.flatMap((r) => Object.keys((r.eval && r.eval.comparison) || {})))];
  const value = (r, k) => { const c = r.eval && r.eval.comparison && r.eval.comparison[k]; return c ? `${fmt.num(c.tuned)} (Δ ${fmt.num(c.delta, 3)}, ${c.verdict})` : "–"; };
  view.append(h("section", { id: "compare-eval" }, h("h2", {}, "Evaluation (tuned, change vs base)"), evalKeys.length
    ? table([{ label: "metric", value: (k) => k }, ...picked.map((r) => ({ label: r.id, value: (k) => value(r, k) }))], evalKeys)
    : h("p", { class: "muted" }, "None of these runs has an evaluation yet.")));
}
