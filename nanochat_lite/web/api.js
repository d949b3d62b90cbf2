// The REST calls the page makes. Each returns the `data` of a `{success, data}` body
// or throws an ApiError carrying the server's error code and message.
// Fetches carry the API key (auth.js), which is asked for when the server answers 401.

import { authFetch } from "./auth.js";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function call(method, path, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await authFetch(path, init);
  } catch {
    throw new ApiError(0, "network", "the server cannot be reached");
  }
  let json = null;
  try {
    json = await res.json();
  } catch {
    // Not JSON (a proxy error page, say): reported below by status.
  }
  if (!res.ok || (json && json.success === false)) {
    const err = (json && json.error) || {};
    throw new ApiError(res.status, err.code || "http_" + res.status, err.message || `HTTP ${res.status}`);
  }
  return json && "data" in json ? json.data : json;
}

const enc = encodeURIComponent;
// `owner`: whose conversations an admin key reads (a key's name, or "*" for everyone's);
// left out, every key reads its own.
const ownerQ = (owner, sep = "&") => (owner ? `${sep}owner=${enc(owner)}` : "");

export const api = {
  health: () => call("GET", "/api/health"),
  stats: () => call("GET", "/api/stats"),
  limits: () => call("GET", "/api/limits"),
  models: () => call("GET", "/api/models"),
  conversations: (limit, offset, owner) =>
    call("GET", `/api/conversations?limit=${limit}&offset=${offset}${ownerQ(owner)}`),
  conversation: (id, owner) => call("GET", `/api/conversations/${enc(id)}${ownerQ(owner, "?")}`),
  rename: (id, title) => call("PATCH", `/api/conversations/${enc(id)}`, { title }),
  remove: (id) => call("DELETE", `/api/conversations/${enc(id)}`),
  search: (q, owner) => call("GET", `/api/search?q=${enc(q)}${ownerQ(owner)}`),
  tokenize: (text, special) => call("POST", "/api/tokenize", { text, with_pieces: true, special }),
  documents: (collection) => call("GET", `/api/documents${collection ? `?collection=${enc(collection)}` : ""}`),
  removeDocument: (id) => call("DELETE", `/api/documents/${enc(id)}`),
  exportUrl: (id, format, owner) => `/api/conversations/${enc(id)}/export?format=${format}${ownerQ(owner)}`,
};
