// The outbox: messages typed but not yet taken by the server, kept in localStorage so
// that a reload, a closed tab or a server restart does not lose them.
//
// Each message gets a client id when it is typed. The server de-duplicates on it (a
// repeated id re-attaches to that message's answer), so sending an entry again after
// an outage or a reload cannot make it twice. An entry leaves the outbox when the
// server's "start" frame for it arrives: from then on the message is in the
// conversation store. Entries are `{client_id, text, conversation_id, thread_key}`;
// `thread_key` ties together messages of a new chat that has no conversation id yet,
// so that they all land in the one conversation the first of them creates.
//
// Not handled: two tabs sending the same entry at once (the server's de-duplication
// makes that harmless; both tabs then show the answer).

const OUTBOX_KEY = "nanochat-lite.outbox";

/** A random id: crypto.randomUUID where the page is a secure context (https, or
 * localhost), else the same shape from crypto.getRandomValues (plain http on a LAN). */
export function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; // version 4
  b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function valid(e) {
  return e && typeof e === "object" && typeof e.client_id === "string" && e.client_id
    && typeof e.text === "string" && typeof e.thread_key === "string"
    && (e.conversation_id === null || typeof e.conversation_id === "string");
}

export class Outbox {
  constructor(storage = globalThis.localStorage) {
    this.storage = storage;
    this.memory = null; // the entries, once storage proved unusable (disabled, or full)
  }

  /** The waiting entries, oldest first. */
  entries() {
    if (this.memory) return this.memory.slice();
    let raw;
    try {
      raw = this.storage.getItem(OUTBOX_KEY);
    } catch {
      this.memory = [];
      return [];
    }
    try {
      const list = raw === null ? [] : JSON.parse(raw);
      return Array.isArray(list) ? list.filter(valid) : [];
    } catch {
      return []; // a corrupt value: nothing to send
    }
  }

  add(entry) {
    this._write([...this.entries().filter((e) => e.client_id !== entry.client_id), entry]);
  }

  remove(clientId) {
    this._write(this.entries().filter((e) => e.client_id !== clientId));
  }

  /** The new chat `threadKey` now has its conversation id. */
  setConversation(threadKey, conversationId) {
    this._write(this.entries().map((e) => (e.thread_key === threadKey ? { ...e, conversation_id: conversationId } : e)));
  }

  _write(list) {
    if (this.memory) {
      this.memory = list;
      return;
    }
    try {
      if (list.length) this.storage.setItem(OUTBOX_KEY, JSON.stringify(list));
      else this.storage.removeItem(OUTBOX_KEY);
    } catch {
      this.memory = list; // private mode or a full quota: this tab keeps them until it closes
    }
  }
}
