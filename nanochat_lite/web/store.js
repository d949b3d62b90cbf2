// Settings remembered in this browser (localStorage), and the current conversation id.
//
// A setting left empty is not sent, so the server's default applies. Ranges mirror
// the server's limits (nanochat_lite/server/limits.py); the server checks them again.

const SETTINGS_KEY = "nanochat-lite.settings";
const CONVERSATION_KEY = "nanochat-lite.conversation";

/** name -> [min, max, integer?] for the numeric settings. */
export const NUMERIC = {
  temperature: [0, 2, false],
  top_p: [0, 1, false],
  top_k: [0, 200, true],
  repeat_penalty: [0, 3, false],
  max_tokens: [1, 4096, true],
  seed: [0, 2 ** 31 - 1, true],
};
export const MAX_SYSTEM_CHARS = 8000;

function read(key, fallback) {
  try {
    const raw = localStorage.getItem(key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback; // storage disabled or a corrupt value: start from defaults
  }
}

function write(key, value) {
  try {
    if (value === null) localStorage.removeItem(key);
    else localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Private mode or a full quota: the page still works, it just forgets.
  }
}

/** The stored settings, each either a valid value or absent. */
export function loadSettings() {
  const raw = read(SETTINGS_KEY, {});
  const out = {};
  if (raw && typeof raw === "object") {
    if (typeof raw.system === "string") out.system = raw.system.slice(0, MAX_SYSTEM_CHARS);
    for (const name of Object.keys(NUMERIC)) {
      if (checkNumber(name, raw[name]) === null) out[name] = raw[name];
    }
  }
  return out;
}

export function saveSettings(settings) {
  write(SETTINGS_KEY, settings);
}

/** null if `value` is valid for setting `name`, else a message saying why not. */
export function checkNumber(name, value) {
  const [lo, hi, integer] = NUMERIC[name];
  if (typeof value !== "number" || !Number.isFinite(value)) return `${name} must be a number`;
  if (integer && !Number.isInteger(value)) return `${name} must be a whole number`;
  if (value < lo || value > hi) return `${name} must be between ${lo} and ${hi}`;
  return null;
}

export function loadConversationId() {
  const id = read(CONVERSATION_KEY, null);
  return typeof id === "string" && id ? id : null;
}

export function saveConversationId(id) {
  write(CONVERSATION_KEY, id || null);
}
