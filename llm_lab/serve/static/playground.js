// llm-lab playground: streams POST /v1/completions (server-sent events) into the page, its Inspect view shows
// token probabilities, attention and the logit lens from POST /v1/inspect, and its Chat view holds a conversation
// over POST /v1/chat/completions (the server renders the chat template; nothing here does). No build step.
"use strict";

const $ = (id) => document.getElementById(id);
// The sampling sliders are rendered by the server from its registry of sampling settings (GET /v1/sampling): each
// carries data-param (the request field), and optionally data-off (the value meaning "off") and data-max-from (a
// model field that bounds it, e.g. vocab_size). Nothing here names a sampling setting.
const samplingInputs = () => Array.from(document.querySelectorAll("input[data-param]"));
const sliders = () => [...samplingInputs(), $("max-tokens")];
let modelId = null;
let modelInfo = null;
let controller = null;
// Max tokens follows the room the prompt leaves (POST /playground/room): its range is that room, its value the
// server's modest default until the user moves the slider, after which their value is kept while it fits.
let maxTokensPicked = false;
let roomTimer = null;

function showSliderValues() {
  for (const input of sliders()) {
    const off = input.dataset.off !== undefined && Number(input.value) === Number(input.dataset.off);
    $(input.id + "-value").textContent = off ? "off" : input.value;
  }
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models");
    const model = (await response.json()).data[0];
    modelId = model.id;
    modelInfo = model;
    $("model-name").textContent = model.id;
    $("context-length").textContent = model.context_length;
    // The server refuses more than max_tokens_cap new tokens, so the slider never offers more.
    const maxTokens = $("max-tokens");
    maxTokens.max = model.max_tokens_cap;
    if (Number(maxTokens.value) > model.max_tokens_cap) maxTokens.value = model.max_tokens_cap;
    for (const input of samplingInputs()) {
      if (input.dataset.maxFrom) input.max = model[input.dataset.maxFrom];
    }
  } catch (error) {
    $("error").textContent = "could not read /v1/models: " + error;
  }
  showSliderValues();
  await updateRoom();
  await checkChat();
}

// Whether the model can chat, known before the Chat view is opened: GET /tokenizer_info carries the tokenizer's
// chat template (null without one).
async function checkChat() {
  try {
    const info = await (await fetch("/tokenizer_info")).json();
    if (!info.chat_template) return showNoChat("its tokenizer has no chat tokens");
    chat.available = true;
    await updateChatRoom();
  } catch (error) {
    $("chat-error").textContent = "could not read /tokenizer_info: " + error;
  }
}

// Ask the server how many tokens the prompt (or, in the Chat view, the conversation) takes and how many new ones
// fit, and fit the slider to it. A prompt the tokenizer refuses leaves the slider alone: Generate (Send) then shows
// the server's message.
async function updateRoom() {
  if (mode === "chat") return updateChatRoom();
  const prompt = $("prompt").value;
  let room;
  try {
    const response = await fetch("/playground/room", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt }),
    });
    if (!response.ok) return;
    room = await response.json();
  } catch (error) {
    return;
  }
  if (prompt !== $("prompt").value || mode !== "complete") return;  // typed on meanwhile: a newer answer follows
  fitMaxTokens(room);
}

function fitMaxTokens(room, what = "prompt") {
  const slider = $("max-tokens");
  slider.max = Math.max(1, room.max_tokens);
  if (!maxTokensPicked) slider.value = Math.max(1, room.default_max_tokens);
  else if (Number(slider.value) > room.max_tokens) slider.value = Math.max(1, room.max_tokens);
  $("max-tokens-room").textContent = room.max_tokens > 0
    ? (room.prompt_tokens ? `${what}: ${room.prompt_tokens} tokens; ` : "") + `room for ${room.max_tokens} new`
    : `the ${what} (${room.prompt_tokens} tokens) fills the context: `
      + (what === "prompt" ? "shorten it" : "clear it, or shorten the system prompt");
  showSliderValues();
}

function requestBody() {
  return samplingFields({ model: modelId, prompt: $("prompt").value });
}

