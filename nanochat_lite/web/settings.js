// The settings panel: a form bound to the stored settings (store.js), saved on
// every valid edit. An invalid number is reported and not saved.

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
  }

  /** Extra fields for a chat frame. The system prompt only starts new chats. */
  chatFields(isNewChat) {
    const out = {};
    for (const name of Object.keys(NUMERIC)) if (this.values[name] !== undefined) out[name] = this.values[name];
    if (isNewChat && this.values.system && this.values.system.trim()) out.system = this.values.system;
    return out;
  }

  reset() {
    this.values = {};
    saveSettings(this.values);
    this._fill();
    this.errorBox.textContent = "";
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
    } else if (field.name in NUMERIC) {
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
