// The conversation list: newest first, paged; open, rename (inline), export, delete
// (after a confirm); and a search box that lists matching messages instead.
//
// Each API key sees its own conversations. The list's answer says who is asking
// (`viewer`); for an admin key an owner filter appears ("my conversations",
// "everyone's", or one key's): other keys' conversations are then listed with their
// owner's name, and open read-only (no rename or delete: the server allows reading only).
//
// Titles and snippets are text nodes. Search snippets mark matches with «…»; those
// become <mark> elements by splitting the string, not by parsing HTML.

import { api } from "./api.js";
import { el } from "./dom.js";
import { limits, withLimits } from "./limits.js";

const PAGE = 50; // conversations listed at first and added by "Load more"; asked for in requests of
// at most the server's page_size (limits.js), or of PAGE until that is known
const SEARCH_DELAY_MS = 250;

function iconButton(label, action, glyph) {
  const b = el("button", "icon-button row-action", glyph);
  b.type = "button";
  b.dataset.action = action;
  b.title = label;
  b.setAttribute("aria-label", label);
  return b;
}

/** "a «b» c" -> [text "a ", <mark>b</mark>, text " c"] */
export function markedSnippet(snippet) {
  const frag = document.createDocumentFragment();
  const parts = String(snippet ?? "").split(/«|»/);
  parts.forEach((part, k) => {
    if (!part) return;
    frag.append(k % 2 ? el("mark", "", part) : document.createTextNode(part));
  });
  return frag;
}

