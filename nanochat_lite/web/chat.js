// The chat session: which message goes out next, and what the server's frames mean
// for it. No DOM here; each turn reports to its `view` (see transcript.js TurnView).
//
// Messages wait in a queue and go out one at a time (the server runs one generation
// per socket). Each has a client id and waits in the outbox (outbox.js, kept in
// localStorage) until the server's "start" frame for it arrives, so a reload or a
// closed tab sends it again; the server de-duplicates on the id, so it counts once.
//
// Every answer has an id and numbered events: "start" is seq 0, each "token" the
// next, "done" (or a final "error") the last. Each seq is applied once and in order:
// one at or below the last applied is a repeat and is ignored; one past the next
// means events were missed, and they are asked for again ({type: "resume"}).
// When the socket drops:
//   - a turn whose answer had started is "reconnecting": the server goes on writing
//     it, and on reconnect the session asks for the events after the last one it
//     applied. The server sends them (then the live ones), or a "snapshot" (the text
//     so far, at seq S), or the stored "done" (`replayed: true`); or "answer_not_found"
//     (the server restarted, or the grace window passed): the turn is marked
//     interrupted and the session says "lost", so the page reloads the conversation
//     from the store. A server that gives no answer ids cannot resume: interrupted.
//   - a turn sent but not yet started goes back to the head of the queue and is sent
//     again on reconnect, with the same client id.
//
// A thread is `{id: string|null, key?: string}`: the conversation a turn belongs to.
// A new chat's thread gets its id from the server's "start" frame, before the next
// queued turn of that thread is sent; its key ties its turns together in the outbox.

import { Outbox, newId } from "./outbox.js";

const RETRY_LOADING_MS = 1000; // the server said "loading": the model is not ready yet

export class ChatSession extends EventTarget {
  /** `options()` returns the chat frame's extra fields (sampling, system) at send time. */
  constructor(socket, options, outbox = new Outbox()) {
    super();
    this.socket = socket;
    this.options = options;
    this.outbox = outbox;
    this.queue = [];
    this.current = null; // the turn on the wire
    this._retry = 0;
    this._lost = new Set(); // answer ids the server could not resume
    socket.addEventListener("frame", (ev) => this._onFrame(ev.detail));
    socket.addEventListener("state", (ev) => this._onState(ev.detail));
  }

  /** Queue `text` for `thread`; the view hears about every change. */
  send(thread, text, view) {
    if (!thread.key) thread.key = newId();
    const turn = newTurn(thread, text, view, newId());
    this.outbox.add({ client_id: turn.clientId, text, conversation_id: thread.id, thread_key: thread.key });
    this._enqueue(turn);
    return turn;
  }

  /** Queue the messages an earlier page left in the outbox (a reload, a closed tab),
   * oldest first, each with its own client id; `makeView(text)` builds their views.
   * Turns of one new chat share one thread object. Returns the turns. */
  restore(makeView) {
    const threads = new Map();
    const known = new Set(this.pending().map((t) => t.clientId));
    const turns = [];
    for (const e of this.outbox.entries()) {
      if (known.has(e.client_id)) continue;
      let thread = threads.get(e.thread_key);
      if (!thread) threads.set(e.thread_key, (thread = { id: e.conversation_id, key: e.thread_key }));
      thread.id = thread.id || e.conversation_id;
      const turn = newTurn(thread, e.text, makeView(e.text), e.client_id);
      turns.push(turn);
      this._enqueue(turn);
    }
    return turns;
  }

  /** Show the live answer `answerId` of `thread` (one this page did not ask for: it was
   * reloaded mid-answer) in `view`, from its start: next, before any queued message
   * (the server follows one answer per socket). Not an answer that could not be
   * resumed before. */
  follow(thread, answerId, view) {
    if (this._lost.has(answerId) || this.pending().some((t) => t.answerId === answerId)) return false;
    const turn = newTurn(thread, view.text, view, null);
    turn.started = true;
    turn.answerId = answerId;
    turn.follow = true;
    this.queue.unshift(turn);
    this._pump();
    return true;
  }

