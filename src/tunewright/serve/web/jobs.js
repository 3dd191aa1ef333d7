// Jobs list and job page: status, live loss curves, tokens/s, ETA, events, checkpoints, report, cancel.
import { get, post } from "./api.js";
import { LiveCurve, reportSection } from "./curves.js";
import { exportSection } from "./exports.js";
import { errorBox, fmt, h, stats, status, table } from "./dom.js";

const ACTIVE = ["validating_files", "queued", "running"];
const POLL_MS = 1500;
const now = () => Date.now() / 1000;
const duration = (job) => (job.finished_at || (ACTIVE.includes(job.status) ? now() : null)) - job.created_at;

export async function jobsPage({ view, onLeave }) {
  view.append(h("h1", {}, "Fine-tuning jobs"), h("div", { class: "actions" }, h("a", { class: "button", href: "#/new" }, "New job")));
  const holder = h("section", { id: "jobs" });
  view.append(holder);
  const draw = async () => {
    const jobs = (await get("/v1/fine_tuning/jobs?limit=100")).data;
    holder.replaceChildren(jobs.length ? table([
      { label: "job", value: (j) => h("a", { href: `#/jobs/${j.id}` }, j.id) },
      { label: "status", value: (j) => status(j.status) },
      { label: "model", value: (j) => j.fine_tuned_model || j.model },
      { label: "created", value: (j) => fmt.time(j.created_at) },
      { label: "duration", num: true, value: (j) => fmt.duration(duration(j)) },
      { label: "trained tokens", num: true, value: (j) => fmt.num(j.trained_tokens) },
      { label: "", value: (j) => (ACTIVE.includes(j.status) ? cancelButton(j, draw) : "") },
    ], jobs) : h("p", { class: "muted" }, "No jobs yet. Upload data, then create one."));
    return jobs;
  };
  const jobs = await draw();
  if (jobs.some((j) => ACTIVE.includes(j.status))) {
    const timer = setInterval(() => draw().catch(() => {}), POLL_MS * 2);
    onLeave(() => clearInterval(timer));
  }
}

function cancelButton(job, after) {
  return h("button", { type: "button", class: "danger", "aria-label": `Cancel ${job.id}`,
    onclick: async (e) => { e.target.disabled = true; await post(`/v1/fine_tuning/jobs/${job.id}/cancel`); after(); } }, "Cancel");
}

// ETA from the metrics events: seconds per step so far times the steps left.
function eta(events, job) {
  if (job.status !== "running") return null;
  const m = events.filter((e) => e.type === "metrics" && e.data && e.data.total_steps);
  if (m.length < 2) return null;
  const [last, first] = [m[0], m[m.length - 1]];
  const perStep = (last.created_at - first.created_at) / Math.max(1, last.data.step - first.data.step);
  return Math.max(0, (last.data.total_steps - last.data.step) * perStep);
}

export async function jobPage({ view, onLeave }, id) {
  const curve = new LiveCurve(id);
  const head = h("div"), facts = h("div"), actions = h("div", { class: "actions" });
  const events = h("ol", { class: "events", id: "events", reversed: true });
  const checkpoints = h("div", { id: "checkpoints" }), report = h("div"), exported = h("div");
  view.append(head, h("section", { "aria-labelledby": "curve-title" }, h("h2", { id: "curve-title" }, "Loss"), facts, curve.node),
    actions, h("div", { class: "grid" },
      h("section", { "aria-labelledby": "events-title" }, h("h2", { id: "events-title" }, "Events"), events),
      h("section", { "aria-labelledby": "ckpt-title" }, h("h2", { id: "ckpt-title" }, "Checkpoints"), checkpoints)),
    report, exported);
  let finished = false;
  const tick = async () => {
    const job = await get(`/v1/fine_tuning/jobs/${id}`);
    const [page, ckpts] = await Promise.all([get(`/v1/fine_tuning/jobs/${id}/events?limit=100`),
      get(`/v1/fine_tuning/jobs/${id}/checkpoints?limit=100`), curve.poll()]);
    head.replaceChildren(h("h1", {}, `Job ${job.id} `, status(job.status)));
    const last = curve.last;
    facts.replaceChildren(stats([["base model", job.model], ["fine-tuned model", job.fine_tuned_model || "–", "fine-tuned-model"],
      ["step", fmt.num(last.step), "job-step"], ["training loss", fmt.num(last.loss)], ["tokens/s", fmt.num(last.tokens_per_s, 3)],
      ["ETA", fmt.duration(eta(page.data, job))], ["duration", fmt.duration(duration(job))],
      ["trained tokens", fmt.num(job.trained_tokens)], ["status", job.status, "job-status"]]));
    if (job.error) facts.append(h("p", { class: "error" }, job.error.message || JSON.stringify(job.error)));
    events.replaceChildren(...page.data.map((e) => h("li", { class: e.level === "error" ? "error" : null },
      h("span", { class: "muted" }, new Date(e.created_at * 1000).toLocaleTimeString(), " "), e.message)));
    checkpoints.replaceChildren(ckpts.data.length ? table([{ label: "step", num: true, value: (c) => c.step_number },
      { label: "training loss", num: true, value: (c) => fmt.num(c.metrics.train_loss) },
      { label: "validation loss", num: true, value: (c) => fmt.num(c.metrics.valid_loss) },
      { label: "checkpoint", value: (c) => h("code", {}, c.fine_tuned_model_checkpoint) }], ckpts.data)
      : h("p", { class: "muted" }, "No complete checkpoint yet."));
    actions.replaceChildren(...[
      ACTIVE.includes(job.status) ? cancelButton(job, tick) : null,
      job.status === "succeeded" ? h("a", { class: "button", href: `#/playground?right=${encodeURIComponent(job.fine_tuned_model)}` }, "Try it in the playground") : null,
      h("a", { class: "button secondary", href: `#/compare?ids=${id}` }, "Compare with…")].filter(Boolean));
    if (!ACTIVE.includes(job.status) && !finished) {
      finished = true;
      const run = await get(`/v1/runs/${id}`);
      report.replaceChildren(await reportSection(run));
      exported.replaceChildren(exportSection(run));
    }
    return job;
  };
  const job = await tick();
  if (ACTIVE.includes(job.status)) {
    let timer = setInterval(async () => {
      try {
        if (!ACTIVE.includes((await tick()).status)) { clearInterval(timer); timer = null; }
      } catch (error) { facts.append(errorBox(error)); }
    }, POLL_MS);
    onLeave(() => timer && clearInterval(timer));
  }
}