// The fields both views send: max tokens, every sampling slider that is not off, the seed; streamed, with usage.
function samplingFields(body) {
  body.max_tokens = Number($("max-tokens").value);
  body.stream = true;
  body.stream_options = { include_usage: true };
  for (const input of samplingInputs()) {
    const value = Number(input.value);
    if (input.dataset.off === undefined || value !== Number(input.dataset.off)) body[input.dataset.param] = value;
  }
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  return body;
}

function setRunning(running) {
  $("generate").disabled = running;
  $("stop").disabled = !running;
  $("inspect").disabled = running;
  $("chat-send").disabled = running || chat.available === false;
  $("chat-stop").disabled = !running;
  $("chat-clear").disabled = running;
  document.body.dataset.state = running ? "running" : "idle";
}

function showStats(tokens, started, finishReason, target = "stats") {
  const seconds = (performance.now() - started) / 1000;
  const rate = seconds > 0 ? (tokens / seconds).toFixed(1) : "–";
  let text = `${tokens} tokens · ${seconds.toFixed(2)} s · ${rate} tokens/s`;
  if (finishReason) text += ` · finished: ${finishReason}`;
  $(target).textContent = text;
}

// Split an SSE byte stream into "data:" payloads; a chunk may end in the middle of an event.
function* sseEvents(buffer) {
  let end;
  while ((end = buffer.text.indexOf("\n\n")) >= 0) {
    const event = buffer.text.slice(0, end);
    buffer.text = buffer.text.slice(end + 2);
    const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
    if (data) yield data;
  }
}

// POST a streamed request and hand each parsed chunk to onChunk; a refused request or an error event throws with
// the server's message (which names the field at fault).
async function streamChunks(url, body, onChunk) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    signal: controller.signal,
  });
  if (!response.ok) {
    const answer = await response.json().catch(() => ({}));
    throw new Error(answer.error ? answer.error.message : `HTTP ${response.status}`);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const buffer = { text: "" };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer.text += decoder.decode(value, { stream: true });
    for (const data of sseEvents(buffer)) {
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      onChunk(chunk);
    }
  }
}

