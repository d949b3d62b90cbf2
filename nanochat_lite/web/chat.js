// The chat session: which message goes out next, and what the server's frames mean
// for it. No DOM here; each turn reports to its `view` (see transcript.js TurnView).
//
// Messages wait in a queue and go out one at a time (the server runs one generation
// per socket). A message typed while the socket is down waits for it to come back.
// When the socket drops:
//   - a turn whose answer had started is "interrupted" (its partial text is kept and
//     marked, never silently passed off as complete);
//   - a turn sent but not yet started goes back to the head of the queue and is sent
//     again on reconnect. If the server had stored it just before dying, the
//     conversation shows it twice; we prefer that to losing it.
//
// A thread is `{id: string|null}`: the conversation a turn belongs to. A new chat's
// thread gets its id from the server's "start" frame, before the next queued turn
// of that thread is sent.

const RETRY_LOADING_MS = 1000; // the server said "loading": the model is not ready yet

export class ChatSession extends EventTarget {
  /** `options()` returns the chat frame's extra fields (sampling, system) at send time. */
  constructor(socket, options) {
    super();
    this.socket = socket;
    this.options = options;
    this.queue = [];
    this.current = null; // the turn on the wire
    this._retry = 0;
    socket.addEventListener("frame", (ev) => this._onFrame(ev.detail));
    socket.addEventListener("state", (ev) => this._onState(ev.detail));
  }

  /** Queue `text` for `thread`; the view hears about every change. */
  send(thread, text, view) {
    const turn = { thread, text, view, started: false, answer: "" };
    this.queue.push(turn);
    view.queued(this.socket.state !== "open" ? "offline" : this.current ? "waiting" : "sending");
    this._pump();
    return turn;
  }

  /** Stop the answer being generated (its "done" frame then says "cancelled"). */
  stop() {
    if (this.current) this.socket.send({ type: "stop" });
  }

  get busy() {
    return this.current !== null;
  }

  /** Turns not finished yet (on the wire or queued), oldest first. */
  pending() {
    return (this.current ? [this.current] : []).concat(this.queue);
  }

  _pump() {
    if (this.current || !this.queue.length || this.socket.state !== "open") return;
    const turn = this.queue[0];
    const frame = { type: "chat", message: turn.text, ...this.options(turn.thread) };
    if (turn.thread.id) frame.conversation_id = turn.thread.id;
    if (!this.socket.send(frame)) return;
    this.queue.shift();
    this.current = turn;
    turn.view.sent();
    for (const t of this.queue) t.view.queued("waiting");
    this._changed();
  }

  _finish() {
    this.current = null;
    this._changed();
    this._pump();
  }

  _onFrame(frame) {
    const turn = this.current;
    if (frame.type === "error" && !turn) {
      this.dispatchEvent(new CustomEvent("notice", { detail: `${frame.code}: ${frame.message}` }));
      return;
    }
    if (!turn) return;
    switch (frame.type) {
      case "start":
        turn.started = true;
        if (!turn.thread.id) {
          turn.thread.id = frame.conversation_id;
          this.dispatchEvent(new CustomEvent("conversation", { detail: turn.thread }));
        }
        turn.view.started(frame);
        break;
      case "token":
        turn.answer += frame.text;
        turn.view.token(turn.answer);
        break;
      case "done":
        turn.view.done(frame);
        this.dispatchEvent(new CustomEvent("answered", { detail: turn.thread }));
        this._finish();
        break;
      case "error":
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
        turn.view.failed(frame.code, frame.message);
        if (turn.started) this.dispatchEvent(new CustomEvent("answered", { detail: turn.thread }));
        this._finish();
        break;
    }
  }

  _onState(state) {
    if (state === "open") {
      for (const t of this.queue) t.view.queued(this.current ? "waiting" : "sending");
      this._pump();
      return;
    }
    const turn = this.current;
    if (turn) {
      this.current = null;
      if (turn.started) {
        turn.view.interrupted();
      } else {
        this.queue.unshift(turn);
      }
      this._changed();
    }
    for (const t of this.queue) t.view.queued("offline");
  }

  _changed() {
    this.dispatchEvent(new CustomEvent("busy", { detail: this.busy }));
  }
}
