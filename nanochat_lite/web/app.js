// The page's wiring: connection state, tabs, composer, which conversation is open.
//
// The modules under it each own one thing: ws.js (reconnecting socket), chat.js
// (the message queue and frames), transcript.js (messages on screen), markdown.js,
// sidebar.js, settings.js + store.js, dashboard.js + charts.js, tokens.js (the
// tokenizer view), api.js (REST), auth.js (the API key, when the server wants one),
// limits.js (the server's limits, which the page checks too), dom.js (el()),
// documents.js (uploads, the documents panel and its collection field), docswitch.js (the
// per-conversation "use my documents" switch and its collection), citations.js,
// models.js (the model picker, when the server serves several).
// The open conversation lives in the URL hash (#c=<id>; #c=<id>&owner=<name> for another
// key's, which an admin key reads read-only) and in localStorage, so a reload comes back to it.
// With API keys, the top bar shows which key this page uses.

import { api } from "./api.js";
import { authorizeDownloads, installKeyForm, onKeyChange, wsProtocols } from "./auth.js";
import { ChatSession } from "./chat.js";
import { installCitationDialog } from "./citations.js";
import { Dashboard } from "./dashboard.js";
import { DocumentsPanel, Uploads, acceptDrops } from "./documents.js";
import { DocumentsSwitch } from "./docswitch.js";
import { limits, loadLimits, withLimits } from "./limits.js";
import { ModelPicker } from "./models.js";
import { SettingsPanel } from "./settings.js";
import { Sidebar } from "./sidebar.js";
import { loadConversationId, saveConversationId } from "./store.js";
import { TokenView } from "./tokens.js";
import { Transcript } from "./transcript.js";
import { ReconnectingSocket } from "./ws.js";

const $ = (sel) => document.querySelector(sel);

// -- connection -----------------------------------------------------------------
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
installKeyForm($("#key-dialog"));
authorizeDownloads(document);
const socket = new ReconnectingSocket(wsUrl, wsProtocols);
// A new key: try the socket now rather than after its backoff wait.
onKeyChange(() => socket.state !== "open" && socket.connect());
const settings = new SettingsPanel($("#settings-form"), $("#settings-error"));
const docsPanel = new DocumentsPanel($("#panel-documents"));
// Turned on, the switch takes the collection the panel's field names then.
const docsSwitch = new DocumentsSwitch($("#use-docs"), $("#use-docs-collection"), () => docsPanel.collection());
docsPanel.addEventListener("collection", () => docsSwitch.showName());
const picker = new ModelPicker($("#model-picker"), $("#model-box"), $("#model-name"));
const session = new ChatSession(socket, (thread) => ({
  ...settings.chatFields(!thread.id), ...docsSwitch.fields(thread), ...picker.fields(thread) }));
const transcript = new Transcript($("#transcript"), $("#scroller"), (text) => send(text));

let countdown = 0;
function showConnection() {
  const state = socket.state;
  const box = $("#conn");
  clearInterval(countdown);
  box.dataset.state = state === "open" ? "connected" : state === "connecting" ? "connecting" : "disconnected";
  $("#conn-retry").hidden = state !== "closed";
  const text = $("#conn-text");
  if (state === "open") text.textContent = "connected";
  else if (state === "connecting") text.textContent = "connecting…";
  else {
    const tick = () => {
      const s = Math.max(0, Math.ceil((socket.retryAt - Date.now()) / 1000));
      text.textContent = `disconnected · retrying in ${s} s`;
    };
    tick();
    countdown = setInterval(tick, 1000);
  }
}
socket.addEventListener("state", showConnection);
socket.addEventListener("state", () => {
  if (socket.state !== "open") return;
  // Back after an outage (or a server restart): the list may have changed, and a
  // conversation that could not load then can load now.
  sidebar.refresh();
  loadLimits(); // if they could not be read before
  picker.refresh();
  if (failedLoad && failedLoad === thread.id) openConversation(failedLoad);
});
$("#conn-retry").addEventListener("click", () => socket.connect());
window.addEventListener("online", () => socket.state === "closed" && socket.connect());

function showModel(name) {
  if (name) $("#model-name").textContent = name;
}

