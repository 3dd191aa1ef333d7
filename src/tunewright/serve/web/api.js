// The public HTTP API, with the tab's API key as the bearer token (sessionStorage: kept for this tab only).
const KEY = "tunewright.apiKey";

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.error ? body.error : {};
    super(detail.message || `HTTP ${status}`);
    this.status = status; this.code = detail.code || null; this.param = detail.param || null;
  }
}

export const apiKey = { get: () => sessionStorage.getItem(KEY) || "", set: (v) => sessionStorage.setItem(KEY, v),
                        clear: () => sessionStorage.removeItem(KEY) };

let onUnauthorized = () => {};
export function whenUnauthorized(handler) { onUnauthorized = handler; }

function headers(extra = {}) {
  const key = apiKey.get();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

export async function request(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const response = await fetch(path, init);
  if (!response.ok) {
    const parsed = await response.json().catch(() => null);
    const error = new ApiError(response.status, parsed);
    if (response.status === 401) onUnauthorized(error);
    throw error;
  }
  return response;
}

export const get = async (path) => (await request("GET", path)).json();
export const post = async (path, body) => (await request("POST", path, body)).json();
export const text = async (path) => (await request("GET", path)).text();
export const blob = async (path) => (await request("GET", path)).blob();

// Server-sent events of a streamed chat completion: calls onDelta(text) per chunk; resolves when [DONE] arrives.
export async function streamChat(body, onDelta, signal) {
  const response = await fetch("/v1/chat/completions", { method: "POST", signal,
    headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify({ ...body, stream: true }) });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim(); buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) onDelta(delta.content);
    }
  }
}

// Save a response as a file the browser downloads (the key must travel, so a plain link will not do).
export async function download(path, filename) {
  const data = await blob(path);
  const url = URL.createObjectURL(data);
  const a = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
