// Documents: uploads with their progress bars, the documents panel and its collection
// field (docswitch.js has the per-conversation "use my documents" switch).
//
// An upload goes in two steps, each with its own bar: the bytes (XMLHttpRequest, whose
// upload progress fetch() cannot report; it carries the API key like every fetch), then
// the indexing, followed on the WebSocket ({type: "watch_document", id}: progress
// {done, total} frames, then ready {chunks} or error {code, message}, each naming its
// document_id). A socket that drops while a document is indexing asks again once it is
// back. The server's message is shown as it is (textContent) when a file is refused.
//
// Every upload goes into the collection the panel's field names (empty: `default`). A
// name the server refuses is caught before any file's bytes go: the panel asks
// GET /api/documents?collection=NAME, which checks names exactly as the upload does, and
// shows the server's message; the files get a failed row each with the same message.
// The last name the panel took (empty for `default`) is kept in localStorage and is back
// in the field after a reload; storage that is off, full or corrupt only means it is not.

import { ApiError, api } from "./api.js";
import { apiKey, askForKey, authHeaders } from "./auth.js";
import { DEFAULT_COLLECTION } from "./docswitch.js";
import { el } from "./dom.js";

const COLLECTION_KEY = "nanochat-lite.collection";
const RETRY_WATCH_MS = 2000; // a watch refused for now (storage_unavailable, too_many_watches): again after this

/** POST /api/documents with `file`; onProgress(sent, total) as the bytes go out.
 * Resolves to the server's data ({id, name, collection, status, events_url}) or throws ApiError. */
export async function uploadDocument(file, onProgress, collection) {
  for (;;) {
    const sent = apiKey();
    const res = await new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/documents");
      for (const [name, value] of Object.entries(authHeaders({ Accept: "application/json" }))) {
        xhr.setRequestHeader(name, value);
      }
      xhr.upload.addEventListener("progress", (ev) => onProgress(ev.loaded, ev.lengthComputable ? ev.total : file.size));
      xhr.addEventListener("load", () => resolve({ status: xhr.status, text: xhr.responseText }));
      xhr.addEventListener("error", () => resolve({ status: 0, text: "" }));
      const form = new FormData();
      form.append("file", file, file.name);
      if (collection) form.append("collection", collection);
      xhr.send(form);
    });
    if (res.status === 401) {
      await askForKey(sent); // the key form, as authFetch does; then send the file again
      continue;
    }
    if (res.status === 0) throw new ApiError(0, "network", "the server cannot be reached");
    let json = null;
    try {
      json = JSON.parse(res.text);
    } catch {
      // Not JSON (a proxy's error page): reported by status below.
    }
    if (res.status >= 400 || !json || json.success === false) {
      const err = (json && json.error) || {};
      throw new ApiError(res.status, err.code || "http_" + res.status, err.message || `HTTP ${res.status}`);
    }
    return json.data;
  }
}

