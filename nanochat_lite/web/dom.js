// Building DOM nodes, for every module of the page.
//
// Text goes in as textContent, never as markup: a model's answer or a conversation
// title cannot add elements to the page.

/** el("p", "note", "<b>") -> <p class="note">&lt;b&gt;</p>; className and text are optional. */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
