// Settings remembered in this browser (localStorage), and the current conversation id.
//
// A setting left empty is not sent, so the server's default applies. Ranges are the
// server's own (GET /api/limits, limits.js); until they are known a number is only
// checked for being a number, and the server checks every value again anyway.

import { limits } from "./limits.js";

const SETTINGS_KEY = "nanochat-lite.settings";
const CONVERSATION_KEY = "nanochat-lite.conversation";

/** The numeric settings (each a sampling field of the server's limits). */
export const NUMERIC = ["temperature", "top_p", "top_k", "repeat_penalty", "max_tokens", "seed"];

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
    if (typeof raw.system === "string") out.system = raw.system;
    for (const name of NUMERIC) {
      if (checkNumber(name, raw[name]) === null) out[name] = raw[name];
    }
  }
  return out;
}

export function saveSettings(settings) {
  write(SETTINGS_KEY, settings);
}

/** null if `value` is valid for setting `name`, else a message saying why not.
 * checkNumber("top_k", 2.5) -> "top_k must be a whole number" (once the limits are known). */
export function checkNumber(name, value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return `${name} must be a number`;
  const range = limits()?.sampling?.[name];
  if (!range) return null;
  if (range.integer && !Number.isInteger(value)) return `${name} must be a whole number`;
  if (value < range.min || value > range.max) return `${name} must be between ${range.min} and ${range.max}`;
  return null;
}

export function loadConversationId() {
  const id = read(CONVERSATION_KEY, null);
  return typeof id === "string" && id ? id : null;
}

export function saveConversationId(id) {
  write(CONVERSATION_KEY, id || null);
}
