// The dashboard shell: API key, hash routes (#/jobs, #/jobs/ID, #/runs, #/runs/ID, #/data, #/new, #/compare, #/playground).
import { apiKey, get, whenUnauthorized } from "./api.js";
import { errorBox, h } from "./dom.js";
import { jobPage, jobsPage } from "./jobs.js";
import { runPage, runsPage } from "./runs.js";
import { dataPage } from "./data.js";
import { newJobPage } from "./newjob.js";
import { comparePage } from "./compare.js";
import { playgroundPage } from "./playground.js";

const ROUTES = [
  [/^#\/jobs\/([^/?]+)$/, jobPage], [/^#\/jobs$/, jobsPage], [/^#\/runs\/([^/?]+)$/, runPage], [/^#\/runs$/, runsPage],
  [/^#\/data$/, dataPage], [/^#\/new$/, newJobPage], [/^#\/compare$/, comparePage], [/^#\/playground$/, playgroundPage],
];
const view = document.getElementById("view");
let leave = null;

export function query() { return new URLSearchParams(location.hash.split("?")[1] || ""); }

async function route() {
  if (leave) { leave(); leave = null; }
  const [path] = (location.hash || "#/jobs").split("?");
  const found = ROUTES.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", path.startsWith(a.getAttribute("href")));
    if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  }
  view.replaceChildren();
  if (!found) { location.hash = "#/jobs"; return; }
  const [match, page] = found;
  const ctx = { view, query: query(), onLeave: (fn) => { leave = fn; } };
  try {
    await page(ctx, ...match.slice(1).map(decodeURIComponent));
  } catch (error) {
    if (error.status !== 401) view.append(errorBox(error));
  }
}

// Ask for the key: once per tab, and again (with the reason) when the server turns one down.
const dialog = document.getElementById("key-dialog");
function askForKey(message = "") {
  document.getElementById("key-error").textContent = message;
  document.getElementById("key-input").value = "";
  if (!dialog.open) dialog.showModal();
}
document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  apiKey.set(document.getElementById("key-input").value.trim());
  try {
    await get("/v1/models");
  } catch (error) {
    if (error.status === 401) return;  // whenUnauthorized already says why
    throw error;
  }
  dialog.close();
  route();
});
whenUnauthorized((error) => {
  const said = error.code === "invalid_api_key" ? "The server did not accept this API key" : "This server needs an API key";
  apiKey.clear();
  askForKey(`${said} (${error.message}). Enter the key the server was started with.`);
});

async function start() {
  const config = await (await fetch("/dashboard/config.json")).json();
  window.addEventListener("hashchange", route);
  if (config.api_key_required && !apiKey.get()) {
    view.replaceChildren(h("p", { class: "muted" }, "Waiting for the API key…"));
    askForKey();
    return;
  }
  route();
}
start();