// -- the open conversation ------------------------------------------------------
let thread = { id: null };
let loadSeq = 0;
let failedLoad = null; // a conversation id whose messages could not be fetched
let readOnly = null; // the owner of the open conversation when it is another key's (an admin reading)

function setHash(id, owner) {
  let hash = id ? `#c=${encodeURIComponent(id)}` : "";
  if (id && owner) hash += `&owner=${encodeURIComponent(owner)}`;
  if (location.hash !== hash) history.replaceState(null, "", location.pathname + location.search + hash);
  if (!owner) saveConversationId(id); // a reload without the hash comes back to one's own only
}

function hashId() {
  const m = /^#c=([^&]+)(?:&owner=[^&]+)?$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function hashOwner() {
  const m = /^#c=[^&]+&owner=([^&]+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

function showWho(viewer) {
  const who = $("#who");
  who.hidden = !viewer.keys;
  who.textContent = viewer.keys ? `🔑 ${viewer.owner}${viewer.admin ? " · admin" : ""}` : "";
}

/** Another key's conversation is read, not continued: the composer says so. */
function setReadOnly(owner) {
  readOnly = owner || null;
  const input = $("#composer-input");
  input.disabled = Boolean(readOnly);
  $("#send").disabled = Boolean(readOnly);
  input.placeholder = readOnly ? `${readOnly}'s conversation: read only` : "Message";
}

function showHeader(conv) {
  const title = conv ? conv.title || "Untitled" : "New chat";
  $("#conv-title").textContent = title;
  document.title = `${title} · Nanochat-Lite`;
  $("#conv-export").hidden = !conv;
  if (conv) {
    const owner = sidebar.foreign(conv.owner) ? conv.owner : "";
    $("#export-md").href = api.exportUrl(conv.id, "markdown", owner);
    $("#export-json").href = api.exportUrl(conv.id, "json", owner);
  }
  const sys = $("#conv-system");
  sys.hidden = !(conv && conv.system);
  sys.textContent = conv && conv.system ? `System prompt: ${conv.system}` : "";
}

function showEmptyHint() {
  $("#empty-hint").hidden = !transcript.empty;
}

function newChat() {
  loadSeq++;
  thread = { id: null };
  docsSwitch.show(thread);
  picker.show(thread);
  setReadOnly(null);
  transcript.clear();
  setHash(null);
  showHeader(null);
  showEmptyHint();
  sidebar.highlight();
  closeSidebar();
  $("#composer-input").focus();
}

async function openConversation(id, messageId, owner) {
  const seq = ++loadSeq;
  const pending = session.pending().filter((t) => t.thread.id === id);
  thread = pending.length ? pending[0].thread : { id };
  docsSwitch.show(thread);
  picker.show(thread);
  setHash(id, owner);
  sidebar.highlight();
  closeSidebar();
  transcript.clear();
  $("#conv-title").textContent = "Loading…";
  let data;
  failedLoad = null;
  try {
    data = await api.conversation(id, owner);
  } catch (err) {
    if (seq !== loadSeq) return;
    if (err.status === 404) {
      note("That conversation no longer exists; starting a new chat.");
      newChat();
    } else {
      failedLoad = id;
      $("#conv-title").textContent = "Could not load this conversation";
      note(`${err.message}; it loads again when the server is back.`);
    }
    return;
  }
  if (seq !== loadSeq) return;
  // Read-only when it is another key's (before the list has said who we are: when it was
  // asked for with an owner).
  const foreign = sidebar.viewer ? sidebar.foreign(data.conversation.owner) : Boolean(owner);
  setReadOnly(foreign ? data.conversation.owner : null);
  let messages = data.messages;
  // A turn still pending here (on the wire, or sent before a reload) may be stored
  // already, its answer too: its own view shows it, not the history.
  const mine = new Set(pending.map((t) => t.clientId).filter(Boolean));
  const answerIds = new Set(pending.map((t) => t.answerId).filter(Boolean));
  for (const m of messages) if (m.role === "user" && m.answer_id && mine.has(m.client_id)) answerIds.add(m.answer_id);
  messages = messages.filter((m) => !(m.answer_id && answerIds.has(m.answer_id))
    && !(m.role === "user" && m.client_id && mine.has(m.client_id)));
  const live = session.current; // a server without client ids: its question is the last message
  if (live && live.thread === thread && messages.length && messages[messages.length - 1].role === "user"
      && messages[messages.length - 1].content === live.text && !messages[messages.length - 1].client_id) {
    messages = messages.slice(0, -1);
  }
  picker.learn(thread, data.messages);
  picker.show(thread);
  transcript.showHistory(messages);
  for (const t of pending) transcript.attach(t.view);
  // An answer still being written (this page was reloaded, or another tab asked):
  // follow it live from its start.
  const last = messages[messages.length - 1];
  if (last && last.role === "assistant" && last.status === "streaming" && last.answer_id) {
    const view = transcript.follow(last.id);
    if (view) session.follow(thread, last.answer_id, view);
  }
  showHeader(data.conversation);
  showEmptyHint();
  if (messageId) {
    const target = document.getElementById("m-" + messageId);
    if (target) {
      target.scrollIntoView({ block: "center" });
      target.classList.add("flash");
    }
  }
}

// -- sending ----------------------------------------------------------------------
function send(text) {
  if (!text.trim()) return false;
  if (readOnly) {
    note(`This is ${readOnly}'s conversation: an admin key may read it, not add to it. Start a new chat to ask.`);
    return false;
  }
  const max = limits()?.message_chars;
  if (max && text.length > max) {
    note(`Messages are limited to ${max.toLocaleString("en-US")} characters.`);
    return false;
  }
  const view = transcript.addTurn(text);
  session.send(thread, text, view);
  picker.watch(view, thread);
  showEmptyHint();
  return true;
}

let noteTimer = 0;
function note(text) {
  const box = $("#composer-note");
  box.textContent = text;
  clearTimeout(noteTimer);
  noteTimer = setTimeout(() => (box.textContent = ""), 8000);
}

session.addEventListener("notice", (ev) => note(ev.detail));
session.addEventListener("busy", (ev) => {
  $("#stop").hidden = !ev.detail;
});
session.addEventListener("conversation", (ev) => {
  docsSwitch.learned(ev.detail);
  if (ev.detail === thread) setHash(thread.id);
  sidebar.refresh().then(() => syncTitle());
});
session.addEventListener("answered", () => {
  sidebar.refresh().then(() => syncTitle());
  picker.refresh(); // the model that answered is loaded now (and another may have been unloaded)
});
// An answer that could not be resumed: the store has what was written of it.
session.addEventListener("lost", (ev) => {
  if (ev.detail === thread && thread.id) openConversation(thread.id);
});

function syncTitle() {
  const conv = sidebar.items.find((c) => c.id === thread.id);
  if (conv && conv.id === thread.id) showHeader(conv);
}

const input = $("#composer-input");
withLimits((lim) => (input.maxLength = lim.message_chars));
function autosize() {
  input.style.height = "auto"; // CSSOM writes are allowed by the CSP; style="" attributes are not
  input.style.height = Math.min(input.scrollHeight + 2, 220) + "px";
}
input.addEventListener("input", autosize);
input.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
    ev.preventDefault();
    submit();
  } else if (ev.key === "Escape" && session.busy) {
    session.stop();
  }
});
$("#composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  submit();
});
function submit() {
  if (send(input.value)) {
    input.value = "";
    autosize();
  }
}
$("#stop").addEventListener("click", () => session.stop());
$(".skip-link").addEventListener("click", (ev) => {
  ev.preventDefault(); // the URL hash names the conversation; keep it
  input.focus();
});
$("#new-chat").addEventListener("click", newChat);

