// The "Tokens" tab: paste text, see how the served model's tokenizer splits it.
//
// Asks `POST /api/tokenize` (debounced) and draws one <span class="tok" data-id> per
// token, in alternating colour classes; whitespace is made visible inside the spans.
// Every piece of text goes in through textContent, never as markup. It does not
// handle: editing tokens, or drawing more than MAX_DRAWN of them (the count is exact).

import { ApiError, api } from "./api.js";
import { el } from "./dom.js";

const DEBOUNCE_MS = 150;
const COLOURS = 10; // tok-c0 … tok-c9 in style.css
const MAX_DRAWN = 10_000; // spans; a 1 MiB paste is ~300k tokens, too many to lay out
// Visible stand-ins for whitespace; a newline also breaks the line after its mark.
const MARKS = { " ": "·", "\t": "→", "\n": "↵", "\r": "␍" };
// piece_text escapes the bytes of a partial UTF-8 character as \xNN (always >= 0x80).
const PARTIAL = /\\x[89a-f][0-9a-f]/;
const PIECE_BYTES = /\\x([89a-f][0-9a-f])|[^]/gu;
const utf8 = new TextEncoder();

const int = (n) => n.toLocaleString("en-US");

/** One token's span: `" a\nb"` -> [ws "·"] "a" [ws "↵"] [id] <br> "b". The id element
 * goes before the first line break so that, when shown, it stays beside its token. */
export function tokenSpan(token, index) {
  const span = el("span", `tok tok-c${index % COLOURS}`);
  span.dataset.id = String(token.id);
  span.title = `id ${token.id}`;
  if (PARTIAL.test(token.text)) {
    span.classList.add("tok-partial");
    span.dataset.piece = token.text;
    span.title += " · part of a multi-byte character";
  }
  const idBox = el("span", "tok-id", String(token.id));
  let plain = "";
  let marks = "";
  const flushPlain = () => {
    if (plain) span.append(plain);
    plain = "";
  };
  const flushMarks = () => {
    if (marks) span.append(el("span", "tok-ws", marks));
    marks = "";
  };
  for (const ch of token.text) {
    const mark = MARKS[ch];
    if (!mark) {
      flushMarks();
      plain += ch;
      continue;
    }
    flushPlain();
    marks += mark;
    if (ch === "\n") {
      flushMarks();
      if (!span.contains(idBox)) span.append(idBox);
      span.append(el("br"));
    }
  }
  flushPlain();
  flushMarks();
  if (!span.contains(idBox)) span.append(idBox);
  return span;
}

/** Name the characters that partial tokens spell together, in their titles:
 * "\xe4\xbd" + "\xa0" -> both say "part of “你”". */
function namePartials(spans) {
  const decoder = new TextDecoder("utf-8", { fatal: true });
  let bytes = [];
  let group = [];
  for (const span of spans) {
    if (!span.classList.contains("tok-partial")) {
      bytes = []; // an unfinished character stays unnamed
      group = [];
      continue;
    }
    for (const m of span.dataset.piece.matchAll(PIECE_BYTES)) {
      bytes.push(...(m[1] ? [parseInt(m[1], 16)] : utf8.encode(m[0])));
    }
    group.push(span);
    let text;
    try {
      text = decoder.decode(new Uint8Array(bytes));
    } catch {
      continue; // not a whole character yet
    }
    for (const g of group) g.title = `id ${g.dataset.id} · part of “${text.trim() || text}”`;
    bytes = [];
    group = [];
  }
}

export class TokenView {
  constructor(panel) {
    const $ = (sel) => panel.querySelector(sel);
    this.input = $("#tok-input");
    this.special = $("#tok-special");
    this.showIds = $("#tok-ids");
    this.output = $("#tok-output");
    this.count = $("#tok-count");
    this.chars = $("#tok-chars");
    this.error = $("#tok-error");
    this.more = $("#tok-more");
    this._timer = 0;
    this._seq = 0;
    this.input.addEventListener("input", () => this._schedule(DEBOUNCE_MS));
    this.special.addEventListener("change", () => this._schedule(0));
    this.showIds.addEventListener("change", () => this._showIds());
    this._showIds();
  }

  _showIds() {
    this.output.classList.toggle("show-ids", this.showIds.checked);
  }

  _schedule(delay) {
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this.update(), delay);
  }

  /** Tokenize the textarea's text now; a newer call wins over an older answer. */
  async update() {
    const seq = ++this._seq;
    const text = this.input.value;
    this.output.setAttribute("aria-busy", "true");
    if (!text) {
      this._show([], 0, text);
      return;
    }
    try {
      const data = await api.tokenize(text, this.special.checked);
      if (seq === this._seq) this._show(data.tokens, data.count, text);
    } catch (err) {
      if (seq !== this._seq) return;
      if (!(err instanceof ApiError)) throw err;
      this._show([], null, text);
      this.error.textContent = `Cannot tokenize this text: ${err.message}.`;
    }
  }

  _show(tokens, count, text) {
    this.error.textContent = "";
    const shown = tokens.slice(0, MAX_DRAWN);
    const frag = document.createDocumentFragment();
    const spans = shown.map(tokenSpan);
    spans.forEach((span, i) => {
      if (i) frag.append(el("wbr")); // lines may break between tokens, not only at spaces
      frag.append(span);
    });
    namePartials(spans);
    this.output.replaceChildren(frag);
    this.output.removeAttribute("aria-busy");
    this.more.hidden = shown.length === tokens.length;
    this.more.textContent = `Showing the first ${int(shown.length)} of ${int(tokens.length)} tokens.`;
    this.count.dataset.value = count == null ? "" : String(count);
    this.count.textContent = count == null ? "–" : int(count);
    const chars = [...text].length; // code points, so an emoji counts once
    this.chars.dataset.value = String(chars);
    this.chars.textContent = int(chars);
  }
}
