// The chat page: streams /v1/chat/completions (or /v1/completions for a base model) over fetch + SSE.
// Model text is always inserted with textContent, never innerHTML.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { model: null, chat: true, history: [], controller: null };

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function init() {
  const info = await (await fetch("/health")).json();
  state.model = info.model;
  state.chat = info.chat;
  $("model").textContent = info.model;
  $("mode").textContent = info.chat ? "chat" : "base model: completion mode (each message is continued)";
  if (!info.chat) $("input").placeholder = "Text to continue";
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.history = [];
  $("log").replaceChildren();
  $("input").focus();
}

// Yields each parsed `data:` JSON of an SSE response body, until [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, end).trim();
      buffer = buffer.slice(end + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send(text) {
  const temperature = Number($("temperature").value);
  const maxTokens = parseInt($("max-tokens").value, 10);
  const body = { model: state.model, stream: true, temperature, max_tokens: maxTokens };
  let url;
  if (state.chat) {
    const system = $("system").value.trim();
    state.history.push({ role: "user", content: text });
    body.messages = (system ? [{ role: "system", content: system }] : []).concat(state.history);
    url = "/v1/chat/completions";
  } else {
    body.prompt = ($("system").value ? $("system").value : "") + text;
    url = "/v1/completions";
  }
  bubble("user", text);
  const out = bubble("assistant streaming", "");
  const controller = new AbortController();
  state.controller = controller;
  $("stop").disabled = false;
  $("send").disabled = true;
  let reply = "";
  try {
    const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body),
                                         signal: controller.signal });
    if (!response.ok) {
      const err = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(err.error.message);
    }
    for await (const event of events(response)) {
      if (event.error) throw new Error(event.error.message);
      const choice = event.choices[0];
      if (!choice) continue;
      const piece = state.chat ? choice.delta.content || "" : choice.text || "";
      reply += piece;
      out.textContent = reply;
      out.scrollIntoView({ block: "end" });
    }
  } catch (e) {
    if (e.name !== "AbortError") bubble("error", String(e.message || e));
  } finally {
    out.classList.remove("streaming");
    if (state.chat) {
      if (reply) state.history.push({ role: "assistant", content: reply });
      else state.history.pop(); // an empty or failed reply: forget the question so turns still alternate
    }
    state.controller = null;
    $("stop").disabled = true;
    $("send").disabled = false;
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value;
  if (!text.trim() || state.controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("new-chat").addEventListener("click", newChat);
init().catch((e) => bubble("error", `cannot reach the server: ${e.message}`));