/** The uploads on screen: one row per file with its bar, until it is ready or failed. */
export class Uploads extends EventTarget {
  /** `list` is the <ul> the rows go in; `socket` the page's ReconnectingSocket; `panel`
   * the DocumentsPanel whose collection field says where the files go. */
  constructor(list, socket, panel) {
    super();
    this.list = list;
    this.socket = socket;
    this.panel = panel;
    this.watching = new Map(); // document id -> its row, while it is indexing
    socket.addEventListener("frame", (ev) => this._onFrame(ev.detail));
    socket.addEventListener("state", () => {
      if (socket.state === "open") for (const id of this.watching.keys()) this._watch(id);
    });
    list.addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-action=dismiss]");
      if (b) b.closest("li").remove();
    });
  }

  /** Upload each file into the panel's collection; resolves once all are sent (not indexed). */
  async add(files) {
    files = [...files]; // a FileList empties when its <input> is reset
    const target = await this.panel.checked();
    if (target.error !== undefined) {
      for (const f of files) {
        const row = uploadRow(f.name, this.panel.collection());
        this.list.append(row.li);
        row.fail(target.error);
      }
      return;
    }
    await Promise.all(files.map((f) => this._one(f, target.name)));
  }

  async _one(file, collection) {
    const row = uploadRow(file.name, collection);
    this.list.append(row.li);
    row.set("uploading", "uploading…", 0, file.size || 1);
    let data;
    try {
      data = await uploadDocument(file, (sent, total) =>
        row.set("uploading", `uploading ${percent(sent, total)}`, sent, total || 1),
      collection === DEFAULT_COLLECTION ? undefined : collection);
    } catch (err) {
      row.fail(err.message);
      return;
    }
    row.li.dataset.documentId = data.id;
    row.set("indexing", "indexing…", 0, 0);
    this.watching.set(data.id, row);
    this._watch(data.id);
    this.dispatchEvent(new CustomEvent("changed"));
  }

  _watch(id) {
    // Closed now: the "state" listener asks again once the socket is open.
    this.socket.send({ type: "watch_document", id });
  }

  _onFrame(frame) {
    const row = frame && typeof frame.document_id === "string" ? this.watching.get(frame.document_id) : null;
    if (!row) return;
    if (frame.type === "progress") {
      const total = Number(frame.total) || 0;
      row.set("indexing", total ? `indexing ${frame.done} / ${total} chunks` : "indexing…", Number(frame.done) || 0,
        total);
      return;
    }
    if (frame.type === "error" && (frame.code === "storage_unavailable" || frame.code === "too_many_watches")) {
      // Not now (the store restarting, or this socket already follows 16 documents): the
      // indexing goes on all the same; ask again.
      row.set("indexing", "indexing…", 0, 0);
      setTimeout(() => this.watching.has(frame.document_id) && this._watch(frame.document_id), RETRY_WATCH_MS);
      return;
    }
    this.watching.delete(frame.document_id);
    if (frame.type === "ready") row.ready(frame.chunks);
    else row.fail(frame.message || frame.code || "indexing failed");
    this.dispatchEvent(new CustomEvent("changed"));
  }
}

function percent(sent, total) {
  return total ? `${Math.min(100, Math.round((100 * sent) / total))} %` : "";
}

/** One upload's row: name, bar, status text; data-state uploading | indexing | ready | error.
 * A collection other than `default` shows after the name (CSS, from data-collection). */
function uploadRow(name, collection) {
  const li = el("li", "upload");
  const label = el("span", "upload-name", name);
  if (collection !== DEFAULT_COLLECTION) {
    label.dataset.collection = collection;
    label.title = `${name} → the collection "${collection}"`;
  }
  const bar = el("progress", "upload-bar");
  const status = el("span", "upload-status");
  const dismiss = el("button", "small-button", "✕");
  dismiss.type = "button";
  dismiss.dataset.action = "dismiss";
  dismiss.title = "Remove this line (the document stays)";
  dismiss.setAttribute("aria-label", `Remove the line for ${name}`);
  li.append(label, bar, status, dismiss);
  bar.setAttribute("aria-label", `Progress of ${name}`);
  return {
    li,
    set(state, text, value, max) {
      li.dataset.state = state;
      status.textContent = text;
      if (max > 0) {
        bar.max = max;
        bar.value = Math.min(value, max);
      } else bar.removeAttribute("value"); // indeterminate until the total is known
    },
    ready(chunks) {
      li.dataset.state = "ready";
      bar.max = 1;
      bar.value = 1;
      status.textContent = `ready · ${chunks} chunk${chunks === 1 ? "" : "s"}`;
    },
    fail(message) {
      li.dataset.state = "error";
      bar.hidden = true;
      status.textContent = message;
      status.setAttribute("role", "alert");
    },
  };
}

/** Files dropped anywhere on `zone` are handed to `onFiles`; `zone` gets .drop-target meanwhile. */
export function acceptDrops(zone, onFiles) {
  let depth = 0;
  const hasFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes("Files");
  zone.addEventListener("dragenter", (ev) => {
    if (!hasFiles(ev)) return;
    depth++;
    zone.classList.add("drop-target");
  });
  zone.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.classList.remove("drop-target");
  });
  zone.addEventListener("dragover", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault(); // allow the drop
    ev.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("drop", (ev) => {
    depth = 0;
    zone.classList.remove("drop-target");
    if (!ev.dataTransfer || !ev.dataTransfer.files.length) return;
    ev.preventDefault(); // the browser would open the file instead of the page
    onFiles(ev.dataTransfer.files);
  });
}

/** The field's last taken value, from storage: a string, "" when none or unreadable. */
function readCollection() {
  try {
    const name = JSON.parse(localStorage.getItem(COLLECTION_KEY) || '""');
    return typeof name === "string" ? name : "";
  } catch {
    return ""; // storage disabled or a corrupt value
  }
}

