// The exported model in the browser: llama.cpp compiled to WebAssembly (wllama) runs model.gguf.
// Single-threaded, so any static host works: no COOP/COEP headers are needed.
const config = await (await fetch("scratchlm.json")).json();
const { Wllama } = await import(new URL(config.runtime.module, document.baseURI).href);
const $ = (id) => document.getElementById(id);

const wllama = new Wllama({ default: new URL(config.runtime.wasm, document.baseURI).href });
const ready = wllama.loadModelFromUrl(new URL(config.model, document.baseURI).href, {
  n_ctx: config.n_ctx, n_threads: 1, useCache: false,
});
let running = null;

// For a chat model the prompt is one user message in the run's chat template (llama.cpp adds <|bos|>),
// and generation ends at <|end|>, the end-of-turn token; a base model continues the text.
function wrap(prompt) {
  return config.chat ? config.template.user_prefix + prompt + config.template.user_suffix : prompt;
}

async function complete(prompt, options = {}, onText = null) {
  await ready;
  const settings = { ...config.sample, ...options };
  const abort = new AbortController();
  running = abort;
  let text = "";
  try {
    await wllama.createCompletion({
      prompt: wrap(prompt),
      max_tokens: settings.max_new_tokens,
      temperature: settings.temperature,
      top_k: settings.top_k,
      top_p: settings.top_p,
      stop: config.stop.length ? config.stop : undefined,
      abortSignal: abort.signal,
      stream: true,
      onData: (chunk) => {
        const piece = chunk.choices[0]?.text ?? "";
        text += piece;
        if (onText && piece) onText(text);
      },
    });
  } catch (err) {
    if (!abort.signal.aborted) throw err;
  } finally {
    if (running === abort) running = null;
  }
  return text;
}

function stop() {
  if (running) running.abort();
}

window.scratchlm = { complete, stop, config, ready };

$("model").textContent = config.name;
$("prompt-label").textContent = config.chat ? "Your message" : "Text to continue";
$("temperature").value = config.sample.temperature;
$("top-k").value = config.sample.top_k;
$("max-tokens").value = config.sample.max_new_tokens;
ready.then(
  () => { $("status").textContent = "Ready."; $("send").disabled = false; },
  (err) => { $("status").textContent = "Could not load the model: " + err; $("status").className = "error"; },
);

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("output");
  out.textContent = "";
  out.classList.remove("error");
  $("send").disabled = true;
  $("stop").disabled = false;
  $("status").textContent = "Generating…";
  try {
    const options = {
      temperature: Number($("temperature").value),
      top_k: Number($("top-k").value),
      max_new_tokens: Number($("max-tokens").value),
    };
    const text = await complete($("prompt").value, options, (sofar) => { out.textContent = sofar; });
    out.textContent = text;
    $("status").textContent = "Done.";
  } catch (err) {
    out.textContent = String(err);
    out.classList.add("error");
    $("status").textContent = "Failed.";
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
  }
});
$("stop").addEventListener("click", stop);
