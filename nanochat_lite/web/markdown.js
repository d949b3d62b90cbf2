// A small Markdown renderer for model answers that builds DOM nodes directly.
//
// Safety comes from construction, not from cleaning: text only ever reaches the page
// through `textContent` / text nodes, never `innerHTML`, so raw HTML in an answer is
// shown as the characters it is. Links are made only for http:, https: and mailto:
// URLs (checked after parsing, so "JAVASCRIPT:" or "java\tscript:" are not links) and
// open in a new tab with rel="noopener noreferrer"; anything else stays plain text.
// Images are never loaded: `![alt](url)` becomes a link to the image.
//
// Handles: fenced code blocks (``` and ~~~, with a copy button), headings, block
// quotes, ordered and unordered lists (nested by indentation), GFM pipe tables,
// horizontal rules, paragraphs with line breaks; inline code, **strong**, *em*,
// ~~strike~~, [links](url "title"), <autolinks>, bare http(s) URLs, backslash escapes.
// Not handled: raw HTML (shown as text), reference-style links, footnotes, setext
// headings, indented code blocks. An unclosed fence (an answer still streaming)
// renders as a code block up to the end.

import { el } from "./dom.js";
import { MAX_DEPTH, renderInline } from "./inline.js";

export { safeUrl } from "./inline.js";

