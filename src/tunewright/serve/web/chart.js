// A small SVG line chart: loss (or any y) against step for one or more series, redrawn as points arrive.
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#2f5bd3", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#495057"];
const W = 640, H = 280, PAD = { l: 52, r: 12, t: 10, b: 34 };

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function ticks(lo, hi, count = 5) {
  if (hi === lo) return [lo];
  const raw = (hi - lo) / count, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

// series: [{name, points: [[x, y], ...], color, dashed}]
export function lineChart(title, series, xLabel = "step") {
  const root = h("figure", { class: "chart", "data-points": series.reduce((n, s) => n + s.points.length, 0) });
  const all = series.flatMap((s) => s.points).filter(([x, y]) => isFinite(x) && isFinite(y));
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${all.length} points` });
  root.append(plot);
  if (!all.length) {
    plot.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#5d6677" }, "no points yet"));
    return root;
  }
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => PAD.l + ((x - x0) / (x1 - x0)) * (W - PAD.l - PAD.r);
  const sy = (y) => H - PAD.b - ((y - y0) / (y1 - y0)) * (H - PAD.t - PAD.b);
  for (const t of ticks(y0, y1)) {
    plot.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: sy(t), y2: sy(t), stroke: "#e6e8ec" }));
    plot.append(svg("text", { x: PAD.l - 6, y: sy(t) + 4, "text-anchor": "end", "font-size": 11, fill: "#5d6677" }, String(t)));
  }
  for (const t of ticks(x0, x1).filter((v) => Number.isInteger(v) || x1 - x0 < 5)) {
    plot.append(svg("text", { x: sx(t), y: H - PAD.b + 16, "text-anchor": "middle", "font-size": 11, fill: "#5d6677" }, String(t)));
  }
  plot.append(svg("text", { x: (PAD.l + W - PAD.r) / 2, y: H - 4, "text-anchor": "middle", "font-size": 12, fill: "#5d6677" }, xLabel));
  plot.append(svg("line", { x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: H - PAD.b, stroke: "#9aa1ad" }));
  plot.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: H - PAD.b, y2: H - PAD.b, stroke: "#9aa1ad" }));
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const pts = s.points.filter(([x, y]) => isFinite(x) && isFinite(y));
    if (!pts.length) return;
    const line = svg("polyline", { points: pts.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" "), fill: "none", stroke: color,
      "stroke-width": 2, "data-series": s.name });
    if (s.dashed) line.setAttribute("stroke-dasharray", "6 4");
    plot.append(line);
    if (pts.length < 40) for (const [x, y] of pts) plot.append(svg("circle", { cx: sx(x), cy: sy(y), r: 2.5, fill: color }));
  });
  root.append(h("figcaption", { class: "legend" }, series.map((s, i) =>
    h("span", { style: `--c: ${s.color || COLORS[i % COLORS.length]}` }, `${s.name}${s.dashed ? " (dashed)" : ""}`))));
  return root;
}

// A histogram as bars, with an optional marked x (the max_seq_len cut).
export function histogram(title, bins, cut) {
  const root = h("figure", { class: "chart" });
  const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  root.append(plot);
  const top = Math.max(1, ...bins.map((b) => b.count));
  const lo = bins.length ? bins[0].lo : 0, hi = Math.max(bins.length ? bins[bins.length - 1].hi : 1, cut || 0) * 1.02;
  const sx = (x) => PAD.l + ((x - lo) / (hi - lo || 1)) * (W - PAD.l - PAD.r);
  const sy = (y) => H - PAD.b - (y / top) * (H - PAD.t - PAD.b);
  for (const b of bins) {
    plot.append(svg("rect", { x: sx(b.lo), y: sy(b.count), width: Math.max(1, sx(b.hi) - sx(b.lo) - 1), height: H - PAD.b - sy(b.count), fill: "#2f5bd3" }));
  }
  for (const t of ticks(0, top, 4)) plot.append(svg("text", { x: PAD.l - 6, y: sy(t) + 4, "text-anchor": "end", "font-size": 11, fill: "#5d6677" }, String(t)));
  for (const t of ticks(lo, hi, 6)) plot.append(svg("text", { x: sx(t), y: H - PAD.b + 16, "text-anchor": "middle", "font-size": 11, fill: "#5d6677" }, String(t)));
  plot.append(svg("text", { x: (PAD.l + W - PAD.r) / 2, y: H - 4, "text-anchor": "middle", "font-size": 12, fill: "#5d6677" }, "tokens per example"));
  if (cut) {
    plot.append(svg("line", { x1: sx(cut), x2: sx(cut), y1: PAD.t, y2: H - PAD.b, stroke: "#b42318", "stroke-dasharray": "5 3" }));
    plot.append(svg("text", { x: sx(cut) - 4, y: PAD.t + 12, "text-anchor": "end", "font-size": 11, fill: "#b42318" }, `max_seq_len ${cut}`));
  }
  return root;
}
