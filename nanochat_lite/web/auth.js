// The API key, for a server started with one (nanochat_lite/server/security.py).
//
// The page does not know in advance: the first answer 401 opens a small form, the key
// is kept in this browser (localStorage) and sent as `Authorization: Bearer <key>` on
// every fetch. Browsers cannot put headers on a WebSocket, so the socket offers the key
// as the subprotocol `bearer.<key>` beside `nanochat-lite` (the one the server echoes
// back); a ?api_key= query would end up in access logs. A key the server refuses is
// forgotten and asked for again. Several 401s at once share one prompt.

const KEY_STORE = "nanochat-lite.api-key";
const WS_PROTOCOL = "nanochat-lite";
const WS_KEY_PREFIX = "bearer.";
// What the server accepts as a key (an HTTP token, so it can be a subprotocol).
const KEY_RE = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/;

let dialog = null; // the <dialog> installed by installKeyForm
let pending = null; // Promise of the prompt on screen
let resolvePending = null;
let memoryKey = ""; // the key when localStorage is unavailable
const listeners = new Set();

export function apiKey() {
  try {
    return localStorage.getItem(KEY_STORE) || "";
  } catch {
    return ""; // storage disabled
  }
}

function storeKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORE, key);
    else localStorage.removeItem(KEY_STORE);
  } catch {
    // Private mode or a full quota: the key lasts until the page is closed.
  }
  memoryKey = key;
  if (key) for (const fn of listeners) fn(key);
}

const currentKey = () => apiKey() || memoryKey;

/** Call fn(key) whenever a new key is entered. */
export function onKeyChange(fn) {
  listeners.add(fn);
}

/** `headers` plus Authorization when a key is known. */
export function authHeaders(headers = {}) {
  const key = currentKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

/** The subprotocols a new WebSocket offers: none without a key. */
export function wsProtocols() {
  const key = currentKey();
  return key ? [WS_PROTOCOL, WS_KEY_PREFIX + key] : [];
}

/** fetch() with the key; a 401 asks for a key (again) and retries. */
export async function authFetch(url, init = {}) {
  for (;;) {
    const sent = currentKey();
    const res = await fetch(url, { ...init, headers: authHeaders(init.headers || {}) });
    if (res.status !== 401 || !dialog) return res;
    await askForKey(sent);
  }
}

/** Resolves once a key other than `refused` is known (asking the person if needed). */
export function askForKey(refused) {
  if (currentKey() && currentKey() !== refused) return Promise.resolve(); // someone else asked already
  if (refused) storeKey("");
  if (!pending) {
    pending = new Promise((resolve) => {
      resolvePending = resolve;
      show(Boolean(refused));
    }).finally(() => {
      pending = null;
    });
  }
  return pending;
}

function show(wasRefused) {
  const input = dialog.querySelector("#key-input");
  const error = dialog.querySelector("#key-error");
  error.textContent = wasRefused ? "That key was not accepted. Enter it again." : "";
  input.value = "";
  input.removeAttribute("aria-invalid");
  if (!dialog.open) dialog.showModal();
  input.focus();
}

/** Wire the key form (a <dialog> holding a <form>) of index.html. */
export function installKeyForm(element) {
  dialog = element;
  const input = dialog.querySelector("#key-input");
  const error = dialog.querySelector("#key-error");
  dialog.addEventListener("cancel", (ev) => ev.preventDefault()); // Esc: the page needs a key
  dialog.querySelector("form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = input.value.trim().replace(/^Bearer\s+/i, "");
    if (!KEY_RE.test(key)) {
      input.setAttribute("aria-invalid", "true");
      error.textContent = "A key is letters, digits and !#$%&'*+.^_`|~- without spaces.";
      return;
    }
    storeKey(key);
    dialog.close();
    const resolve = resolvePending;
    resolvePending = null;
    if (resolve) resolve();
  });
}

/** Downloads of /api/... links (exports) need the key too: fetch them, then save the blob. */
export function authorizeDownloads(root) {
  root.addEventListener("click", async (ev) => {
    const a = ev.target instanceof Element ? ev.target.closest("a[download]") : null;
    if (!a || ev.button !== 0 || !(a.protocol === "http:" || a.protocol === "https:")) return;
    if (a.origin !== location.origin || !a.pathname.startsWith("/api/")) return;
    ev.preventDefault();
    let res;
    try {
      res = await authFetch(a.href);
    } catch {
      return; // the server cannot be reached; the connection indicator says so
    }
    if (!res.ok) return;
    const disposition = res.headers.get("Content-Disposition") || "";
    const m = /filename="([^"]+)"/.exec(disposition);
    const url = URL.createObjectURL(await res.blob());
    const save = document.createElement("a");
    save.href = url;
    save.download = m ? m[1] : a.getAttribute("download") || "download";
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  });
}
