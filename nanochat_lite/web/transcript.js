// The transcript: message elements, their badges and numbers, copy buttons.
//
// User text is shown as plain text (textContent); answers go through markdown.js.
// Every message is an <li class="msg" data-role data-status>; an answer's numbers
// sit in <span data-field="..."> elements so tests and people read the same thing.

import { setCitations } from "./citations.js";
import { el } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

const BUSY = new Set(["streaming", "reconnecting"]); // an answer still being written

const STATUS_TEXT = {
  queued: "queued",
  offline: "queued: sends when the connection is back",
  waiting: "waiting for the previous answer",
  stopped: "stopped",
  cancelled: "stopped",
  interrupted: "interrupted: the connection was lost",
  reconnecting: "connection lost: the answer resumes when it is back",
  failed: "failed",
  length: "cut at the max tokens limit",
};

function button(label, action, title) {
  const b = el("button", "small-button", label);
  b.type = "button";
  b.dataset.action = action;
  if (title) b.title = title;
  return b;
}

/** Copy text to the clipboard; the Clipboard API needs a secure context, so fall back. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", "visually-hidden");
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

export class Transcript {
  /** `onAskAgain(text)` is called when the user asks for the last answer again. */
  constructor(list, scroller, onAskAgain) {
    this.list = list;
    this.scroller = scroller;
    this.onAskAgain = onAskAgain;
    this._stick = true;
    scroller.addEventListener("scroll", () => {
      this._stick = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
    });
    list.addEventListener("click", (ev) => this._onClick(ev));
  }

  clear() {
    this.list.replaceChildren();
    this._stick = true;
  }

  /** Messages as `GET /api/conversations/{id}` returns them. */
  showHistory(messages) {
    let lastUser = null;
    for (const m of messages) {
      if (m.role === "user") {
        lastUser = m.content;
        this.list.append(userItem(m.content, "sent", m.id));
      } else if (m.role === "assistant") {
        const li = assistantItem(m.id);
        li.dataset.question = lastUser ?? "";
        setAnswer(li, m.content);
        setStatus(li, m.status === "complete" ? "complete" : m.status);
        setCitations(li, m.citations, m.documents_mode);
        if (m.completion_tokens != null) {
          setMeta(li, {
            prompt_tokens: m.prompt_tokens, completion_tokens: m.completion_tokens, ttft_ms: m.ttft_ms,
            duration_ms: m.duration_ms, model: m.model,
          });
        }
        this.list.append(li);
      }
    }
    this.updateAskAgain();
    this.scrollToEnd(true);
  }

  /** A new turn's elements, attached at the end; returns its view for the chat session. */
  addTurn(text) {
    const view = this.newView(text);
    this.attach(view);
    return view;
  }

  /** A turn's view, not attached yet (a message restored from the outbox). */
  newView(text) {
    return new TurnView(this, text);
  }

  /** A view over the stored answer `messageId` shown by showHistory and its question,
   * for following it live; null if it is not on screen. */
  follow(messageId) {
    const answer = document.getElementById("m-" + messageId);
    if (!answer || !this.list.contains(answer) || answer.dataset.role !== "assistant") return null;
    const user = answer.previousElementSibling;
    const view = new TurnView(this, answer.dataset.question ?? "");
    if (user && user.dataset.role === "user") view.user = user;
    view.answer = answer;
    answer.dataset.started = "1";
    setStatus(answer, "streaming");
    return view;
  }

  attach(view) {
    this.list.append(view.user);
    if (view.answer) this.list.append(view.answer);
    this.updateAskAgain();
    this.scrollToEnd(true);
  }

  get empty() {
    return !this.list.firstChild;
  }

  /** Only the last answer offers "Ask again", and only once it has finished. */
  updateAskAgain() {
    for (const b of this.list.querySelectorAll("[data-action=ask-again]")) b.hidden = true;
    const last = this.list.lastElementChild;
    if (last && last.dataset.role === "assistant" && !BUSY.has(last.dataset.status) && last.dataset.question) {
      last.querySelector("[data-action=ask-again]").hidden = false;
    }
  }

  scrollToEnd(force) {
    if (force || this._stick) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  async _onClick(ev) {
    const b = ev.target.closest("button");
    if (!b || !this.list.contains(b)) return;
    const li = b.closest(".msg");
    let text = null;
    if (b.dataset.copy === "code") text = b.closest(".md-code").querySelector("code").textContent;
    else if (b.dataset.action === "copy") text = li.dataset.raw ?? "";
    else if (b.dataset.action === "ask-again") this.onAskAgain(li.dataset.question);
    if (text !== null) {
      const label = b.textContent;
      b.textContent = (await copyText(text)) ? "Copied" : "Copy failed";
      setTimeout(() => (b.textContent = label), 1500);
    }
  }
}