async function generate() {
  controller = new AbortController();
  setRunning(true);
  await updateRoom();  // the prompt may have changed since the last answer
  $("error").textContent = "";
  $("output-prompt").textContent = $("prompt").value;
  $("output-text").textContent = "";
  $("stats").textContent = "";
  const started = performance.now();
  let tokens = 0;
  let finishReason = null;
  try {
    await streamChunks("/v1/completions", requestBody(), (chunk) => {
      if (chunk.usage) tokens = chunk.usage.completion_tokens;  // the exact count, at the end
      for (const choice of chunk.choices) {
        if (choice.text) {
          $("output-text").textContent += choice.text;
          tokens += 1;  // one chunk per token while streaming
        }
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
      showStats(tokens, started, finishReason);
    });
  } catch (error) {
    if (error.name === "AbortError") finishReason = "stopped";
    else $("error").textContent = String(error.message || error);
  } finally {
    showStats(tokens, started, finishReason);
    setRunning(false);
    controller = null;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Inspect: one POST /v1/inspect per text (plus one per layer/head picked later), drawn without a framework.

const inspectState = { body: null, text: "", promptChars: 0, selected: null, attention: new Map() };

function probColour(p) {
  // Red (unlikely) through yellow to green (likely); the square root spreads the small probabilities apart.
  return `hsl(${Math.round(120 * Math.sqrt(p))} 75% 80%)`;
}

function showToken(text) {
  // Whitespace made visible in labels: a space is a dot-like mark, a newline an arrow.
  return text.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5") || "\u2205";
}

function tokenSlice(i) {
  // The token's part of the text (from the offsets): a character split over byte-level tokens belongs to its last
  // piece, so the text reads correctly; the other pieces are drawn as thin slivers.
  const { body, text } = inspectState;
  const end = i + 1 < body.text_offset.length ? body.text_offset[i + 1] : text.length;
  return text.slice(body.text_offset[i], end);
}

function fillToken(span, text) {
  // The token's text, with a visible mark before a line break so that empty-looking tokens can be hovered.
  if (text === "") {
    span.classList.add("partial");
    span.title = "a piece of a character split over several tokens";
  } else if (text.includes("\n")) {
    const mark = document.createElement("span");
    mark.className = "mark";
    mark.textContent = "\u21b5";
    span.append(mark, text);
  } else {
    span.textContent = text;
  }
}

async function postInspect(body) {
  const response = await fetch("/v1/inspect", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: modelId, ...body }),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error ? answer.error.message : `HTTP ${response.status}`);
  return answer;
}

function fillPicker(select, count, prefix) {
  select.replaceChildren();
  for (let i = 0; i < count; i++) select.add(new Option(`${prefix} ${i + 1}`, String(i)));
}

async function inspect() {
  const generated = $("output-prompt").textContent + $("output-text").textContent;
  const text = generated || $("prompt").value;
  $("error").textContent = "";
  if (!text) {
    $("error").textContent = "nothing to inspect: type a prompt (or generate some text) first";
    return;
  }
  document.body.dataset.inspect = "loading";
  $("inspect").disabled = true;
  try {
    const nLayer = modelInfo ? modelInfo.n_layer : 1;
    const nHead = modelInfo ? modelInfo.n_head : 1;
    if ($("inspect-layer").options.length !== nLayer) fillPicker($("inspect-layer"), nLayer, "layer");
    if ($("inspect-head").options.length !== nHead) fillPicker($("inspect-head"), nHead, "head");
    const layer = Number($("inspect-layer").value || 0);
    const head = Number($("inspect-head").value || 0);
    const body = await postInspect({ text, layers: [layer], heads: [head] });
    inspectState.body = body;
    inspectState.text = text;
    inspectState.promptChars = generated ? $("output-prompt").textContent.length : text.length;
    inspectState.attention = new Map([[`${layer}:${head}`, body.attention.weights[0][0]]]);
    $("inspect-view").hidden = false;
    renderTokens();
    await selectToken(body.tokens.length - 1, false);
    document.body.dataset.inspect = "ready";
  } catch (error) {
    $("error").textContent = String(error.message || error);
    document.body.dataset.inspect = "error";
  } finally {
    $("inspect").disabled = false;
  }
}

function renderTokens() {
  const { body, promptChars } = inspectState;
  const fragment = document.createDocumentFragment();
  let scored = 0;
  let total = 0;
  body.tokens.forEach((_, i) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.tabIndex = i === 0 ? 0 : -1;  // one tab stop; arrow keys move between tokens
    span.dataset.index = String(i);
    fillToken(span, tokenSlice(i));
    const logprob = body.token_logprobs[i];
    if (logprob === null) {
      span.classList.add("unscored");
    } else {
      const p = Math.exp(logprob);
      span.dataset.prob = p.toFixed(6);
      span.style.background = probColour(p);
      scored += 1;
      total -= logprob;
    }
    if (body.text_offset[i] >= promptChars) span.classList.add("generated");
    fragment.append(span);
  });
  $("inspect-tokens").replaceChildren(fragment);
  const mean = scored ? total / scored : 0;
  $("inspect-summary").textContent = scored
    ? `${body.tokens.length} tokens · mean loss ${mean.toFixed(3)} nats · perplexity ${Math.exp(mean).toFixed(2)}`
    : `${body.tokens.length} token`;
}