// -- sidebar, settings, tabs --------------------------------------------------------
const sidebar = new Sidebar($("#sidebar"), {
  open: (id, messageId, owner) => openConversation(id, messageId, owner),
  viewer: (v) => showWho(v),
  renamed: (id, title) => {
    if (id === thread.id) showHeader(sidebar.items.find((c) => c.id === id) || { id, title });
  },
  deleted: (id) => {
    if (id === thread.id) newChat();
  },
  currentId: () => thread.id,
});

function closeSidebar() {
  $("#sidebar").classList.remove("open");
  $("#sidebar-backdrop").hidden = true;
  $("#sidebar-toggle").setAttribute("aria-expanded", "false");
}
$("#sidebar-toggle").addEventListener("click", () => {
  const open = !$("#sidebar").classList.contains("open");
  $("#sidebar").classList.toggle("open", open);
  $("#sidebar-backdrop").hidden = !open;
  $("#sidebar-toggle").setAttribute("aria-expanded", String(open));
});
$("#sidebar-backdrop").addEventListener("click", closeSidebar);

function toggleSettings(open) {
  $("#settings").hidden = !open;
  $("#settings-toggle").setAttribute("aria-expanded", String(open));
  if (open) $("#set-system").focus();
  else $("#settings-toggle").focus();
}
$("#settings-toggle").addEventListener("click", () => toggleSettings($("#settings").hidden));
$("#settings-close").addEventListener("click", () => toggleSettings(false));
$("#settings-reset").addEventListener("click", () => settings.reset());
document.addEventListener("keydown", (ev) => {
  if (ev.key !== "Escape" || ev.defaultPrevented) return;
  if (!$("#settings").hidden && $("#settings").contains(document.activeElement)) toggleSettings(false);
  else if ($("#sidebar").classList.contains("open")) {
    closeSidebar();
    $("#sidebar-toggle").focus();
  }
});

