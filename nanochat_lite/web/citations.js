// Citations under an answer: numbered chips "[1] atlas.pdf p. 2" that open the cited text.
//
// They come from the final "done" frame of an answer asked with documents on, and from
// the stored assistant message when a conversation is reopened: both carry
// `citations: [{n, document_id, name, page, text, score}]` and `documents_mode`: "whole"
// (the documents fitted the prompt whole) or "search" (the best-matching passages). Every piece of a citation is
// the document's own text: it goes in as textContent, never as markup.

import { el } from "./dom.js";

let dialog = null; // the <dialog> of index.html, wired once

/** "[1] atlas.pdf p. 2" (no page for formats without pages). */
export function chipLabel(c) {
  return `[${c.n}] ${c.name}${c.page != null ? ` p. ${c.page}` : ""}`;
}

const MODE_TEXT = { whole: "Sources (read whole):", search: "Sources (best-matching passages):" };

/** Put `citations` under the answer `li` (replacing any there); none: nothing shown. */
export function setCitations(li, citations, mode) {
  const old = li.querySelector(".citations");
  if (old) old.remove();
  if (!Array.isArray(citations) || !citations.length) return;
  const box = el("div", "citations");
  box.setAttribute("aria-label", "Sources");
  if (mode) box.dataset.mode = mode;
  box.append(el("span", "cite-label", MODE_TEXT[mode] || "Sources:"));
  for (const c of citations) {
    if (!c || typeof c !== "object") continue;
    const chip = el("button", "cite-chip", chipLabel(c));
    chip.type = "button";
    chip.title = "Show the cited text";
    chip.addEventListener("click", () => openCitation(c));
    box.append(chip);
  }
  const meta = li.querySelector(".msg-meta");
  if (meta) meta.before(box);
  else li.append(box);
}

/** Wire the citation <dialog> of index.html. */
export function installCitationDialog(element) {
  dialog = element;
  dialog.querySelector("[data-action=close]").addEventListener("click", () => dialog.close());
}

function openCitation(c) {
  if (!dialog) return;
  dialog.querySelector("#cite-title").textContent = `[${c.n}] ${c.name}`;
  dialog.querySelector("#cite-page").textContent = c.page != null ? `p. ${c.page}` : "";
  dialog.querySelector("#cite-text").textContent = c.text || "";
  if (!dialog.open) dialog.showModal();
}