export class Sidebar {
  /** hooks: open(id, messageId?, owner?), renamed(id, title), deleted(id), currentId(), viewer(v) */
  constructor(root, hooks) {
    this.hooks = hooks;
    this.ownerBox = root.querySelector("#owner-box");
    this.ownerSelect = root.querySelector("#owner-filter");
    this.owner = ""; // "" = my conversations; a key's name, or "*" (an admin's filter)
    this.viewer = null; // {owner, admin, keys}: who the server says this page is
    this.list = root.querySelector("#conversation-list");
    this.status = root.querySelector("#sidebar-status");
    this.more = root.querySelector("#load-more");
    this.search = root.querySelector("#search-input");
    this.items = [];
    this.total = 0;
    this._query = "";
    this._timer = 0;
    this._seq = 0;
    this.more.addEventListener("click", () => this.refresh(this.items.length + PAGE));
    this.search.addEventListener("input", () => {
      clearTimeout(this._timer);
      this._timer = setTimeout(() => this._runSearch(), SEARCH_DELAY_MS);
    });
    this.search.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && this.search.value) {
        ev.preventDefault(); // clears the search; does not also close the drawer
        this.search.value = "";
        this._runSearch();
      }
    });
    this.list.addEventListener("click", (ev) => this._onClick(ev));
    this.ownerSelect.addEventListener("change", () => {
      this.owner = this.ownerSelect.value;
      this.items = [];
      if (this._query) this._runSearch();
      else this.refresh(PAGE);
    });
    withLimits((lim) => (this.search.maxLength = lim.search_chars));
  }

  /** Someone else's conversation (an admin reading it)? */
  foreign(owner) {
    return Boolean(this.viewer && owner && owner !== this.viewer.owner);
  }

  _setViewer(viewer) {
    if (!viewer || (this.viewer && this.viewer.owner === viewer.owner && this.viewer.admin === viewer.admin)) return;
    this.viewer = viewer;
    this.hooks.viewer?.(viewer);
    const filter = viewer.admin && viewer.keys;
    this.ownerBox.hidden = !filter;
    if (!filter) {
      this.owner = "";
      return;
    }
    // The other keys' names, from the usage an admin sees in /api/stats.
    api.stats().then((stats) => {
      for (const name of Object.keys(stats.keys || {}).sort()) {
        if (name === viewer.owner || [...this.ownerSelect.options].some((o) => o.value === name)) continue;
        const option = el("option", "", `${name}'s`);
        option.value = name;
        this.ownerSelect.append(option);
      }
    }, () => {});
  }

  /** Reload the list (the first `count` conversations), unless a search is shown. */
  async refresh(count = Math.max(PAGE, this.items.length)) {
    if (this._query) return;
    const seq = ++this._seq;
    const items = [];
    let total = 0;
    try {
      do {
        const data = await api.conversations(Math.min(limits()?.page_size ?? PAGE, count - items.length), items.length,
          this.owner);
        this._setViewer(data.viewer);
        items.push(...data.conversations);
        total = data.total;
        if (!data.conversations.length) break;
      } while (items.length < Math.min(count, total) && seq === this._seq);
    } catch (err) {
      if (seq === this._seq) this._say(`Conversation list unavailable: ${err.message}`);
      return;
    }
    if (seq !== this._seq || this._query) return;
    this.items = items;
    this.total = total;
    this._renderList();
  }

  /** Mark the open conversation without reloading. */
  highlight() {
    const current = this.hooks.currentId();
    for (const li of this.list.children) {
      const on = li.dataset.id === current;
      li.classList.toggle("current", on);
      const open = li.querySelector(".conv-open");
      if (open) {
        if (on) open.setAttribute("aria-current", "true");
        else open.removeAttribute("aria-current");
      }
    }
  }

  _say(text) {
    this.status.textContent = text;
  }

  _renderList() {
    this.list.replaceChildren();
    for (const c of this.items) {
      const li = el("li", "conv-item");
      li.dataset.id = c.id;
      const foreign = this.foreign(c.owner);
      if (foreign) li.dataset.owner = c.owner;
      const open = el("button", "conv-open");
      open.type = "button";
      open.dataset.action = "open";
      const sub = el("span", "conv-sub", `${c.message_count} messages · ${when(c.updated_at)}`);
      if (foreign) sub.prepend(el("span", "conv-owner", c.owner), " · ");
      open.append(el("span", "conv-name", c.title || "Untitled"), sub);
      const exp = el("a", "icon-button row-action", "⤓");
      exp.href = api.exportUrl(c.id, "markdown", foreign ? c.owner : "");
      exp.download = "";
      exp.title = "Export as Markdown";
      exp.setAttribute("aria-label", "Export as Markdown");
      // Another key's conversation can be read, not changed.
      if (foreign) li.append(open, exp);
      else li.append(open, iconButton("Rename", "rename", "✎"), exp, iconButton("Delete", "delete", "✕"));
      this.list.append(li);
    }
    this._say(this.items.length ? "" : "No conversations yet.");
    this.more.hidden = this.items.length >= this.total;
    this.highlight();
  }

  async _runSearch() {
    const q = this.search.value.trim();
    this._query = q;
    const seq = ++this._seq;
    if (!q) {
      this.refresh();
      return;
    }
    let data;
    try {
      data = await api.search(q, this.owner);
    } catch (err) {
      if (seq === this._seq) this._say(`Search failed: ${err.message}`);
      return;
    }
    if (seq !== this._seq) return;
    this.list.replaceChildren();
    this.more.hidden = true;
    for (const hit of data.results) {
      const li = el("li", "conv-item search-hit");
      li.dataset.id = hit.conversation_id;
      if (hit.message_id != null) li.dataset.messageId = hit.message_id;
      if (this.owner) li.dataset.owner = this.owner; // read with the same filter it was found with
      const open = el("button", "conv-open");
      open.type = "button";
      open.dataset.action = "open";
      const snippet = el("span", "conv-sub snippet");
      snippet.append(markedSnippet(hit.snippet));
      open.append(el("span", "conv-name", hit.title || "Untitled"), snippet);
      li.append(open);
      this.list.append(li);
    }
    this._say(data.results.length ? `${data.results.length} matches` : "No matches.");
    this.highlight();
  }

  _onClick(ev) {
    const target = ev.target.closest("[data-action]");
    if (!target || !this.list.contains(target)) return;
    const li = target.closest("li");
    const id = li.dataset.id;
    const action = target.dataset.action;
    if (action === "open") this.hooks.open(id, li.dataset.messageId, li.dataset.owner);
    else if (action === "rename") this._startRename(li);
    else if (action === "delete") this._delete(li);
  }

  _startRename(li) {
    const name = li.querySelector(".conv-name");
    const input = el("input", "rename-input");
    input.type = "text";
    if (limits()) input.maxLength = limits().title_chars;
    input.value = name.textContent === "Untitled" ? "" : name.textContent;
    input.setAttribute("aria-label", "New title");
    const open = li.querySelector(".conv-open");
    open.hidden = true;
    li.prepend(input);
    input.focus();
    input.select();
    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      const title = input.value.trim();
      input.remove();
      open.hidden = false;
      if (!save || !title || title === name.textContent) {
        open.focus();
        return;
      }
      try {
        const data = await api.rename(li.dataset.id, title);
        const conv = data && data.conversation ? data.conversation : { title };
        name.textContent = conv.title || title;
        const item = this.items.find((c) => c.id === li.dataset.id);
        if (item) item.title = name.textContent;
        this.hooks.renamed(li.dataset.id, name.textContent);
      } catch (err) {
        this._say(`Rename failed: ${err.message}`);
      }
      open.focus();
    };
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        finish(true);
      } else if (ev.key === "Escape") {
        ev.preventDefault();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
  }

  async _delete(li) {
    const title = li.querySelector(".conv-name").textContent;
    if (!confirm(`Delete the conversation "${title}"? This cannot be undone.`)) return;
    try {
      await api.remove(li.dataset.id);
    } catch (err) {
      if (err.status !== 404) {
        this._say(`Delete failed: ${err.message}`);
        return;
      }
    }
    li.remove();
    this.items = this.items.filter((c) => c.id !== li.dataset.id);
    this.total = Math.max(0, this.total - 1);
    this.hooks.deleted(li.dataset.id);
    if (!this.list.children.length) this._say(this._query ? "No matches." : "No conversations yet.");
  }
}

function when(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) {
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return d.toLocaleDateString([], { month: "short", day: "numeric" });
}