// -- documents: the paperclip, drops onto the chat or the panel, citation chips --------------
// Both lists of uploads put the files in the panel's collection; each shows its own rows.
const uploads = new Uploads($("#uploads"), socket, docsPanel);
const panelUploads = new Uploads($("#docs-uploads"), socket, docsPanel);
for (const u of [uploads, panelUploads]) u.addEventListener("changed", () => docsPanel.refresh());
function pickFiles(button, input, into) {
  button.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // the same file again is a new upload
    into.add(files);
  });
}
pickFiles($("#attach"), $("#doc-file"), uploads);
pickFiles($("#docs-upload"), $("#docs-file"), panelUploads);
acceptDrops($("#panel-chat"), (files) => uploads.add(files));
acceptDrops($("#panel-documents"), (files) => panelUploads.add(files));
installCitationDialog($("#cite-dialog"));

const dashboard = new Dashboard($("#panel-dashboard"), (stats) => showModel(stats.model));
new TokenView($("#panel-tokens"));
const tabs = [...document.querySelectorAll("[role=tab]")];
function showTab(name) {
  for (const tab of tabs) {
    const on = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    document.querySelector(`[data-panel=${tab.dataset.tab}]`).hidden = !on;
  }
  if (name === "dashboard") dashboard.redraw();
  if (name === "documents") docsPanel.refresh();
}
for (const tab of tabs) {
  tab.addEventListener("click", () => showTab(tab.dataset.tab));
  tab.addEventListener("keydown", (ev) => {
    const k = tabs.indexOf(tab);
    const next = ev.key === "ArrowRight" ? tabs[(k + 1) % tabs.length]
      : ev.key === "ArrowLeft" ? tabs[(k - 1 + tabs.length) % tabs.length] : null;
    if (next) {
      next.focus();
      showTab(next.dataset.tab);
    }
  });
}

// -- start --------------------------------------------------------------------------
window.addEventListener("hashchange", () => {
  if (location.hash && !location.hash.startsWith("#c=")) return; // not ours
  const id = hashId();
  if (id && id !== thread.id) openConversation(id, undefined, hashOwner());
  else if (!id && thread.id) newChat();
});

showConnection();
autosize();
loadLimits();
picker.refresh();
socket.connect();
dashboard.start();
api.health().then((h) => showModel(h.model), () => {});
sidebar.refresh();
// Messages an earlier page could not send (a reload, a closed tab) go out once the
// socket is open; a new chat among them is the one shown if no conversation was open.
const restored = session.restore((text) => transcript.newView(text));
const startId = hashId() || loadConversationId();
const newThread = restored.map((t) => t.thread).find((t) => !t.id);
if (startId) openConversation(startId, undefined, hashOwner());
else if (newThread) {
  newChat();
  thread = newThread;
  docsSwitch.show(thread);
  picker.show(thread);
  for (const t of restored) if (t.thread === newThread) transcript.attach(t.view);
  showEmptyHint();
} else newChat();
