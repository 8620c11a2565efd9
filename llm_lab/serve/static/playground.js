// llm-lab playground: streams POST /v1/completions (server-sent events) into the page. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const sliders = ["temperature", "top-k", "top-p", "max-tokens"];
let modelId = null;
let controller = null;

function showSliderValues() {
  for (const id of sliders) {
    const value = $(id).value;
    $(id + "-value").textContent = id === "top-k" && value === "0" ? "off" : value;
  }
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models");
    const model = (await response.json()).data[0];
    modelId = model.id;
    $("model-name").textContent = model.id;
    $("context-length").textContent = model.context_length;
    // The server refuses more than max_tokens_cap new tokens, so the slider never offers more.
    const maxTokens = $("max-tokens");
    maxTokens.max = model.max_tokens_cap;
    if (Number(maxTokens.value) > model.max_tokens_cap) maxTokens.value = model.max_tokens_cap;
    $("top-k").max = model.vocab_size;
  } catch (error) {
    $("error").textContent = "could not read /v1/models: " + error;
  }
  showSliderValues();
}

function requestBody() {
  const body = {
    model: modelId,
    prompt: $("prompt").value,
    max_tokens: Number($("max-tokens").value),
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    stream: true,
    stream_options: { include_usage: true },
  };
  const topK = Number($("top-k").value);
  if (topK > 0) body.top_k = topK;
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = Number(seed);
  return body;
}

function setRunning(running) {
  $("generate").disabled = running;
  $("stop").disabled = !running;
  document.body.dataset.state = running ? "running" : "idle";
}

function showStats(tokens, started, finishReason) {
  const seconds = (performance.now() - started) / 1000;
  const rate = seconds > 0 ? (tokens / seconds).toFixed(1) : "–";
  let text = `${tokens} tokens · ${seconds.toFixed(2)} s · ${rate} tokens/s`;
  if (finishReason) text += ` · finished: ${finishReason}`;
  $("stats").textContent = text;
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

async function generate() {
  $("error").textContent = "";
  $("output-prompt").textContent = $("prompt").value;
  $("output-text").textContent = "";
  $("stats").textContent = "";
  controller = new AbortController();
  setRunning(true);
  const started = performance.now();
  let tokens = 0;
  let finishReason = null;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
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
        if (chunk.usage) tokens = chunk.usage.completion_tokens;  // the exact count, at the end
        for (const choice of chunk.choices) {
          if (choice.text) {
            $("output-text").textContent += choice.text;
            tokens += 1;  // one chunk per token while streaming
          }
          if (choice.finish_reason) finishReason = choice.finish_reason;
        }
        showStats(tokens, started, finishReason);
      }
    }
  } catch (error) {
    if (error.name === "AbortError") finishReason = "stopped";
    else $("error").textContent = String(error.message || error);
  } finally {
    showStats(tokens, started, finishReason);
    setRunning(false);
    controller = null;
  }
}

$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => controller && controller.abort());
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !controller) generate();
});
for (const id of sliders) $(id).addEventListener("input", showSliderValues);
setRunning(false);
loadModel();