  /** Stop the answer being generated (its "done" frame then says "cancelled"). */
  stop() {
    const turn = this.current;
    if (!turn) return;
    // While reconnecting there is no socket to say it on: say it right after the resume.
    if (!this.socket.send({ type: "stop" })) turn.stopAfterResume = true;
  }

  get busy() {
    return this.current !== null;
  }

  /** Turns not finished yet (on the wire or queued), oldest first. */
  pending() {
    return (this.current ? [this.current] : []).concat(this.queue);
  }

  _enqueue(turn) {
    this.queue.push(turn);
    turn.view.queued(this.socket.state !== "open" ? "offline" : this.current ? "waiting" : "sending");
    this._pump();
  }

  _pump() {
    if (this.current || !this.queue.length || this.socket.state !== "open") return;
    const turn = this.queue[0];
    if (turn.follow) {
      if (!this.socket.send({ type: "resume", answer_id: turn.answerId, after: turn.seq })) return;
      this.queue.shift();
      this.current = turn;
      turn.resuming = true;
      this._changed();
      return;
    }
    const frame = { type: "chat", message: turn.text, ...this.options(turn.thread), client_id: turn.clientId };
    if (turn.thread.id) frame.conversation_id = turn.thread.id;
    if (!this.socket.send(frame)) return;
    this.queue.shift();
    this.current = turn;
    turn.view.sent();
    this._showQueued("waiting");
    this._changed();
  }

  _showQueued(why) {
    for (const t of this.queue) if (!t.follow) t.view.queued(why);
  }

  _finish() {
    this.current = null;
    this._changed();
    this._pump();
  }

  _resume(turn) {
    const sent = this.socket.send({ type: "resume", answer_id: turn.answerId, after: turn.seq });
    if (sent && turn.stopAfterResume) {
      turn.stopAfterResume = false;
      this.socket.send({ type: "stop" });
    }
  }

  _learnConversation(turn, id) {
    if (turn.thread.id || !id) return;
    turn.thread.id = id;
    this.outbox.setConversation(turn.thread.key, id);
    this.dispatchEvent(new CustomEvent("conversation", { detail: turn.thread }));
  }

  _onFrame(frame) {
    if (frame.document_id !== undefined) return; // a document's indexing (documents.js), not a turn's
    const turn = this.current;
    if (!turn) {
      if (frame.type === "error") {
        this.dispatchEvent(new CustomEvent("notice", { detail: `${frame.code}: ${frame.message}` }));
      }
      return;
    }
    // A frame of another answer than the one being shown: not for this turn.
    if (frame.answer_id && turn.answerId && frame.answer_id !== turn.answerId) return;
    if (frame.type === "start" && frame.client_id && turn.clientId && frame.client_id !== turn.clientId) return;
    if (typeof frame.seq === "number" && !frame.replayed) {
      if (frame.seq <= turn.seq) return; // already applied: a repeat after a resume
      if (frame.seq > turn.seq + 1 && frame.type !== "snapshot") {
        // Events were missed: ask for them once; the repeats that follow are ignored.
        if (turn.answerId && !turn.gapAsked) {
          turn.gapAsked = true;
          this._resume(turn);
        }
        return;
      }
      turn.gapAsked = false;
    }
    if (turn.resuming && frame.type !== "progress" && frame.type !== "error") {
      turn.resuming = false;
      turn.view.resumed();
    }
    switch (frame.type) {
      case "progress":
        if (!turn.answer) turn.view.progress();
        break;
      case "loading": // its model loads on demand (no seq: not part of the answer); about every second
        if (!turn.started) turn.view.modelLoading(frame.model, frame.elapsed_ms);
        break;
      case "start":
        turn.started = true;
        turn.answerId = frame.answer_id || null;
        if (turn.clientId) this.outbox.remove(turn.clientId);
        this._learnConversation(turn, frame.conversation_id);
        turn.view.started(frame);
        break;
      case "token":
        turn.answer += frame.text;
        turn.view.token(turn.answer);
        break;
      case "snapshot":
        turn.answer = frame.text;
        turn.view.token(turn.answer);
        break;
      case "done":
        if (!frame.replayed && turn.started && turn.answer !== frame.message) {
          // A bug in the seq bookkeeping (here or in the server): say so where it can be seen.
          console.warn("nanochat-lite: the streamed answer differs from the final message",
            JSON.stringify({ answer_id: turn.answerId, streamed: turn.answer, final: frame.message }));
        }
        turn.answer = frame.message;
        if (turn.clientId) this.outbox.remove(turn.clientId);
        this._learnConversation(turn, frame.conversation_id);
        turn.view.done(frame);
        this.dispatchEvent(new CustomEvent("answered", { detail: turn.thread }));
        this._finish();
        break;
      case "error":
        this._onError(turn, frame);
        break;
    }
    if (typeof frame.seq === "number" && this.current === turn) turn.seq = frame.seq;
  }

