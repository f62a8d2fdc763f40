// inferd's chat page. Everything goes through the server's public API (api.js): the models
// from /v1/models, answers streamed from /v1/chat/completions, conversations kept by the
// server's session store (session_id + session_history) and listed, renamed and deleted
// through /v1/conversations, all scoped to the API key given in Settings.
import { Api, ApiError } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const SETTINGS = "inferd.settings"; // localStorage: model, system prompt, sampling, theme
const KEY = "inferd.key"; // sessionStorage: the API key, for this tab only

const ui = {
  newChat: $("new-chat"),
  list: $("conversations"),
  listNote: $("conversations-note"),
  model: $("model"),
  settingsToggle: $("settings-toggle"),
  settings: $("settings"),
  theme: $("theme-toggle"),
  key: $("api-key"),
  system: $("system"),
  temperature: $("temperature"),
  topP: $("top-p"),
  maxTokens: $("max-tokens"),
  notice: $("notice"),
  log: $("log"),
  emptyNote: $("log").querySelector(".empty").cloneNode(true), // what an empty chat shows
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
};

const state = {
  session: null, // the open conversation's session id (null: a new chat, not yet sent)
  history: [], // its messages as the page shows them: {role, content}
  controller: null, // the AbortController of the answer being streamed
  stored: true, // whether the server keeps conversations (false: it said 503)
  settings: readSettings(),
};

const api = new Api(() => sessionStorage.getItem(KEY) || "");

// ---- settings, theme ----------------------------------------------------------------------

function readSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS) || "{}") || {};
  } catch {
    return {};
  }
}

function saveSettings() {
  const s = state.settings;
  s.system = ui.system.value;
  s.temperature = ui.temperature.value;
  s.top_p = ui.topP.value;
  s.max_tokens = ui.maxTokens.value;
  s.model = ui.model.value || s.model;
  localStorage.setItem(SETTINGS, JSON.stringify(s));
}

function showSettings(open) {
  ui.settings.hidden = !open;
  ui.settingsToggle.setAttribute("aria-expanded", String(open));
}

const darkQuery = window.matchMedia("(prefers-color-scheme: dark)");

function applyTheme() {
  const chosen = state.settings.theme; // "light", "dark" or unset: the system's
  if (chosen) document.documentElement.dataset.theme = chosen;
  else delete document.documentElement.dataset.theme;
  const dark = chosen ? chosen === "dark" : darkQuery.matches;
  ui.theme.setAttribute("aria-pressed", String(dark));
  ui.theme.textContent = dark ? "Light theme" : "Dark theme";
}

// ---- notices ------------------------------------------------------------------------------

function notify(message) {
  ui.notice.textContent = message;
  ui.notice.hidden = !message;
}

/** Say what went wrong; a 401 opens Settings on the API key field. */
function report(err) {
  notify(err.message);
  if (err instanceof ApiError && err.status === 401) {
    showSettings(true);
    ui.key.focus();
  }
}

// ---- models and the conversation list -----------------------------------------------------

async function loadModels() {
  const { data } = await api.models();
  const wanted = ui.model.value || state.settings.model;
  ui.model.replaceChildren(
    ...data.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.id;
      return option;
    }),
  );
  if (data.some((m) => m.id === wanted)) ui.model.value = wanted;
}

async function loadConversations() {
  let data;
  try {
    ({ data } = await api.conversations());
  } catch (err) {
    if (err instanceof ApiError && err.status === 503) {
      state.stored = false;
      ui.listNote.textContent = "This server keeps no conversations: a chat lasts until you leave the page.";
      ui.listNote.hidden = false;
      ui.list.replaceChildren();
      return;
    }
    throw err;
  }
  state.stored = true;
  ui.listNote.hidden = data.length > 0;
  ui.listNote.textContent = "No conversations yet.";
  ui.list.replaceChildren(...data.map(conversationItem));
}

function conversationItem(c) {
  const name = c.title || c.preview || c.session_id;
  const li = document.createElement("li");
  li.dataset.session = c.session_id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.textContent = name;
  open.title = name;
  if (c.session_id === state.session) open.setAttribute("aria-current", "true");
  open.addEventListener("click", () => openConversation(c.session_id));
  const rename = smallButton("✎", `Rename “${name}”`, () => startRename(li, open, c));
  const remove = smallButton("×", `Delete “${name}”`, () => deleteConversation(c, name));
  li.append(open, rename, remove);
  return li;
}

function smallButton(text, label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "small";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.title = label;
  b.addEventListener("click", action);
  return b;
}