/** Render `text` into a DocumentFragment. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  renderBlocks(text.replace(/\r\n?/g, "\n").split("\n"), frag, 0);
  return frag;
}

// -- blocks ---------------------------------------------------------------------
const FENCE = /^ {0,3}(`{3,}|~{3,})[ \t]*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*#*[ \t]*$/;
const HR = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const LIST_ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])(?:[ \t]+|$)(.*)$/;
const TABLE_DELIM = /^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$/;

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || HR.test(line) || QUOTE.test(line) || LIST_ITEM.test(line);
}

function renderBlocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    if (depth >= MAX_DEPTH) {
      parent.append(paragraph(lines.slice(i).join("\n"), depth));
      return;
    }
    let m;
    if ((m = FENCE.exec(line))) {
      i = codeBlock(lines, i, m, parent);
    } else if (HR.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if ((m = HEADING.exec(line))) {
      const h = el(`h${Math.min(6, m[1].length + 2)}`, "md-h"); // h3..h6: the page owns h1/h2
      renderInline(m[2] || "", h, depth);
      parent.append(h);
      i++;
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && QUOTE.test(lines[i])) body.push(lines[i++].replace(QUOTE, ""));
      const q = el("blockquote");
      renderBlocks(body, q, depth + 1);
      parent.append(q);
    } else if ((m = LIST_ITEM.exec(line))) {
      i = list(lines, i, parent, depth);
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_DELIM.test(lines[i + 1])
               && lines[i + 1].includes("-") && splitRow(line).length === splitRow(lines[i + 1]).length) {
      i = table(lines, i, parent, depth);
    } else {
      const body = [line];
      i++;
      while (i < lines.length && lines[i].trim() && !isBlockStart(lines[i])) body.push(lines[i++]);
      parent.append(paragraph(body.join("\n"), depth));
    }
  }
}

function paragraph(text, depth) {
  const p = el("p");
  const lines = text.split("\n");
  lines.forEach((line, k) => {
    if (k) p.append(el("br"));
    renderInline(line.trim(), p, depth);
  });
  return p;
}

function codeBlock(lines, start, m, parent) {
  const fence = m[1];
  const lang = m[2] || "";
  const body = [];
  let i = start + 1;
  while (i < lines.length) {
    const close = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(lines[i]);
    if (close && close[1][0] === fence[0] && close[1].length >= fence.length) {
      i++;
      break;
    }
    body.push(lines[i++]);
  }
  const code = body.join("\n");
  const wrap = el("div", "md-code");
  const bar = el("div", "md-code-bar");
  bar.append(el("span", "md-code-lang", lang));
  const copy = el("button", "copy-button md-code-copy", "Copy code");
  copy.type = "button";
  copy.dataset.copy = "code";
  bar.append(copy);
  const pre = el("pre");
  pre.append(el("code", lang ? "language-" + lang.replace(/[^\w+#.-]/g, "") : "", code));
  wrap.append(bar, pre);
  parent.append(wrap);
  return i;
}

function list(lines, start, parent, depth) {
  const first = LIST_ITEM.exec(lines[start]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const node = el(ordered ? "ol" : "ul");
  if (ordered) {
    const n = parseInt(first[2], 10);
    if (n !== 1) node.start = n;
  }
  let i = start;
  let loose = false;
  const items = [];
  while (i < lines.length) {
    const m = LIST_ITEM.exec(lines[i]);
    if (!m || m[1].length !== indent || /\d/.test(m[2]) !== ordered) break;
    const contentIndent = indent + m[2].length + 1;
    const body = [m[3]];
    i++;
    while (i < lines.length) {
      const line = lines[i];
      const lead = line.length - line.trimStart().length;
      if (!line.trim()) {
        // A blank line continues the item only if indented content follows.
        const next = lines[i + 1];
        if (next !== undefined && next.trim() && next.length - next.trimStart().length >= contentIndent) {
          body.push("");
          i++;
          loose = true;
          continue;
        }
        if (next !== undefined && LIST_ITEM.test(next) && LIST_ITEM.exec(next)[1].length === indent) loose = true;
        break;
      }
      const sub = LIST_ITEM.exec(line);
      if (sub && sub[1].length <= indent) break; // a sibling (or a parent's sibling)
      if (lead < contentIndent && !sub && isBlockStart(line)) break;
      body.push(line.slice(Math.min(lead, contentIndent)));
      i++;
    }
    items.push(body);
    while (i < lines.length && !lines[i].trim()) {
      const next = lines[i + 1];
      if (next !== undefined && LIST_ITEM.test(next) && LIST_ITEM.exec(next)[1].length === indent) {
        i++;
      } else break;
    }
  }
  for (const body of items) {
    const li = el("li");
    const hasBlocks = body.slice(1).some((l) => isBlockStart(l) || !l.trim());
    if (!loose && !hasBlocks) {
      body.forEach((line, k) => {
        if (k) li.append(el("br"));
        renderInline(line.trim(), li, depth + 1);
      });
    } else {
      renderBlocks(body, li, depth + 1);
    }
    node.append(li);
  }
  parent.append(node);
  return i;
}

function splitRow(line) {
  let s = line.trim();
  if (s.startsWith("|")) s = s.slice(1);
  if (s.endsWith("|") && !s.endsWith("\\|")) s = s.slice(0, -1);
  const cells = [];
  let cur = "";
  for (let k = 0; k < s.length; k++) {
    if (s[k] === "\\" && s[k + 1] === "|") {
      cur += "|";
      k++;
    } else if (s[k] === "|") {
      cells.push(cur.trim());
      cur = "";
    } else cur += s[k];
  }
  cells.push(cur.trim());
  return cells;
}

function table(lines, start, parent, depth) {
  const head = splitRow(lines[start]);
  const aligns = splitRow(lines[start + 1]).map((c) =>
    c.startsWith(":") && c.endsWith(":") ? "center" : c.endsWith(":") ? "right" : c.startsWith(":") ? "left" : "");
  const wrap = el("div", "md-table");
  const t = el("table");
  const thead = el("thead");
  const tr = el("tr");
  head.forEach((cell, k) => {
    const th = el("th", aligns[k] ? "align-" + aligns[k] : "");
    renderInline(cell, th, depth + 1);
    tr.append(th);
  });
  thead.append(tr);
  t.append(thead);
  const tbody = el("tbody");
  let i = start + 2;
  while (i < lines.length && lines[i].trim() && lines[i].includes("|")) {
    const cells = splitRow(lines[i++]);
    const row = el("tr");
    head.forEach((_, k) => {
      const td = el("td", aligns[k] ? "align-" + aligns[k] : "");
      renderInline(cells[k] || "", td, depth + 1);
      row.append(td);
    });
    tbody.append(row);
  }
  t.append(tbody);
  wrap.append(t);
  parent.append(wrap);
  return i;
}
