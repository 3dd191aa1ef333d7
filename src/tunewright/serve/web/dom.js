// Tiny DOM helpers: h() builds elements (text is always set as text, never parsed as HTML).
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const fmt = {
  time: (s) => (s ? new Date(s * 1000).toLocaleString() : "–"),
  duration: (s) => { if (s === null || s === undefined || !isFinite(s)) return "–"; s = Math.round(s);
    return s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m ${s % 60}s` : `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`; },
  num: (v, digits = 4) => (v === null || v === undefined ? "–" : typeof v !== "number" ? String(v)
    : Number.isInteger(v) || Math.abs(v) >= 10 ** digits ? Math.round(v).toLocaleString()
    : Math.abs(v) >= 1e-3 ? String(+v.toPrecision(digits)) : v.toPrecision(digits)),
  bytes: (b) => (b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GB` : b >= 2 ** 20 ? `${(b / 2 ** 20).toFixed(1)} MB` : `${(b / 1024).toFixed(1)} kB`),
};

export function status(s) { return h("span", { class: `status ${s}` }, s); }

export function table(columns, rows, rowAttrs = () => ({})) {
  return h("div", { class: "table-wrap" }, h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : null, scope: "col" }, c.label)))),
    h("tbody", {}, rows.map((r) => h("tr", rowAttrs(r), columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(r))))))));
}

export function stats(pairs) {
  return h("dl", { class: "stats" }, pairs.map(([k, v, id]) => h("div", {}, h("dt", {}, k), h("dd", { id }, v))));
}

export function errorBox(error) { return h("p", { class: "error", role: "alert" }, error.message || String(error)); }
