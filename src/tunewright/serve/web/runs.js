// Runs: folders from `serve --runs DIR` (trained from the command line) and the jobs' run folders, read-only.
import { get } from "./api.js";
import { LiveCurve, reportSection } from "./curves.js";
import { exportSection } from "./exports.js";
import { fmt, h, stats, status, table } from "./dom.js";

export async function runsPage({ view }) {
  const runs = (await get("/v1/runs")).data;
  view.append(h("h1", {}, "Runs"), h("p", { class: "muted" },
    "Run folders given with tunewright serve --runs DIR, and the runs of fine-tuning jobs."),
  h("section", { id: "runs" }, runs.length ? table([
    { label: "run", value: (r) => h("a", { href: r.source === "job" ? `#/jobs/${r.id}` : `#/runs/${encodeURIComponent(r.id)}` }, r.id) },
    { label: "source", value: (r) => (r.source === "job" ? "job" : "CLI") }, { label: "status", value: (r) => status(r.status) },
    { label: "model", value: (r) => r.model || "–" }, { label: "method", value: (r) => r.method || "–" },
    { label: "steps", num: true, value: (r) => fmt.num(r.steps) }, { label: "last loss", num: true, value: (r) => fmt.num(r.last_loss) },
    { label: "report", value: (r) => (r.has_report ? h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, "report") : "–") },
  ], runs) : h("p", { class: "muted" }, "No runs. Start the server with --runs runs/ to list run folders.")),
  h("a", { class: "button", href: "#/compare" }, "Compare runs"));
}

export async function runPage({ view }, id) {
  const run = await get(`/v1/runs/${encodeURIComponent(id)}`);
  const curve = new LiveCurve(id);
  await curve.poll();
  view.append(h("h1", {}, `Run ${run.id} `, status(run.status)),
    h("section", { "aria-labelledby": "curve-title" }, h("h2", { id: "curve-title" }, "Loss"),
      stats([["model", run.model || "–"], ["method", run.method || "–"], ["steps", fmt.num(run.steps)],
        ["last loss", fmt.num(run.last_loss)], ["tokens/s", fmt.num(run.tokens_per_s, 3)], ["created", fmt.time(run.created_at)]]),
      curve.node),
    h("div", { class: "actions" }, h("a", { class: "button secondary", href: `#/compare?ids=${encodeURIComponent(id)}` }, "Compare with…")),
    await reportSection(run), exportSection(run));
}
