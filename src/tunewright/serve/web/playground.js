// Playground: one prompt, two models, both answers streaming at once (base vs tuned, or any two served models).
import { get, streamChat } from "./api.js";
import { errorBox, h } from "./dom.js";

export async function playgroundPage({ view, query, onLeave }) {
  const models = (await get("/v1/models")).data.map((m) => m);
  const base = models.find((m) => !m.parent || m.parent === m.root) || models[0];
  const tuned = models.find((m) => m.id.startsWith("ft:")) || models[models.length - 1];
  const pick = (id, label, chosen) => h("div", {}, h("label", { for: id }, label),
    h("select", { id }, models.map((m) => h("option", { value: m.id, selected: m.id === chosen }, m.id))));
  const left = pick("left-model", "Left model", query.get("left") || (base && base.id));
  const right = pick("right-model", "Right model", query.get("right") || (tuned && tuned.id));
  const prompt = h("textarea", { id: "prompt", rows: 3 }, "");
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, max: 4096, value: 64 });
  const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, value: 0 });
  const answers = [h("div", { class: "answer", id: "left-answer", "aria-live": "polite" }), h("div", { class: "answer", id: "right-answer", "aria-live": "polite" })];
  const titles = [h("h2", {}, "Left"), h("h2", {}, "Right")];
  let controller = null;
  onLeave(() => controller && controller.abort());
  const send = async (event) => {
    event.preventDefault();
    if (controller) controller.abort();
    controller = new AbortController();
    const messages = [{ role: "user", content: prompt.value }];
    const options = { max_tokens: Number(maxTokens.value), temperature: Number(temperature.value), messages };
    const chosen = [left.querySelector("select").value, right.querySelector("select").value];
    await Promise.all(chosen.map(async (model, i) => {
      titles[i].textContent = model;
      answers[i].replaceChildren();
      answers[i].dataset.done = "";
      try { await streamChat({ ...options, model }, (delta) => answers[i].append(delta), controller.signal); answers[i].dataset.done = "true"; }
      catch (error) { if (error.name !== "AbortError") answers[i].replaceChildren(errorBox(error)); }
    }));
  };
  view.append(h("h1", {}, "Playground"), h("form", { id: "chat-form", onsubmit: send }, h("section", {},
    h("div", { class: "row" }, left, right), h("label", { for: "prompt" }, "Prompt"), prompt,
    h("div", { class: "row" }, h("div", {}, h("label", { for: "max-tokens" }, "Max tokens"), maxTokens),
      h("div", {}, h("label", { for: "temperature" }, "Temperature"), temperature), h("button", { type: "submit", id: "send" }, "Send to both")))),
  h("div", { class: "grid" }, h("section", {}, titles[0], answers[0]), h("section", {}, titles[1], answers[1])));
}
