// The limits the server checks, read from `GET /api/limits` so that the page checks
// the same numbers (hand-copied ones drift: the search box once stopped at 200
// characters while the server took 500).
//
// Until they arrive, or if the server cannot be reached, the page checks nothing of
// its own; the server still refuses what breaks a limit, and says why.

import { api } from "./api.js";

let current = null;
let loading = null;
const waiting = [];

/** The limits once known, else null: `{message_chars, system_chars, search_chars,
 * title_chars, page_size, sampling: {name: {min, max, integer}}, ...}`. */
export function limits() {
  return current;
}

/** Call `apply(limits)` once they are known (at once if they are already). */
export function withLimits(apply) {
  if (current) apply(current);
  else waiting.push(apply);
}

/** Fetch the limits unless known or on the way; a failure is retried on the next call
 * (app.js calls this again whenever the connection comes back). */
export function loadLimits() {
  if (current || loading) return;
  loading = api.limits().then(
    (data) => {
      current = data;
      for (const apply of waiting.splice(0)) apply(current);
    },
    () => {},
  ).finally(() => (loading = null));
}
