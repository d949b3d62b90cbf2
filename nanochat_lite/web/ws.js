// A WebSocket that reconnects by itself.
//
// It knows JSON frames and connection state, nothing about chats: the chat session
// (chat.js) decides what to send and when. States: "connecting" -> "open" ->
// "closed" (waiting `retryInMs` before the next attempt) -> "connecting" ...
// Waits between attempts grow 1 s, 2 s, 4 s, 8 s ... each scaled by a random factor
// in [0.8, 1.2) so many pages that lost the same server do not all come back in the
// same millisecond, and never longer than 30 s. A successful open resets the wait.
//
// A half-open connection (the far side vanished without a FIN) is caught by a
// ping every PING_EVERY_MS: no frame at all within PONG_TIMEOUT_MS closes it.

export const BACKOFF_BASE_MS = 1000;
export const BACKOFF_MAX_MS = 30000;
const JITTER = 0.2;
const PING_EVERY_MS = 20000;
const PONG_TIMEOUT_MS = 10000;

/** The wait in ms before reconnect attempt `attempt` (0-based).
 * backoffDelay(3, () => 0.5) -> 8000; backoffDelay(0, () => 0) -> 800; never above 30000. */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(attempt, 16));
  return Math.min(BACKOFF_MAX_MS, Math.round(base * (1 - JITTER + 2 * JITTER * random())));
}

export class ReconnectingSocket extends EventTarget {
  /** protocols(): the subprotocols to offer on each attempt (auth.js puts the key there). */
  constructor(url, protocols = () => []) {
    super();
    this.url = url;
    this.protocols = protocols;
    this.state = "closed";
    this.retryAt = 0; // Date.now() of the next attempt while closed
    this._attempt = 0;
    this._ws = null;
    this._timer = 0;
    this._pingTimer = 0;
    this._pongTimer = 0;
  }

  /** Connect now (also cancels a pending wait). */
  connect() {
    clearTimeout(this._timer);
    if (this._ws) return;
    this._setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url, this.protocols());
    } catch (err) {
      this._scheduleRetry();
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      this._attempt = 0;
      this._setState("open");
      this._startPings();
    };
    ws.onmessage = (ev) => {
      clearTimeout(this._pongTimer);
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return; // the server only sends JSON; ignore anything else
      }
      if (frame && frame.type !== "pong") this.dispatchEvent(new CustomEvent("frame", { detail: frame }));
    };
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      this._stopPings();
      this._scheduleRetry();
    };
    ws.onerror = () => {}; // a close event always follows
  }

  /** Send one JSON frame; false (nothing sent) unless the socket is open. */
  send(frame) {
    if (this.state !== "open" || !this._ws || this._ws.readyState !== WebSocket.OPEN) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  /** Give up on the current connection now and reconnect after the usual wait. The
   * close handshake of a dead connection can take minutes, so we do not wait for it. */
  drop() {
    const ws = this._ws;
    if (!ws) return;
    this._ws = null;
    ws.onclose = ws.onmessage = null;
    ws.close();
    this._stopPings();
    this._scheduleRetry();
  }

  _scheduleRetry() {
    const wait = backoffDelay(this._attempt++);
    this.retryAt = Date.now() + wait;
    this._setState("closed");
    this._timer = setTimeout(() => this.connect(), wait);
  }

  _startPings() {
    this._stopPings();
    this._pingTimer = setInterval(() => {
      if (!this.send({ type: "ping" })) return;
      clearTimeout(this._pongTimer);
      this._pongTimer = setTimeout(() => this.drop(), PONG_TIMEOUT_MS);
    }, PING_EVERY_MS);
  }

  _stopPings() {
    clearInterval(this._pingTimer);
    clearTimeout(this._pongTimer);
  }

  _setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }
}
