// The settings panel: a form bound to the stored settings (store.js), saved on
// every valid edit. An invalid number is reported and not saved. The fields' ranges
// and their hints ("0–2, 0 = off") are the server's (limits.js).

import { withLimits } from "./limits.js";
import { NUMERIC, checkNumber, loadSettings, saveSettings } from "./store.js";

export class SettingsPanel {
  constructor(form, errorBox) {
    this.form = form;
    this.errorBox = errorBox;
    this.values = loadSettings();
    this._fill();
    form.addEventListener("input", (ev) => this._onInput(ev.target));
    // form-action 'none' in the page's CSP: a real submit would be refused anyway.
    form.addEventListener("submit", (ev) => ev.preventDefault());
    this._showRanges(null);
    withLimits((lim) => this._applyLimits(lim));
  }

  /** Extra fields for a chat frame. The system prompt only starts new chats. */
  chatFields(isNewChat) {
    const out = {};
    for (const name of NUMERIC) if (this.values[name] !== undefined) out[name] = this.values[name];
    if (isNewChat && this.values.system && this.values.system.trim()) out.system = this.values.system;
    return out;
  }

  reset() {
    this.values = {};
    saveSettings(this.values);
    this._fill();
    this.errorBox.textContent = "";
  }

  /** The server's limits are known: bound the fields, and forget a stored value that
   * they refuse (it was saved before they were known, or the server's changed). */
  _applyLimits(lim) {
    this.form.elements.system.maxLength = lim.system_chars;
    for (const name of NUMERIC) {
      const range = lim.sampling[name];
      if (!range) continue;
      this.form.elements[name].min = String(range.min);
      this.form.elements[name].max = String(range.max);
      if (this.values[name] !== undefined && checkNumber(name, this.values[name]) !== null) delete this.values[name];
    }
    this._showRanges(lim);
    saveSettings(this.values);
    this._fill();
  }

  _showRanges(lim) {
    for (const hint of this.form.querySelectorAll("[data-range]")) {
      const range = lim && lim.sampling[hint.dataset.range];
      const parts = [range ? `${range.min}–${range.max}` : "", hint.dataset.note || ""];
      hint.textContent = parts.filter(Boolean).join(", ");
    }
  }

  _fill() {
    for (const field of this.form.elements) {
      if (!field.name) continue;
      const v = this.values[field.name];
      field.value = v === undefined ? "" : String(v);
      field.removeAttribute("aria-invalid");
    }
  }

  _onInput(field) {
    if (!field.name) return;
    const errors = [];
    if (field.name === "system") {
      if (field.value) this.values.system = field.value;
      else delete this.values.system;
    } else if (NUMERIC.includes(field.name)) {
      const raw = field.value.trim();
      if (raw === "") {
        delete this.values[field.name];
        field.removeAttribute("aria-invalid");
      } else {
        const problem = checkNumber(field.name, Number(raw));
        if (problem) {
          field.setAttribute("aria-invalid", "true");
          errors.push(`${problem}; not saved.`);
        } else {
          field.removeAttribute("aria-invalid");
          this.values[field.name] = Number(raw);
        }
      }
    }
    for (const f of this.form.querySelectorAll("[aria-invalid=true]")) {
      if (f !== field) errors.push(`${f.name} is not valid; not saved.`);
    }
    this.errorBox.textContent = errors.join(" ");
    saveSettings(this.values);
  }
}