function writeCollection(name) {
  try {
    localStorage.setItem(COLLECTION_KEY, JSON.stringify(name));
  } catch {
    // Private mode or a full quota: the field is back to `default` at the next reload.
  }
}

/** The documents panel: the owner's documents, each with its delete button, and the
 * collection field (a text input whose <datalist> offers the collections listed).
 * Dispatches "collection" when the field's collection changes. */
export class DocumentsPanel extends EventTarget {
  constructor(root) {
    super();
    this.root = root;
    this.body = root.querySelector("#docs-list");
    this.status = root.querySelector("#docs-status");
    this.field = root.querySelector("#docs-collection");
    this.choices = root.querySelector("#docs-collections");
    this.fieldError = root.querySelector("#docs-collection-error");
    this._seq = 0;
    this.field.value = readCollection();
    this.field.addEventListener("input", () => {
      this._showRefusal("");
      this.dispatchEvent(new CustomEvent("collection"));
    });
    this.field.addEventListener("change", () => this.checked()); // say at once when the name will not do
    root.querySelector("#docs-refresh").addEventListener("click", () => this.refresh());
    this.body.addEventListener("click", (ev) => {
      const b = ev.target.closest("button[data-action=delete-doc]");
      if (b) this._delete(b.closest("tr"));
    });
  }

  /** The collection the field names, trimmed as the server trims it; empty is `default`. */
  collection() {
    return this.field.value.trim() || DEFAULT_COLLECTION;
  }

  /** The field's collection once the server takes its name: {name}, or {error} with the
   * server's message (shown under the field too). A check that cannot be made (no
   * server, documents off) lets the upload go: its own answer then says what is wrong.
   * A name taken is remembered for the next page load. */
  async checked() {
    const name = this.collection();
    if (name === DEFAULT_COLLECTION) {
      writeCollection("");
      return { name };
    }
    try {
      await api.documents(name);
    } catch (err) {
      if (err.status === 400) {
        if (this.collection() === name) this._showRefusal(err.message);
        return { error: err.message };
      }
    }
    if (this.collection() === name) {
      this._showRefusal("");
      writeCollection(name); // not a name typed over meanwhile
    }
    return { name };
  }

  _showRefusal(message) {
    this.fieldError.textContent = message;
    if (message) this.field.setAttribute("aria-invalid", "true");
    else this.field.removeAttribute("aria-invalid");
  }

  async refresh() {
    const seq = ++this._seq;
    let docs;
    try {
      docs = (await api.documents()).documents;
    } catch (err) {
      if (seq === this._seq) this.status.textContent = `Could not list the documents: ${err.message}`;
      return;
    }
    if (seq !== this._seq) return; // a later refresh is under way
    this.body.replaceChildren(...docs.map(docRow));
    const names = [...new Set(docs.map((d) => d.collection))].sort();
    this.choices.replaceChildren(...names.map((n) => Object.assign(el("option"), { value: n })));
    this.status.textContent = docs.length ? `${docs.length} document${docs.length === 1 ? "" : "s"}`
      : "No documents yet: upload one here, attach one with the paperclip under the chat, or drop it onto either.";
  }

  async _delete(tr) {
    const name = tr.dataset.name;
    if (!confirm(`Delete "${name}" and its chunks? Answers will no longer cite it.`)) return;
    try {
      await api.removeDocument(tr.dataset.id);
    } catch (err) {
      if (err.status !== 404) {
        this.status.textContent = `Could not delete ${name}: ${err.message}`;
        return;
      }
    }
    await this.refresh();
  }
}

function docRow(d) {
  const tr = el("tr", "doc-row");
  tr.dataset.id = d.id;
  tr.dataset.name = d.name;
  tr.dataset.status = d.status;
  const status = d.status === "error" ? `error: ${d.error || d.error_code || "unreadable"}` : d.status;
  const del = el("button", "small-button", "Delete");
  del.type = "button";
  del.dataset.action = "delete-doc";
  del.setAttribute("aria-label", `Delete ${d.name}`);
  const cells = [el("td", "doc-name", d.name), el("td", "doc-collection", d.collection),
    el("td", "doc-status", status), el("td", "doc-chunks", d.chunks == null ? "" : String(d.chunks)),
    el("td", "doc-pages", d.pages == null ? "" : String(d.pages))];
  const action = el("td");
  action.append(del);
  tr.append(...cells, action);
  return tr;
}