function showTooltip(span) {
  const { body } = inspectState;
  const i = Number(span.dataset.index);
  const tip = $("token-tooltip");
  tip.replaceChildren();
  const head = document.createElement("div");
  head.className = "head";
  const logprob = body.token_logprobs[i];
  head.textContent = logprob === null
    ? `“${showToken(body.tokens[i])}” · the first token: nothing predicts it`
    : `“${showToken(body.tokens[i])}” · p = ${Math.exp(logprob).toFixed(4)} (logprob ${logprob.toFixed(3)})`;
  tip.append(head);
  if (body.top_logprobs[i]) {
    const table = document.createElement("table");
    for (const alt of body.top_logprobs[i]) {
      const row = table.insertRow();
      if (alt.token_id === body.token_ids[i]) row.className = "actual";
      const p = Math.exp(alt.logprob);
      row.insertCell().textContent = showToken(alt.token);
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(1, Math.round(80 * p))}px`;
      row.insertCell().append(bar);
      row.insertCell().textContent = `${(100 * p).toFixed(1)}%`;
    }
    tip.append(table);
  }
  tip.hidden = false;
  const box = span.getBoundingClientRect();
  const left = Math.min(window.scrollX + box.left, window.scrollX + document.documentElement.clientWidth - 330);
  tip.style.left = `${Math.max(4, left)}px`;
  tip.style.top = `${window.scrollY + box.bottom + 6}px`;
}

function hideTooltip() {
  $("token-tooltip").hidden = true;
}

async function attentionRows(layer, head) {
  const key = `${layer}:${head}`;
  if (!inspectState.attention.has(key)) {
    const body = await postInspect({ text: inspectState.text, layers: [layer], heads: [head], top_logprobs: 0 });
    inspectState.attention.set(key, body.attention.weights[0][0]);
  }
  return inspectState.attention.get(key);
}

async function selectToken(i, focus = true) {
  const spans = $("inspect-tokens").children;
  if (inspectState.selected !== null && spans[inspectState.selected]) {
    spans[inspectState.selected].classList.remove("selected");
  }
  inspectState.selected = i;
  spans[i].classList.add("selected");
  if (focus) spans[i].focus();
  const label = `“${showToken(inspectState.body.tokens[i])}” (token ${i + 1})`;
  $("attention-query").textContent = label;
  $("lens-query").textContent = label;
  renderLens(i);
  await renderAttention();
}

async function renderAttention() {
  const { body, selected } = inspectState;
  const layer = Number($("inspect-layer").value);
  const head = Number($("inspect-head").value);
  const rows = await attentionRows(layer, head);
  const row = rows[selected];
  const fragment = document.createDocumentFragment();
  body.tokens.forEach((_, j) => {
    const span = document.createElement("span");
    span.className = "tok";
    fillToken(span, tokenSlice(j));
    if (j < row.length) {
      span.dataset.weight = String(row[j]);
      span.style.background = `rgba(45, 91, 215, ${Math.min(1, row[j]).toFixed(3)})`;
      if (row[j] > 0.5) span.style.color = "#fff";
      span.title = `attention ${(100 * row[j]).toFixed(1)}%`;
    } else {
      span.style.opacity = "0.35";  // the future: a causal model cannot look there
    }
    if (j === selected) span.classList.add("selected");
    fragment.append(span);
  });
  $("attention-tokens").replaceChildren(fragment);
  drawAttentionMap(rows, selected);
}

function drawAttentionMap(rows, selected) {
  // One pixel per (query, key); the canvas is scaled up by CSS with crisp pixels. Fine for a full context.
  const T = rows.length;
  const canvas = $("attention-map");
  canvas.width = T;
  canvas.height = T;
  const context = canvas.getContext("2d");
  const image = context.createImageData(T, T);
  for (let q = 0; q < T; q++) {
    const row = rows[q];
    for (let k = 0; k < T; k++) {
      // The square root makes small weights visible; the chosen token's row is tinted where it may look.
      const w = k < row.length ? Math.sqrt(row[k]) : 0;
      const at = 4 * (q * T + k);
      const highlight = q === selected && k <= q;
      image.data[at] = Math.round(255 - 210 * w);
      image.data[at + 1] = Math.round(255 - 164 * w);
      image.data[at + 2] = highlight && w < 0.2 ? 170 : Math.round(255 - 40 * w);
      image.data[at + 3] = 255;
    }
  }
  context.putImageData(image, 0, 0);
  canvas.dataset.drawn = String(T);
}

function renderLens(i) {
  const { body } = inspectState;
  const lens = body.logit_lens;
  const next = i + 1 < body.tokens.length ? body.token_ids[i + 1] : null;
  const table = $("logit-lens");
  table.replaceChildren();
  const header = table.createTHead().insertRow();
  for (const name of ["layer", "top predictions", next === null ? "" : `p(“${showToken(body.tokens[i + 1])}”)`]) {
    const th = document.createElement("th");
    th.textContent = name;
    header.append(th);
  }
  const tbody = table.createTBody();
  for (let r = lens.layers.length - 1; r >= 0; r--) {  // the output on top, the embeddings at the bottom
    const row = tbody.insertRow();
    row.insertCell().textContent = lens.layers[r];
    const cell = row.insertCell();
    const top = lens.top[r][i];
    cell.textContent = top.map((a) => `${showToken(a.token)} ${(100 * Math.exp(a.logprob)).toFixed(0)}%`).join("  ");
    if (next !== null && top[0].token_id === next) cell.className = "hit";
    row.insertCell().textContent = next === null ? "" : `${(100 * Math.exp(lens.next_token_logprobs[r][i])).toFixed(1)}%`;
  }
}

function tokenOf(target) {
  const span = target.closest(".tok");
  return span && $("inspect-tokens").contains(span) ? span : null;
}

$("inspect-tokens").addEventListener("mouseover", (event) => {
  const span = tokenOf(event.target);
  if (span) showTooltip(span);
});
$("inspect-tokens").addEventListener("mouseleave", hideTooltip);
$("inspect-tokens").addEventListener("focusin", (event) => {
  const span = tokenOf(event.target);
  if (span) showTooltip(span);
});
$("inspect-tokens").addEventListener("focusout", hideTooltip);
$("inspect-tokens").addEventListener("click", (event) => {
  const span = tokenOf(event.target);
  if (span) selectToken(Number(span.dataset.index));
});
$("inspect-tokens").addEventListener("keydown", (event) => {
  const span = tokenOf(event.target);
  if (!span) return;
  const i = Number(span.dataset.index);
  const spans = $("inspect-tokens").children;
  const step = { ArrowRight: 1, ArrowLeft: -1, Home: -i, End: spans.length - 1 - i }[event.key];
  if (step !== undefined) {
    const to = spans[Math.max(0, Math.min(spans.length - 1, i + step))];
    span.tabIndex = -1;
    to.tabIndex = 0;
    to.focus();
    event.preventDefault();
  } else if (event.key === "Enter" || event.key === " ") {
    selectToken(i);
    event.preventDefault();
  }
});
for (const id of ["inspect-layer", "inspect-head"]) {
  $(id).addEventListener("change", () => {
    if (inspectState.body !== null) renderAttention().catch((error) => { $("error").textContent = String(error); });
  });
}
// ---------------------------------------------------------------------------------------------------------------
// Chat: the conversation lives here as OpenAI messages; each Send posts all of it (the system prompt first, when
// there is one) to /v1/chat/completions and streams the reply into a new assistant turn. The server renders the
// chat template (POST /playground/chat_room shows its rendering and the room it leaves); this script never does.

let mode = "complete";
// messages: the finished turns (user, assistant, ...); available: null until the server has answered whether the
// model has a chat template.
const chat = { messages: [], available: null, roomRequest: 0 };
let chatRoomTimer = null;

function chatMessages(pending) {
  const system = $("chat-system").value;
  const messages = system ? [{ role: "system", content: system }] : [];
  messages.push(...chat.messages);
  if (pending !== undefined) messages.push({ role: "user", content: pending });
  return messages;
}

function showView(name) {
  mode = name;
  for (const view of ["complete", "chat"]) {
    $(`tab-${view}`).setAttribute("aria-selected", String(view === name));
    $(`${view}-view`).hidden = view !== name;
  }
  if (name === "chat") $("inspect-view").hidden = true;
  document.body.dataset.view = name;
  updateRoom();
}

// A model without a chat template: the view says so and offers no Send (the completions view still works).
function showNoChat(message) {
  chat.available = false;
  $("chat-note").hidden = false;
  $("chat-note").textContent = "This model has no chat template, so it cannot chat: " + message
    + ". Use the Complete view, or fine-tune it on conversations (llm-lab train --data chats.jsonl).";
  for (const id of ["chat-send", "chat-input", "chat-system"]) $(id).disabled = true;
}

async function updateChatRoom() {
  if (chat.available !== true) return;  // not before /tokenizer_info said the model can chat (checkChat calls again)
  const request = ++chat.roomRequest;  // only the latest answer counts (a Clear may have come since)
  const pending = $("chat-input").value;
  const system = $("chat-system").value;
  let response;
  let answer;
  try {
    response = await fetch("/playground/chat_room", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: chatMessages(pending) }),
    });
    answer = await response.json();
  } catch (error) {
    return;
  }
  if (!response.ok) {
    if (answer.error && answer.error.code === "not_a_chat_model") showNoChat(answer.error.message);
    return;  // a message the tokenizer refuses: Send shows the server's message
  }
  if (request !== chat.roomRequest) return;  // a newer answer follows
  if (pending !== $("chat-input").value || system !== $("chat-system").value) return;  // a newer answer follows
  chat.available = true;
  $("chat-rendered").textContent = answer.rendered;
  if (mode === "chat") fitMaxTokens(answer, "conversation");
}

function addTurn(role, text) {
  const turn = document.createElement("div");
  turn.className = `turn ${role}`;
  turn.dataset.role = role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = text;
  turn.append(label, content);
  $("chat-log").append(turn);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return turn;
}

async function sendChat() {
  const text = $("chat-input").value;
  $("chat-error").textContent = "";
  if (chat.available === false || controller) return;
  if (!text.trim()) {
    $("chat-error").textContent = "nothing to send: type a message first";
    return;
  }
  controller = new AbortController();
  setRunning(true);
  await updateChatRoom();  // Max tokens fits this conversation, with this message
  const messages = chatMessages(text);
  const userTurn = addTurn("user", text);
  const replyTurn = addTurn("assistant", "");
  const content = replyTurn.querySelector(".content");
  replyTurn.classList.add("streaming");
  $("chat-stats").textContent = "";
  const started = performance.now();
  let tokens = 0;
  let finishReason = null;
  let reply = "";
  try {
    await streamChunks("/v1/chat/completions", samplingFields({ model: modelId, messages }), (chunk) => {
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      for (const choice of chunk.choices) {
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          content.textContent = reply;
          tokens += 1;
          $("chat-log").scrollTop = $("chat-log").scrollHeight;
        }
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
      showStats(tokens, started, finishReason, "chat-stats");
    });
    chat.messages.push({ role: "user", content: text }, { role: "assistant", content: reply });
    if ($("chat-input").value === text) $("chat-input").value = "";  // not what was typed since
  } catch (error) {
    if (error.name === "AbortError") {
      // What was shown is kept as the reply: the conversation goes on from the text the user saw.
      finishReason = "stopped";
      replyTurn.classList.add("stopped");
      chat.messages.push({ role: "user", content: text }, { role: "assistant", content: reply });
      if ($("chat-input").value === text) $("chat-input").value = "";  // not what was typed since
    } else {
      // A refused message leaves the conversation as it was, and the message in the box to edit.
      userTurn.remove();
      replyTurn.remove();
      $("chat-error").textContent = String(error.message || error);
    }
  } finally {
    replyTurn.classList.remove("streaming");
    showStats(tokens, started, finishReason, "chat-stats");
    controller = null;
    setRunning(false);
    updateChatRoom();
  }
}

function clearChat() {
  chat.messages = [];
  $("chat-log").replaceChildren();
  $("chat-error").textContent = "";
  $("chat-stats").textContent = "";
  updateChatRoom();
}

function chatEdited() {
  clearTimeout(chatRoomTimer);
  chatRoomTimer = setTimeout(updateChatRoom, 150);
}

$("tab-complete").addEventListener("click", () => showView("complete"));
$("tab-chat").addEventListener("click", () => showView("chat"));
$("chat-send").addEventListener("click", sendChat);
$("chat-stop").addEventListener("click", () => controller && controller.abort());
$("chat-clear").addEventListener("click", clearChat);
$("chat-input").addEventListener("input", chatEdited);
$("chat-system").addEventListener("input", chatEdited);
$("chat-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendChat();
  }
});
$("inspect").addEventListener("click", inspect);
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("prompt").addEventListener("input", () => {
  clearTimeout(roomTimer);
  roomTimer = setTimeout(updateRoom, 150);
});
$("max-tokens").addEventListener("input", () => { maxTokensPicked = true; });
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !controller) generate();
});
for (const input of sliders()) input.addEventListener("input", showSliderValues);
setRunning(false);
loadModel();
