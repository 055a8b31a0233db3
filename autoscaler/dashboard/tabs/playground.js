// Playground: chat (streamed token by token), text generation (streamed) and embeddings, by the
// endpoint's engine, through the data plane like any client. Every call sends X-Scale-Up-Timeout,
// so a scaled-to-zero endpoint wakes and the request is held meanwhile ("waking up…").

import { errorOf, headers, paths } from "../api.js";
import { copyButton, fill, h, uid } from "../dom.js";
import { variant } from "../format.js";
import { curl, pythonInference } from "../snippets.js";
import { readEvents } from "../sse.js";

const SCALE_UP_TIMEOUT_S = 120; // how long a call may be held while a replica starts (the server caps it)
const MAX_TOKENS = 64;
const MODES_BY_ENGINE = { vLLM: ["chat"], sGLang: ["chat"], llamacpp: ["chat"], tgi: ["chat", "generate"],
  tei: ["embeddings"], huggingface: ["generate", "embeddings"], hfServe: ["generate", "embeddings"] };
const ALL_MODES = ["chat", "generate", "embeddings"];
const LABELS = { chat: "Chat", generate: "Text generation", embeddings: "Embeddings" };
const ROUTES = { chat: "/v1/chat/completions", generate: "/generate_stream", embeddings: "/v1/embeddings" };

export function mount(el, env) {
  let modes = null;
  let mode = null;
  let messages = [];
  let controller = null;
  const tabs = h("div", { class: "segmented", role: "group", "aria-label": "Playground mode" });
  const transcript = h("div", { class: "transcript", "aria-live": "polite", "aria-label": "Conversation" });
  const prompt = h("textarea", { id: uid(), rows: 3, placeholder: "Say something" });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const stopButton = h("button", { type: "button", hidden: true }, "Stop");
  const clear = h("button", { type: "button" }, "Clear");
  const waking = h("p", { class: "waking", role: "status", hidden: true });
  const error = h("p", { class: "field-error", role: "alert" });
  const codeBox = h("div", { class: "code" });
  const form = h("form", { class: "playground" },
    h("label", { htmlFor: prompt.id }, "Message"), prompt,
    h("div", { class: "actions" }, send, stopButton, clear), waking, error);
  fill(el, tabs, transcript, form, codeBox);

  const base = () => paths.dataPlane(env.ns, env.name);
  const publicUrl = () => env.endpoint?.status?.url || `${window.location.origin}${base()}`;

  function payload(text) {
    // The engines serve the model under the endpoint's name (vLLM, SGLang, llama.cpp check it).
    if (mode === "chat") return { model: env.name, messages: [...messages, { role: "user", content: text }], max_tokens: MAX_TOKENS, stream: true };
    if (mode === "generate") return { inputs: text, parameters: { max_new_tokens: MAX_TOKENS } };
    return { input: text, model: env.name };
  }
  function showCode(text) {
    const body = payload(text || "Hello");
    const url = publicUrl();
    const c = curl("POST", `${base()}${ROUTES[mode]}`, body, { "X-Scale-Up-Timeout": String(SCALE_UP_TIMEOUT_S) })
      .replace(`${window.location.origin}${base()}`, url);
    const py = pythonInference(mode, url, body);
    fill(codeBox, h("h3", {}, "The same call"), h("div", { class: "actions" }, copyButton(c, "Copy as curl"), copyButton(py, "Copy as Python")),
      h("pre", { class: "snippet", tabIndex: 0, "aria-label": "curl" }, c), h("pre", { class: "snippet", tabIndex: 0, "aria-label": "Python" }, py));
  }
  function renderTabs() {
    fill(tabs, modes.map((m) => h("button", { type: "button", "aria-pressed": m === mode ? "true" : "false",
      onclick: () => { mode = m; messages = []; fill(transcript); renderTabs(); showCode(prompt.value); } }, LABELS[m])));
  }
  function bubble(role, text = "") {
    const b = h("div", { class: ["bubble", role], dataset: { role } }, h("span", { class: "who" }, role), h("span", { class: "text" }, text));
    transcript.append(b);
    return b.querySelector(".text");
  }

  async function run(text) {
    controller?.abort();
    controller = new AbortController();
    const { signal } = controller;
    error.textContent = "";
    const state = env.endpoint?.status?.state;
    const asleep = state !== "running" || (env.endpoint?.status?.readyReplica ?? 0) === 0;
    waking.hidden = !asleep;
    waking.textContent = asleep ? `Waking up… (the endpoint is ${state}; the request is held up to ${SCALE_UP_TIMEOUT_S} s while a replica starts)` : "";
    const body = payload(text);
    bubble("user", text);
    const out = bubble("assistant");
    send.disabled = true;
    stopButton.hidden = false;
    try {
      const response = await fetch(`${base()}${ROUTES[mode]}`, {
        method: "POST", signal, cache: "no-store", body: JSON.stringify(body),
        headers: headers({ "Content-Type": "application/json", "X-Scale-Up-Timeout": String(SCALE_UP_TIMEOUT_S) }),
      });
      waking.hidden = true;
      if (!response.ok) throw await errorOf(response);
      if (mode === "embeddings") {
        const answer = await response.json();
        const vector = answer.data?.[0]?.embedding || [];
        out.textContent = `${vector.length} dimensions: [${vector.slice(0, 8).map((v) => v.toFixed(4)).join(", ")}${vector.length > 8 ? ", …" : ""}]`;
        return;
      }
      let reply = "";
      await readEvents(response, (data) => {
        if (data === "[DONE]") return;
        let event;
        try { event = JSON.parse(data); } catch { return; }
        const piece = mode === "chat" ? event.choices?.[0]?.delta?.content : event.token?.special ? "" : event.token?.text;
        if (piece) { reply += piece; out.textContent = reply; }
      }, signal);
      if (mode === "chat") messages = [...body.messages, { role: "assistant", content: reply }];
      out.parentElement.dataset.done = "true";
    } catch (e) {
      waking.hidden = true;
      if (!signal.aborted) error.textContent = e.message;
      out.parentElement.dataset.done = "error";
    } finally {
      send.disabled = false;
      stopButton.hidden = true;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text) { error.textContent = "Type a message first."; return; }
    showCode(text);
    prompt.value = "";
    run(text);
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
  });
  stopButton.addEventListener("click", () => controller?.abort());
  clear.addEventListener("click", () => { messages = []; fill(transcript); });

  return {
    update(endpoint) {
      if (!endpoint || modes) return;
      modes = MODES_BY_ENGINE[variant(endpoint)] || ALL_MODES;
      mode = modes[0];
      renderTabs();
      showCode("");
    },
    stop() { controller?.abort(); },
  };
}
