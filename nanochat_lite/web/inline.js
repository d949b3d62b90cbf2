// Inline Markdown for markdown.js: code spans, emphasis, links, autolinks, escapes.
//
// Text reaches the page only as text nodes or `textContent`. A link is made only when
// safeUrl() accepts its URL; otherwise the link's source is shown as plain text.
// Searches for closing delimiters are remembered (`cache`), so a hostile line such as
// "*a *a *a ..." costs linear time, not quadratic.

import { el } from "./dom.js";

export const MAX_DEPTH = 6; // nesting of quotes/lists/emphasis; deeper input renders as text
const MAX_LABEL = 1000; // characters; a longer [label] is not a link (keeps scans short)
const MAX_LABEL_NESTING = 8; // brackets inside a [label]; "[[[[[[[[[..." is text
const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

/** The URL to put in href, or null if it is not an absolute http(s)/mailto URL. */
export function safeUrl(raw) {
  const s = raw.trim();
  // Control characters and spaces would be stripped by the URL parser ("java\tscript:"),
  // so a URL containing any is refused outright.
  if (!/^(https?:\/\/|mailto:)/i.test(s) || /[\u0000-\u0020\u007f-\u009f]/.test(s)) return null;
  let url;
  try {
    url = new URL(s);
  } catch {
    return null;
  }
  return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

const ESCAPABLE = /[\\`*_{}[\]()#+\-.!|~<>"']/;
const BARE_URL = /https?:\/\/[^\s<>"'`]*[^\s<>"'`.,:;!?)\]]/y;
const LINK_TAIL = /\(\s*(<[^<>\n]*>|(?:[^\s()]|\((?:[^\s()])*\))*)(?:\s+("[^"\n]*"|'[^'\n]*'))?\s*\)/y;

/** Append the inline content of `text` (one line) to `parent`. */
export function renderInline(text, parent, depth) {
  // cache[key]: what searches for closers found so far (see findCloser); for code
  // spans and link labels, the position from which no closer exists.
  const cache = Object.create(null);
  let buf = "";
  const flush = () => {
    if (buf) parent.append(document.createTextNode(buf));
    buf = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && ESCAPABLE.test(text[i + 1] || "")) {
      buf += text[i + 1];
      i += 2;
      continue;
    }
    if (c === "`") {
      let n = 1;
      while (text[i + n] === "`") n++;
      const run = "`".repeat(n);
      let close = -1;
      if (!(cache[run] <= i)) {
        let from = i + n;
        while ((close = text.indexOf(run, from)) !== -1 && text[close + n] === "`") {
          from = close + n;
          while (text[from] === "`") from++;
        }
        if (close === -1) cache[run] = i;
      }
      if (close !== -1) {
        flush();
        let code = text.slice(i + n, close);
        if (/^ .*[^ ].* $/.test(code)) code = code.slice(1, -1);
        parent.append(el("code", "md-inline-code", code));
        i = close + n;
      } else {
        buf += run;
        i += n;
      }
      continue;
    }
    if (c === "[" || (c === "!" && text[i + 1] === "[")) {
      const end = link(text, i, parent, depth, cache, flush);
      if (end > i) {
        i = end;
        continue;
      }
    }
    if (c === "<") {
      const m = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(text.slice(i, i + 2048));
      if (m && safeUrl(m[1])) {
        flush();
        parent.append(anchor(safeUrl(m[1]), m[1]));
        i += m[0].length;
        continue;
      }
    }
    if ((c === "h" || c === "H") && !/\w/.test(text[i - 1] || "")) {
      BARE_URL.lastIndex = i;
      const m = BARE_URL.exec(text);
      const href = m && safeUrl(m[0]);
      if (href) {
        flush();
        parent.append(anchor(href, m[0]));
        i += m[0].length;
        continue;
      }
    }
    if ((c === "*" || c === "_" || c === "~") && depth < MAX_DEPTH) {
      const end = emphasis(text, i, parent, depth, cache, flush);
      if (end > i) {
        i = end;
        continue;
      }
    }
    buf += c;
    i++;
  }
  flush();
}

function emphasis(text, i, parent, depth, cache, flush) {
  const c = text[i];
  let n = 1;
  while (text[i + n] === c) n++;
  if (c === "~" ? n !== 2 : n > 2) return i; // ***, ~ and ~~~ are left as text
  const delim = c.repeat(n);
  const after = text[i + n] || "";
  if (!after || /\s/.test(after)) return i;
  if (c === "_" && /\w/.test(text[i - 1] || "")) return i; // snake_case_words
  const close = findCloser(text, delim, i + n + 1, cache);
  if (close === -1) return i;
  flush();
  const node = el(c === "~" ? "del" : n === 2 ? "strong" : "em");
  renderInline(text.slice(i + n, close), node, depth + 1);
  parent.append(node);
  return close + n;
}

/** The first position >= `from` where `delim` can close an emphasis, or -1.
 * Whether a position can close depends only on the text around it, so an answer
 * also holds for any later query starting between its `from` and its result: cached,
 * that keeps a line full of unmatched openers linear. */
function findCloser(text, delim, from, cache) {
  const c = delim[0];
  const hit = cache[delim];
  if (hit && hit.from <= from && (hit.pos === -1 || from <= hit.pos)) return hit.pos;
  let at = from;
  let pos = -1;
  while ((at = text.indexOf(delim, at)) !== -1) {
    const before = text[at - 1];
    const next = text[at + delim.length] || "";
    if (!/\s/.test(before) && before !== c && next !== c && !(c === "_" && /\w/.test(next))) {
      pos = at;
      break;
    }
    at++;
  }
  cache[delim] = { from, pos };
  return pos;
}

function link(text, i, parent, depth, cache, flush) {
  const image = text[i] === "!";
  const open = image ? i + 1 : i;
  if (cache["]"] <= open) return i;
  // The label: up to the matching "]" (a few nested brackets allowed, escapes skipped).
  let level = 0;
  let k = open;
  const limit = Math.min(text.length, open + MAX_LABEL);
  for (; k < limit; k++) {
    if (text[k] === "\\") k++;
    else if (text[k] === "[" && ++level > MAX_LABEL_NESTING) return i;
    else if (text[k] === "]" && --level === 0) break;
  }
  if (k >= limit) {
    if (text.indexOf("]", open) === -1) cache["]"] = open;
    return i;
  }
  LINK_TAIL.lastIndex = k + 1;
  const m = LINK_TAIL.exec(text);
  if (!m) return i;
  const label = text.slice(open + 1, k);
  const rawUrl = m[1].startsWith("<") ? m[1].slice(1, -1) : m[1];
  const href = safeUrl(rawUrl);
  const end = LINK_TAIL.lastIndex;
  flush();
  if (!href) {
    parent.append(document.createTextNode(text.slice(i, end))); // shown as written, inert
    return end;
  }
  const a = anchor(href);
  if (m[2]) a.title = m[2].slice(1, -1);
  if (image) {
    a.className = "md-image-link";
    a.textContent = "image: " + (label || rawUrl);
  } else if (depth < MAX_DEPTH && label) {
    renderInline(label, a, depth + 1);
    // A link inside a link's label is not allowed; keep only its text.
    for (const inner of a.querySelectorAll("a")) inner.replaceWith(document.createTextNode(inner.textContent));
  } else {
    a.textContent = label || rawUrl;
  }
  parent.append(a);
  return end;
}

function anchor(href, text) {
  const a = document.createElement("a");
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  if (text !== undefined) a.textContent = text;
  return a;
}

