// Data: drop a file, see the data-check report (bad rows as file:line: field: reason), then upload it for fine-tuning.
import { get, post, request } from "./api.js";
import { histogram } from "./chart.js";
import { errorBox, fmt, h, stats, table } from "./dom.js";

export async function dataPage({ view }) {
  const models = (await get("/v1/models")).data;
  const input = h("input", { id: "data-file", type: "file", accept: ".jsonl,.json,.csv,.parquet" });
  const model = h("select", { id: "check-model" }, models.map((m) => h("option", { value: m.id }, m.id)));
  const seqLen = h("input", { id: "check-max-seq-len", type: "number", min: 16, max: 32768, value: 1024 });
  const drop = h("div", { class: "drop", id: "drop" }, h("p", {}, "Drop a JSONL, JSON, CSV or Parquet file here, or choose one:"),
    h("label", { for: "data-file" }, "Data file"), input);
  const out = h("div", { id: "check-report", "aria-live": "polite" }), files = h("section", { id: "files" });
  view.append(h("h1", {}, "Data"), h("section", {}, drop, h("div", { class: "row" },
    h("div", {}, h("label", { for: "check-model" }, "Tokenizer (model)"), model),
    h("div", {}, h("label", { for: "check-max-seq-len" }, "max_seq_len"), seqLen))), out,
  h("h2", {}, "Uploaded files"), files);
  const check = async (file) => {
    out.replaceChildren(h("p", { class: "muted" }, `Checking ${file.name}…`));
    const form = new FormData();
    form.append("file", file); form.append("model", model.value); form.append("max_seq_len", seqLen.value);
    try {
      const report = await (await request("POST", "/v1/files/check", form)).json();
      out.replaceChildren(reportView(report, file, () => listFiles(files)));
    } catch (error) { out.replaceChildren(errorBox(error)); }
  };
  input.addEventListener("change", () => input.files[0] && check(input.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) check(e.dataTransfer.files[0]); });
  await listFiles(files);
}

async function listFiles(holder) {
  const data = (await get("/v1/files?purpose=fine-tune")).data;
  holder.replaceChildren(data.length ? table([{ label: "file", value: (f) => f.id }, { label: "name", value: (f) => f.filename },
    { label: "size", num: true, value: (f) => fmt.bytes(f.bytes) }, { label: "uploaded", value: (f) => fmt.time(f.created_at) },
    { label: "", value: (f) => h("a", { href: `#/new?training_file=${f.id}` }, "train on it") }], data)
    : h("p", { class: "muted" }, "No files uploaded yet."));
}

function reportView(report, file, uploaded) {
  const section = h("section", { id: "data-report" }, h("h2", {}, `Data report: ${file.name}`));
  const bad = report.bad_rows || [];
  section.append(stats([["rows", fmt.num(report.rows), "report-rows"], ["bad rows", fmt.num(report.bad_row_count), "report-bad"],
    ["kind", report.kind], ["trained tokens", fmt.num(report.trained_tokens)], ["truncated", fmt.num(report.truncated)],
    ["dropped", fmt.num(report.dropped)]]));
  section.append(h("h3", {}, "Rows per file and format"), table([{ label: "file", value: (f) => f.path }, { label: "split", value: (f) => f.split },
    { label: "format", value: (f) => f.format }, { label: "rows", num: true, value: (f) => fmt.num(f.rows) }], report.files || []));
  if (bad.length) {
    section.append(h("h3", { class: "error" }, `${report.bad_row_count} bad row(s): fix them before training`),
      h("ul", { id: "bad-rows" }, bad.map((b) => h("li", {}, h("code", {}, `${b.source}: ${b.field}: ${b.reason}`), h("br"),
        h("span", { class: "muted" }, `fix: ${b.fix}`)))));
  }
  if (report.length_histogram) section.append(h("h3", {}, "Token lengths"), histogram("token length histogram", report.length_histogram, report.max_seq_len));
  if (report.token_lengths) section.append(stats(Object.entries(report.token_lengths).map(([k, v]) => [k, fmt.num(v)])));
  if (report.duplicates) section.append(h("h3", {}, "Duplicates"), stats(Object.entries(report.duplicates).map(([k, v]) => [k.replaceAll("_", " "), fmt.num(v)])));
  const guidance = report.guidance || {};
  section.append(h("h3", {}, "Guidance"), h("p", { id: "size-guidance" }, guidance.size || ""),
    h("ul", {}, (guidance.warnings || []).map((w) => h("li", { class: "warn" }, w))));
  if (!bad.length) {
    const status = h("p", { role: "status", id: "upload-status" });
    section.append(h("div", { class: "actions" }, h("button", { type: "button", id: "upload", onclick: async (e) => {
      e.target.disabled = true;
      const form = new FormData();
      form.append("file", file); form.append("purpose", "fine-tune");
      try {
        const made = await post("/v1/files", form);
        status.replaceChildren(`Uploaded as ${made.id}. `, h("a", { href: `#/new?training_file=${made.id}`, id: "train-link" }, "Create a job with it"));
        uploaded();
      } catch (error) { status.replaceChildren(errorBox(error)); e.target.disabled = false; }
    } }, "Upload for fine-tuning")), status);
  }
  return section;
}
