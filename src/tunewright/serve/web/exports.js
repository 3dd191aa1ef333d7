// Export buttons (merged HF folder; GGUF + Modelfile) and downloads of the result, through /v1/runs/{id}/exports.
import { download, get, post } from "./api.js";
import { errorBox, h, table, fmt } from "./dom.js";

export function exportSection(run) {
  const section = h("section", { id: "exports", "aria-labelledby": "exports-title" }, h("h2", { id: "exports-title" }, "Export and download"));
  if (run.status !== "succeeded") { section.append(h("p", { class: "muted" }, "Exports are available once the run has succeeded.")); return section; }
  const list = h("div"), note = h("p", { class: "muted", role: "status" });
  const base = `/v1/runs/${encodeURIComponent(run.id)}/exports`;
  const refresh = async () => {
    const items = (await get(base)).data;
    list.replaceChildren(items.length ? table([{ label: "export", value: (e) => e.format },
      { label: "status", value: (e) => e.status }, { label: "size", num: true, value: (e) => (e.bytes ? fmt.bytes(e.bytes) : "–") },
      { label: "", value: (e) => (e.status === "succeeded" ? h("button", { type: "button", class: "secondary",
        "aria-label": `Download ${e.format} export`, onclick: () => download(`${base}/${e.id}/content`, e.filename) }, "Download") : e.error || "") }], items)
      : h("p", { class: "muted" }, "Nothing exported yet."));
    return items;
  };
  const start = (format) => async (event) => {
    event.target.disabled = true;
    try {
      await post(base, { format });
      note.textContent = `Exporting ${format}…`;
      const timer = setInterval(async () => {
        const items = await refresh();
        if (!items.some((e) => e.status === "running")) { clearInterval(timer); note.textContent = ""; event.target.disabled = false; }
      }, 1500);
    } catch (error) { section.append(errorBox(error)); event.target.disabled = false; }
  };
  section.append(h("div", { class: "actions" },
    h("button", { type: "button", onclick: start("hf") }, "Export merged Hugging Face folder"),
    h("button", { type: "button", onclick: start("gguf") }, "Export GGUF + Modelfile"),
    h("button", { type: "button", class: "secondary", onclick: () => download(`/v1/runs/${encodeURIComponent(run.id)}/archive`, `${run.id}.zip`) },
      "Download run (zip)")), note, list);
  refresh().catch((error) => list.replaceChildren(errorBox(error)));
  return section;
}
