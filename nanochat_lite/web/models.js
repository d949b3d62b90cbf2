// The model picker: which of the server's models answers the open conversation.
//
// GET /api/models lists every model the server serves, each with its status (loaded,
// loading, unloaded, unusable), file size and whether it has a chat template. The
// picker shows them all ("gemma3-270m · 253 MB · unloaded"); a model that cannot be
// used, or has no chat template (a base model: the chat doors answer 400
// no_chat_template), is listed disabled with the reason. A server with one model
// shows no picker and the chat frame carries no `model` (behaviour as before).
//
// Each thread (chat.js) keeps its model in `thread.model`, sent as the chat frame's
// `model`: a new chat starts with the model last used in this browser (while the
// server still offers it), else the server's default; a reopened conversation with
// the model of its last answer. While an answer waits for its model to load (the
// request waits on the server), the picker polls /api/models and the answer says
// "loading model …" until its first token or an error.

import { api } from "./api.js";
import { el } from "./dom.js";

const LAST_KEY = "nanochat-lite.model"; // the model last chosen for a chat in this browser
const POLL_MS = 500; // how often the list is read while an answer waits for its model

function readLast() {
  try {
    return localStorage.getItem(LAST_KEY);
  } catch {
    return null; // storage disabled: the server's default then
  }
}

function writeLast(name) {
  try {
    localStorage.setItem(LAST_KEY, name);
  } catch {
    // Private mode or a full quota: the choice is not remembered, the chat still works.
  }
}

/** 253113024 -> "253 MB"; 1.2e9 -> "1.2 GB" (decimal, like the catalog's sizes). */
export function formatSize(bytes) {
  if (bytes == null) return null;
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  return `${Math.max(1, Math.round(bytes / 1e6))} MB`;
}

/** "http://10.0.0.5:8080/v1" -> "10.0.0.5:8080" (the URL itself when it does not parse). */
export function hostOf(url) {
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

/** Why a row cannot answer a chat, or null when it can. */
export function whyNot(row) {
  if (row.status === "unusable") return `unusable: ${row.error || "the file cannot be read"}`;
  if (row.has_chat_template === false) return "no chat template (completions only)";
  return null;
}

/** "gemma3-270m · 253 MB · unloaded" (or the reason it cannot chat); an upstream's
 * entry shows its host instead of a size, and "not answering" while its status is error. */
export function optionLabel(row) {
  const parts = [row.name];
  const size = formatSize(row.size_bytes);
  if (size) parts.push(size);
  if (row.upstream) parts.push(`remote ${hostOf(row.upstream)}`);
  parts.push(whyNot(row) || (row.status === "error" ? "not answering" : row.status));
  return parts.join(" · ");
}

export class ModelPicker {
  /** `select`: the <select>; `box`: what is hidden when the server serves one model;
   * `header`: the top bar's model name, hidden while the picker names the models. */
  constructor(select, box, header) {
    this.select = select;
    this.box = box;
    this.header = header;
    this.rows = [];
    this.default = null;
    this.thread = { id: null };
    this._reading = null;
    this._shown = ""; // the option labels on screen
    select.addEventListener("change", () => {
      this.thread.model = select.value;
      writeLast(select.value);
    });
    select.addEventListener("focus", () => this.refresh());
  }

  /** More than one model: the picker is shown and the chat frame names one. */
  get active() {
    return this.rows.length > 1;
  }

  /** Read the list again (statuses change as models load and unload). */
  refresh() {
    if (this._reading) return this._reading;
    this._reading = api.models().then((data) => {
      this.rows = Array.isArray(data?.models) ? data.models : [];
      this.default = data?.default ?? null;
      this._render();
      return this.rows;
    }, () => this.rows).finally(() => (this._reading = null)); // unreadable: keep what was shown
    return this._reading;
  }

  /** Show the model of `thread` (the conversation now open); a new chat gets the default. */
  show(thread) {
    this.thread = thread;
    if (!thread.id && !thread.model) thread.model = this._defaultName();
    this._render();
  }

  /** A reopened conversation: its model is its last answer's, when still served. */
  learn(thread, messages) {
    if (thread.model) return; // chosen on this page already (an answer may still be pending)
    for (let i = messages.length - 1; i >= 0; i--) {
      const m = messages[i];
      if (m.role === "assistant" && m.model) {
        if (this._usable(m.model) || !this.rows.length) thread.model = m.model;
        return;
      }
    }
  }

  /** The chat frame's field for `thread`: {model} when the server serves several. */
  fields(thread) {
    if (!this.active) return {};
    if (!thread.model) thread.model = thread.id ? null : this._defaultName();
    if (thread.model) writeLast(thread.model);
    return thread.model ? { model: thread.model } : {};
  }

  /** Follow `view` (transcript.js TurnView) of `thread` until its answer starts: every
   * POLL_MS, while its model says `loading`, the answer says so. */
  watch(view, thread) {
    if (!this.active) return;
    let shown = false;
    const tick = async () => {
      const a = view.answer;
      if (a && (a.dataset.raw || a.dataset.status !== "streaming")) {
        if (shown) this.refresh(); // loaded now: the picker says so
        return; // the first token, or the end (done, error, interrupted)
      }
      if (a) {
        const rows = await this.refresh();
        const row = rows.find((r) => r.name === thread.model);
        const loading = Boolean(row && row.status === "loading");
        if (loading || shown) view.modelLoading(loading ? row.name : null);
        shown = loading;
      }
      setTimeout(tick, POLL_MS);
    };
    setTimeout(tick, POLL_MS);
  }

  _usable(name) {
    const row = this.rows.find((r) => r.name === name);
    return Boolean(row && !whyNot(row));
  }

  _defaultName() {
    const last = readLast();
    if (last && this._usable(last)) return last;
    if (this.default && this._usable(this.default)) return this.default;
    const first = this.rows.find((r) => !whyNot(r));
    return first ? first.name : null;
  }

  _render() {
    this.box.hidden = !this.active;
    if (this.header) this.header.hidden = this.active; // the default's name: not the open chat's
    if (!this.active) return;
    // A new chat opened before the list was read: its default is known now.
    if (!this.thread.id && !this.thread.model) this.thread.model = this._defaultName();
    // Rebuilt only when a label changed: replacing the options of an open <select> closes it.
    const key = JSON.stringify(this.rows.map(optionLabel));
    if (key !== this._shown) {
      this._shown = key;
      this.select.replaceChildren(...this.rows.map((row) => this._option(row)));
    }
    const current = this.thread.model || this.default;
    if (current && this.rows.some((r) => r.name === current)) this.select.value = current;
  }

  _option(row) {
    const o = el("option", "", optionLabel(row));
    o.value = row.name;
    o.dataset.status = row.status;
    const why = whyNot(row);
    o.disabled = Boolean(why);
    if (why) o.title = why;
    else if (row.status === "error" && row.error) o.title = row.error; // an upstream not answering: may come back
    return o;
  }
}
