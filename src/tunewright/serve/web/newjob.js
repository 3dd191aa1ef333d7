// New job: model, method, files, hyperparameters (auto shown, resolved values and an estimate once checked), submit.
import { get, post } from "./api.js";
import { errorBox, fmt, h, stats, table } from "./dom.js";

const EMBEDDED = "smollm2-135m-instruct";

function field(id, label, control, hint) {
  control.id = id;
  return h("div", {}, h("label", { for: id }, label), control, hint ? h("small", { class: "muted" }, hint) : null);
}
const select = (options, value) => h("select", {}, options.map(([v, t]) => h("option", { value: v, selected: v === value }, t)));
const numberOrAuto = (value) => (value.trim() === "" || value.trim() === "auto" ? "auto" : Number(value));

export async function newJobPage({ view, query }) {
  const [models, files] = await Promise.all([get("/v1/models"), get("/v1/files?purpose=fine-tune")]);
  const ids = [...new Set([...models.data.map((m) => m.id), EMBEDDED])];
  const fileOptions = files.data.map((f) => [f.id, `${f.filename} (${f.id})`]);
  const f = {
    model: select(ids.map((m) => [m, m]), ids[0]), type: select([["supervised", "supervised (instruction data)"], ["dpo", "dpo (preference pairs)"]], "supervised"),
    method: select([["lora", "LoRA"], ["dora", "DoRA"], ["qlora", "QLoRA (GPU)"], ["full", "full fine-tune"], ["freeze", "freeze (last blocks)"]], "lora"),
    training: select(fileOptions, query.get("training_file") || (fileOptions[0] || [])[0]),
    validation: select([["", "none"], ...fileOptions], ""),
    epochs: h("input", { value: "auto", inputmode: "numeric" }), batch: h("input", { value: "auto", inputmode: "numeric" }),
    lr: h("input", { value: "auto", inputmode: "decimal" }), steps: h("input", { type: "number", min: 1, placeholder: "none (use epochs)" }),
    seqLen: h("input", { type: "number", min: 16, max: 32768, placeholder: "1024" }), suffix: h("input", { placeholder: "my-model", maxlength: 40 }),
    evaluate: h("input", { type: "checkbox" }),
  };
  const preview = h("section", { id: "preview", "aria-live": "polite" }, h("h2", {}, "Resolved values and estimate"),
    h("p", { class: "muted" }, "Check the job to see what every auto becomes, the steps, memory and time."));
  const message = h("div", { role: "alert" });
  const body = () => {
    const settings = {};
    if (f.steps.value) settings["train.max_steps"] = Number(f.steps.value);
    if (f.seqLen.value) settings["data.max_seq_len"] = Number(f.seqLen.value);
    if (f.evaluate.checked) settings["eval.after_train"] = true;
    const hp = { n_epochs: numberOrAuto(f.epochs.value), batch_size: numberOrAuto(f.batch.value), learning_rate_multiplier: numberOrAuto(f.lr.value) };
    return { model: f.model.value, training_file: f.training.value, validation_file: f.validation.value || null,
      suffix: f.suffix.value || null, method: { type: f.type.value, [f.type.value]: { hyperparameters: hp } },
      tunewright: { method: f.method.value, settings } };
  };
  const check = async () => {
    message.replaceChildren();
    try { preview.replaceChildren(h("h2", {}, "Resolved values and estimate"), previewView(await post("/v1/fine_tuning/jobs/validate", body()))); }
    catch (error) { message.replaceChildren(errorBox(error)); }
  };
  const submit = async (event) => {
    event.preventDefault();
    message.replaceChildren();
    try { location.hash = `#/jobs/${(await post("/v1/fine_tuning/jobs", body())).id}`; }
    catch (error) { message.replaceChildren(errorBox(error)); }
  };
  view.append(h("h1", {}, "New fine-tuning job"),
    ...(fileOptions.length ? [] : [h("p", { class: "warn" }, "No training file yet: ", h("a", { href: "#/data" }, "upload one first"), ".")]),
    h("form", { id: "new-job", onsubmit: submit },
      h("section", {}, h("h2", {}, "Model and data"), h("div", { class: "row" },
        field("job-model", "Base model", f.model), field("job-type", "Method type", f.type), field("job-method", "Training method", f.method)),
      h("div", { class: "row" }, field("job-training", "Training file", f.training), field("job-validation", "Validation file", f.validation))),
      h("section", {}, h("h2", {}, "Hyperparameters"), h("div", { class: "row" },
        field("job-epochs", "Epochs", f.epochs, "auto or 1-50"), field("job-batch", "Batch size", f.batch, "auto or 1-1024"),
        field("job-lr", "Learning rate multiplier", f.lr, "auto or a factor")),
      h("div", { class: "row" }, field("job-steps", "Max steps", f.steps), field("job-seq-len", "max_seq_len", f.seqLen),
        field("job-suffix", "Model name suffix", f.suffix)),
      h("label", { class: "inline", for: "job-evaluate" }, (f.evaluate.id = "job-evaluate", f.evaluate),
        "Evaluate base vs tuned after training (on the validation file)")),
      message, h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", id: "job-check", onclick: check }, "Check and estimate"),
        h("button", { type: "submit", id: "job-create" }, "Create job"))),
    preview);
}

function previewView(p) {
  const e = p.estimate, t = p.resolved.train;
  const rows = [...Object.entries(t), ...Object.entries(p.resolved.lora || {}).filter(([k]) => ["r", "alpha", "dropout", "target_modules"].includes(k)).map(([k, v]) => [`lora.${k}`, v]),
    ["data.max_seq_len", p.resolved.data.max_seq_len], ...(p.resolved.preference ? [["preference.beta", p.resolved.preference.beta]] : [])];
  return h("div", {}, stats([["training examples", fmt.num(p.training_examples)], ["steps", fmt.num(e.steps), "preview-steps"],
    ["parameters", fmt.num(e.parameters)], ["trainable", fmt.num(e.trainable_parameters)], ["memory (estimate)", fmt.bytes(e.memory_bytes), "preview-memory"],
    ["time (estimate)", e.seconds ? fmt.duration(e.seconds) : "no finished job on this model yet", "preview-time"], ["device", p.device]]),
  table([{ label: "setting", value: (r) => r[0] }, { label: "value", value: (r) => (Array.isArray(r[1]) ? r[1].join(", ") : fmt.num(r[1])) }], rows));
}