function startRename(li, open, c) {
  const input = document.createElement("input");
  input.className = "rename";
  input.value = c.title || c.preview || "";
  input.maxLength = 200;
  input.setAttribute("aria-label", "New name (Enter saves, Esc cancels)");
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    if (save) {
      try {
        await api.rename(c.session_id, input.value);
      } catch (err) {
        report(err);
      }
    }
    await refreshList();
    li.parentElement?.querySelector(`li[data-session="${CSS.escape(c.session_id)}"] .open`)?.focus();
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      finish(true);
    } else if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      finish(false);
    }
  });
  input.addEventListener("blur", () => finish(false));
  open.replaceWith(input);
  input.focus();
  input.select();
}

async function deleteConversation(c, name) {
  if (!window.confirm(`Delete the conversation “${name}” from the server?`)) return;
  try {
    await api.remove(c.session_id);
  } catch (err) {
    report(err);
    return;
  }
  if (c.session_id === state.session) newChat();
  await refreshList();
  ui.newChat.focus();
}

async function refreshList() {
  try {
    await loadConversations();
  } catch (err) {
    report(err);
  }
}

/** Models and conversations, again (at start, and when the API key changes). */
async function refresh() {
  try {
    await loadModels();
    await loadConversations();
    notify("");
    return true;
  } catch (err) {
    report(err);
    return false;
  }
}

// ---- the conversation ---------------------------------------------------------------------

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function newChat() {
  stop();
  state.session = null;
  state.history = [];
  history.replaceState(null, "", location.pathname);
  ui.log.replaceChildren(ui.emptyNote.cloneNode(true));
  markCurrent();
  ui.prompt.focus();
}


function markCurrent() {
  for (const li of ui.list.children) {
    const open = li.querySelector(".open");
    if (!open) continue;
    if (li.dataset.session === state.session) open.setAttribute("aria-current", "true");
    else open.removeAttribute("aria-current");
  }
}

async function openConversation(id) {
  stop();
  let conversation;
  try {
    conversation = await api.conversation(id);
  } catch (err) {
    report(err);
    return;
  }
  if (state.controller) return; // a message sent meanwhile: that chat goes on
  state.session = id;
  state.history = conversation.messages.map((m) => ({ role: m.role, content: m.content }));
  history.replaceState(null, "", `#c=${encodeURIComponent(id)}`);
  ui.log.replaceChildren(ui.emptyNote.cloneNode(true));
  for (const m of conversation.messages) addMessage(m.role, m.content, m.model);
  const last = conversation.messages.at(-1);
  if (last && last.model && [...ui.model.options].some((o) => o.value === last.model)) {
    ui.model.value = last.model;
  }
  markCurrent();
  scrollDown(true);
  ui.prompt.focus();
}

function addMessage(role, content, model) {
  const article = document.createElement("article");
  article.className = `message ${role}`;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "assistant" ? model || "assistant" : role;
  const body = document.createElement("div");
  body.className = "content";
  if (role === "assistant") renderMarkdown(body, content);
  else body.textContent = content;
  const stats = document.createElement("div");
  stats.className = "stats muted";
  article.append(who, body, stats);
  ui.log.querySelector(".empty")?.remove();
  ui.log.append(article);
  return article;
}

function nearBottom() {
  return ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 80;
}

function scrollDown(force) {
  if (force || nearBottom()) ui.log.scrollTop = ui.log.scrollHeight;
}

function number(input) {
  const value = input.value.trim();
  return value === "" ? undefined : Number(value);
}

function requestBody(text) {
  const system = ui.system.value.trim();
  const lead = system ? [{ role: "system", content: system }] : [];
  const user = { role: "user", content: text };
  const body = {
    model: ui.model.value,
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: number(ui.maxTokens) ?? 512,
    temperature: number(ui.temperature),
    top_p: number(ui.topP),
  };
  if (state.stored) {
    // the server puts the stored conversation between the system prompt and this message
    return { ...body, messages: [...lead, user], session_id: state.session, session_history: true };
  }
  return { ...body, messages: [...lead, ...state.history, user] };
}

function setStreaming(on) {
  ui.send.hidden = on;
  ui.stop.hidden = !on;
  ui.log.setAttribute("aria-busy", String(on));
}