/** One question and its answer, as the chat session reports on them. */
export class TurnView {
  constructor(transcript, text) {
    this.transcript = transcript;
    this.user = userItem(text, "queued");
    this.answer = null;
    this.text = text;
    this._pending = null;
    this._frame = 0;
    this._waited = ""; // " 3 s": how long the answer has waited for its model (the server's count)
    this._loading = false; // the badge says "loading model …"
  }

  queued(why) {
    setStatus(this.user, why);
    if (this.answer && !this.answer.dataset.started) {
      this.answer.remove();
      this.answer = null;
    }
  }

  sent() {
    setStatus(this.user, "sent");
    if (!this.answer) {
      this.answer = assistantItem();
      this.answer.dataset.question = this.text;
      setStatus(this.answer, "streaming");
      if (this.user.isConnected) this.user.after(this.answer);
      this.transcript.updateAskAgain();
      this.transcript.scrollToEnd(false);
    }
  }

  started(frame) {
    this.answer.dataset.started = "1";
    if (this._loading) setBadge(this.answer, ""); // loaded: the answer runs now
    this.answer.querySelector(".msg-model").textContent = frame.model || "";
  }

  /** The server is still reading the question (a long prompt): no token yet. */
  progress() {
    setBadge(this.answer, "reading your message…");
  }

  /** The answer waits for its model to load (the socket's "loading" frames, and models.js
   * reading /api/models); null: no more. */
  modelLoading(name, elapsedMs) {
    // Once it has started (or ended), the model is loaded: a late poll's answer is stale.
    if (!this.answer || this.answer.dataset.status !== "streaming" || this.answer.dataset.started) return;
    if (elapsedMs != null) this._waited = elapsedMs >= 1000 ? ` ${Math.round(elapsedMs / 1000)} s` : "";
    setBadge(this.answer, name ? `loading model ${name}…${this._waited}` : "");
    this._loading = Boolean(name);
    if (name) this.answer.querySelector(".msg-model").textContent = name;
  }

  /** The connection dropped mid-answer; the answer goes on on the server. */
  reconnecting() {
    this._flush();
    setStatus(this.answer, "reconnecting");
  }

  resumed() {
    setStatus(this.answer, "streaming");
  }

  /** The whole answer so far; rendered at most once per frame. */
  token(answerText) {
    this._pending = answerText;
    if (!this._frame) this._frame = requestAnimationFrame(() => this._flush());
  }

  _flush() {
    this._frame = 0;
    if (this._pending === null) return;
    if (this.answer.dataset.status === "streaming" && this.answer.querySelector(".badge").textContent) {
      setBadge(this.answer, ""); // "reading your message…" until the first token
    }
    setAnswer(this.answer, this._pending);
    this._pending = null;
    this.transcript.scrollToEnd(false);
  }