  _onError(turn, frame) {
    // An error without a seq in reply to a resume is about the resume, not the answer.
    if (turn.started && (frame.code === "answer_not_found" || (turn.resuming && typeof frame.seq !== "number"))) {
      // Gone from the server's buffers (restarted, or back too late), or the resume was
      // refused: what was written is in the store. The page reloads the conversation.
      turn.view.interrupted();
      this._lost.add(turn.answerId);
      this._finish();
      this.dispatchEvent(new CustomEvent("lost", { detail: turn.thread }));
      this.dispatchEvent(new CustomEvent("answered", { detail: turn.thread }));
      return;
    }
    if (!turn.started && (frame.code === "loading" || frame.code === "busy")) {
      // Not refused, just not now: send it again shortly.
      this.queue.unshift(turn);
      this.current = null;
      turn.view.queued("waiting");
      clearTimeout(this._retry);
      this._retry = setTimeout(() => this._pump(), RETRY_LOADING_MS);
      this._changed();
      return;
    }
    if (turn.clientId) this.outbox.remove(turn.clientId); // refused for good: sending it again would not help
    turn.view.failed(frame.code, frame.message);
    if (turn.started) this.dispatchEvent(new CustomEvent("answered", { detail: turn.thread }));
    this._finish();
  }

  _onState(state) {
    const turn = this.current;
    if (state === "open") {
      if (turn && turn.resuming) this._resume(turn);
      this._showQueued(this.current ? "waiting" : "sending");
      this._pump();
      return;
    }
    if (turn) {
      if (turn.started && turn.answerId) {
        // The answer goes on on the server for a while: resume it on reconnect.
        if (!turn.resuming) turn.view.reconnecting();
        turn.resuming = true;
        turn.gapAsked = false;
      } else {
        this.current = null;
        if (turn.started) turn.view.interrupted();
        else this.queue.unshift(turn);
        this._changed();
      }
    }
    this._showQueued("offline");
  }

  _changed() {
    this.dispatchEvent(new CustomEvent("busy", { detail: this.busy }));
  }
}

/** A turn: one message and its answer, as the session tracks it. Every field is
 * declared here, and the object is sealed: a field set anywhere else without being
 * declared here throws (ES modules are strict) instead of quietly appearing. */
function newTurn(thread, text, view, clientId) {
  return Object.seal({
    thread, // the conversation it belongs to: {id: string|null, key?: string}, shared by its turns
    text, // the message as the user wrote it
    view, // where it reports (transcript.js TurnView)
    clientId, // its outbox id, sent as client_id (null: a followed answer, not our message)
    started: false, // the server's "start" frame came: the message is stored, the answer runs
    answer: "", // the answer's text so far
    answerId: null, // the server's id of the answer, for resuming it (null: not known, or no resume)
    seq: -1, // the last event of the answer applied (-1: none yet)
    resuming: false, // a resume was asked for (or is due on reconnect) and no event has come since
    follow: false, // an answer this page did not ask for (reloaded mid-answer): sent as a resume from seq -1
    gapAsked: false, // events were missed and asked for again; the repeats until they arrive are ignored
    stopAfterResume: false, // stop was pressed while the socket was down: send it right after the resume
  });
}