async function send() {
  const text = ui.prompt.value.trim();
  if (!text || state.controller) return;
  if (!ui.model.value) {
    notify("No model to talk to: the server lists none (or needs an API key, see Settings).");
    return;
  }
  notify("");
  if (!state.session) {
    state.session = newId();
    history.replaceState(null, "", `#c=${encodeURIComponent(state.session)}`);
  }
  const body = requestBody(text);
  ui.prompt.value = "";
  addMessage("user", text);
  const article = addMessage("assistant", "", body.model);
  article.classList.add("streaming");
  const content = article.querySelector(".content");
  const stats = article.querySelector(".stats");
  scrollDown(true);

  const controller = new AbortController();
  state.controller = controller;
  setStreaming(true);
  let answer = "";
  let pieces = 0;
  let frame = 0;
  const started = performance.now();
  let first = null;
  const draw = () => {
    frame = 0;
    renderMarkdown(content, answer);
    scrollDown(false);
  };
  try {
    const { usage, finishReason } = await api.chat(body, controller.signal, (piece) => {
      first ??= performance.now();
      answer += piece;
      pieces += 1;
      frame ||= requestAnimationFrame(draw);
    });
    const ended = performance.now();
    cancelAnimationFrame(frame);
    draw();
    state.history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    stats.textContent = describe(usage, pieces, started, first, ended, finishReason);
  } catch (err) {
    cancelAnimationFrame(frame);
    draw();
    if (err.name === "AbortError") {
      article.classList.add("stopped");
      stats.textContent = `Stopped after ≈${pieces} tokens; a stopped answer is not saved.`;
    } else {
      article.classList.add("failed");
      stats.textContent = `Failed: ${err.message}`;
      report(err);
    }
  } finally {
    article.classList.remove("streaming");
    state.controller = null;
    setStreaming(false);
    if (state.stored) await refreshList();
    markCurrent();
    ui.prompt.focus();
  }
}

function seconds(ms) {
  return `${(ms / 1000).toFixed(2)} s`;
}

function describe(usage, pieces, started, first, ended, finishReason) {
  const parts = [];
  const tokens = usage ? usage.completion_tokens : pieces;
  if (usage) parts.push(`${usage.prompt_tokens} prompt tokens`);
  parts.push(`${usage ? "" : "≈"}${tokens} tokens`);
  if (first !== null && tokens > 1 && ended > first) {
    parts.push(`${((tokens - 1) / ((ended - first) / 1000)).toFixed(1)} tokens/s`);
  }
  if (first !== null) parts.push(`first token ${seconds(first - started)}`);
  if (finishReason === "length") parts.push("cut at max tokens");
  return parts.join(" · ");
}

function stop() {
  if (state.controller) state.controller.abort();
}

// ---- wiring -------------------------------------------------------------------------------

function wire() {
  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  ui.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.controller) {
      e.preventDefault();
      stop();
    }
  });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", newChat);
  ui.settingsToggle.addEventListener("click", () => showSettings(ui.settings.hidden));
  ui.theme.addEventListener("click", () => {
    const dark = ui.theme.getAttribute("aria-pressed") === "true";
    state.settings.theme = dark ? "light" : "dark";
    saveSettings();
    applyTheme();
  });
  darkQuery.addEventListener("change", applyTheme);
  for (const input of [ui.system, ui.temperature, ui.topP, ui.maxTokens, ui.model]) {
    input.addEventListener("change", saveSettings);
  }
  ui.key.addEventListener("change", applyKey);
  ui.key.addEventListener("keydown", (e) => {
    if (e.key === "Enter") applyKey();
  });
  $("skip").addEventListener("click", (e) => {
    e.preventDefault();
    ui.prompt.focus();
  });
  window.addEventListener("hashchange", () => {
    // the address names the open conversation (#c=ID): back, forward, or one typed in
    const id = sessionInAddress();
    if (id && id !== state.session) openConversation(id);
    else if (!location.hash && state.session) newChat();
  });
}

/** Use the key typed in Settings (once per new value; Enter or leaving the field). */
async function applyKey() {
  const key = ui.key.value.trim();
  if (key === (sessionStorage.getItem(KEY) || "")) return;
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
  if (await refresh()) notify(key ? "API key accepted." : "");
}

function sessionInAddress() {
  return new URLSearchParams(location.hash.slice(1)).get("c");
}

async function start() {
  const s = state.settings;
  ui.system.value = s.system || "";
  ui.temperature.value = s.temperature || "";
  ui.topP.value = s.top_p || "";
  ui.maxTokens.value = s.max_tokens || "";
  ui.key.value = sessionStorage.getItem(KEY) || "";
  applyTheme();
  wire();
  const id = sessionInAddress();
  const ok = await refresh();
  if (ok && id && !state.session) await openConversation(id); // unless a chat began meanwhile
  if (ok) ui.prompt.focus();
}

start();