  done(frame) {
    cancelAnimationFrame(this._frame);
    this._frame = 0;
    this._pending = null;
    setAnswer(this.answer, frame.message);
    const reason = frame.finish_reason;
    setStatus(this.answer, reason === "stop" ? "complete" : reason === "cancelled" ? "stopped" : reason);
    setCitations(this.answer, frame.citations, frame.documents_mode);
    const u = frame.usage || {};
    const t = frame.timings || {};
    setMeta(this.answer, {
      prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, ttft_ms: t.ttft_ms,
      tokens_per_second: t.tokens_per_second, model: frame.model,
    });
    this._end();
  }

  failed(code, message) {
    if (!this.answer) this.sent();
    this._flush();
    setStatus(this.answer, "failed");
    this.answer.querySelector(".msg-error").textContent = `${message} (${code})`;
    this._end();
  }

  interrupted() {
    this._flush();
    setStatus(this.answer, "interrupted");
    this._end();
  }

  _end() {
    this.transcript.updateAskAgain();
    this.transcript.scrollToEnd(false);
  }
}

function userItem(text, status, id) {
  const li = el("li", "msg msg-user");
  li.dataset.role = "user";
  li.dataset.raw = text;
  if (id != null) li.id = "m-" + id;
  const head = el("div", "msg-head");
  const actions = el("span", "msg-actions");
  actions.append(button("Copy", "copy", "Copy this message"));
  head.append(el("span", "msg-role", "You"), el("span", "badge"), actions);
  const body = el("div", "msg-body msg-plain", text);
  li.append(head, body);
  setStatus(li, status);
  return li;
}

function assistantItem(id) {
  const li = el("li", "msg msg-assistant");
  li.dataset.role = "assistant";
  li.dataset.raw = "";
  if (id != null) li.id = "m-" + id;
  const head = el("div", "msg-head");
  const actions = el("span", "msg-actions");
  const again = button("Ask again", "ask-again",
    "Send your last message again. The new answer is added below; this one stays in the conversation.");
  again.hidden = true;
  actions.append(button("Copy", "copy", "Copy this answer as Markdown"), again);
  head.append(el("span", "msg-role", "Assistant"), el("span", "msg-model"), el("span", "badge"), actions);
  const body = el("div", "msg-body markdown");
  const error = el("p", "msg-error");
  const meta = el("div", "msg-meta");
  li.append(head, body, error, meta);
  return li;
}

function setAnswer(li, text) {
  li.dataset.raw = text;
  li.querySelector(".msg-body").replaceChildren(renderMarkdown(text));
}

function setStatus(li, status) {
  li.dataset.status = status;
  // The transcript is a polite live region; a busy answer is read once it is finished.
  li.setAttribute("aria-busy", String(BUSY.has(status)));
  setBadge(li, STATUS_TEXT[status] || "");
}

function setBadge(li, text) {
  const badge = li.querySelector(".badge");
  badge.textContent = text;
  badge.hidden = !text;
}

function fmt(value, digits) {
  return value == null ? null : Number(value).toFixed(digits);
}

/** The numbers under an answer; a live answer has tokens/s, a stored one its duration. */
function setMeta(li, m) {
  const parts = [
    ["prompt_tokens", fmt(m.prompt_tokens, 0), " prompt tokens"],
    ["completion_tokens", fmt(m.completion_tokens, 0), " completion tokens"],
    ["ttft_ms", fmt(m.ttft_ms, 0), " ms to first token", "time to first token (includes reading the prompt)"],
    ["tokens_per_second", fmt(m.tokens_per_second, 1), " tokens/s", "decode speed after the first token"],
    ["duration_ms", fmt(m.duration_ms, 0), " ms total"],
  ];
  const meta = li.querySelector(".msg-meta");
  meta.replaceChildren();
  for (const [field, value, unit, title] of parts) {
    if (value === null) continue;
    const item = el("span", "meta-item");
    if (title) item.title = title;
    const num = el("span", "meta-num", value);
    num.dataset.field = field;
    item.append(num, document.createTextNode(unit));
    meta.append(item);
  }
  if (m.model) li.querySelector(".msg-model").textContent = m.model;
}
