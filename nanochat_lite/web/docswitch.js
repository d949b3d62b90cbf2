// The "use my documents" switch under the composer, per conversation: on or off, and
// which collection it was turned on with (the one the documents panel showed then).
// It asks with `documents: true` for the `default` collection and
// `documents: {collection: NAME}` for any other; beside it, the collection's name when it
// is not `default` (while it is off: the one turning it on would use).
//
// Kept in localStorage as {conversation id: collection}. Pages from before collections
// kept a plain list of ids, each meaning `default`: still read as that, and written back
// in the new shape at the next change.

export const DEFAULT_COLLECTION = "default";
const DOCS_KEY = "nanochat-lite.documents";

/** conversation id -> collection, from storage: {"c1": "notes"} or the old ["c1"] (default). */
export function readSwitches() {
  let raw;
  try {
    raw = JSON.parse(localStorage.getItem(DOCS_KEY) || "{}");
  } catch {
    return new Map(); // storage disabled or a corrupt value
  }
  if (Array.isArray(raw)) return new Map(raw.filter((x) => typeof x === "string").map((id) => [id, DEFAULT_COLLECTION]));
  if (!raw || typeof raw !== "object") return new Map();
  return new Map(Object.entries(raw).filter(([, name]) => typeof name === "string" && name));
}

function writeSwitches(map) {
  try {
    localStorage.setItem(DOCS_KEY, JSON.stringify(Object.fromEntries(map)));
  } catch {
    // Private mode or a full quota: the switch lasts until the page is closed.
  }
}

/** The chat frame's `documents` value for a collection name. */
export function documentsField(collection) {
  return collection === DEFAULT_COLLECTION ? true : { collection };
}

/** The switch. A new chat's setting is kept with its thread (`thread.documents`: the
 * collection) until the server names the conversation, then remembered under that id. */
export class DocumentsSwitch {
  /** `input` the checkbox, `nameBox` the element beside it that names the collection,
   * `current()` the collection the documents panel shows now. */
  constructor(input, nameBox, current) {
    this.input = input;
    this.nameBox = nameBox;
    this.current = current;
    this.thread = { id: null };
    input.addEventListener("change", () => {
      this._store(this.thread, input.checked ? this.current() : null);
      this.showName();
    });
  }

  /** Show the switch of `thread` (the conversation now open). */
  show(thread) {
    this.thread = thread;
    this.input.checked = this.collection(thread) !== null;
    this.showName();
  }

  /** The collection `thread` asks with, or null when its switch is off. */
  collection(thread) {
    if (!thread.id) return typeof thread.documents === "string" ? thread.documents : null;
    return readSwitches().get(thread.id) ?? null;
  }

  on(thread) {
    return this.collection(thread) !== null;
  }

  /** The chat frame's field for `thread`: {documents: true | {collection}} when on. */
  fields(thread) {
    const name = this.collection(thread);
    return name === null ? {} : { documents: documentsField(name) };
  }

  /** The server named a new chat's conversation: keep its setting under the id. */
  learned(thread) {
    if (thread.id && typeof thread.documents === "string") this._store(thread, thread.documents);
  }

  /** Name the collection beside the switch (also called when the panel's one changes). */
  showName() {
    const on = this.collection(this.thread);
    const name = on ?? this.current();
    this.nameBox.hidden = name === DEFAULT_COLLECTION;
    this.nameBox.textContent = name === DEFAULT_COLLECTION ? "" : name;
    this.nameBox.dataset.state = on === null ? "next" : "on";
    this.nameBox.title = on === null ? `Turning it on uses the collection "${name}" (chosen in the Documents tab)`
      : `This conversation uses the collection "${name}"`;
  }

  _store(thread, collection) {
    if (!thread.id) {
      thread.documents = collection;
      return;
    }
    const map = readSwitches();
    if (collection === null) map.delete(thread.id);
    else map.set(thread.id, collection);
    writeSwitches(map);
  }
}
