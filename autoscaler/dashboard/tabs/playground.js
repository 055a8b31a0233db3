// Playground: the calls the endpoint's engine really serves (calls.js: chat and text generation
// streamed token by token, embeddings, the inference toolkit's `POST /` by task), through the data
// plane like any client. Every call sends X-Scale-Up-Timeout, so a scaled-to-zero endpoint wakes
// and the request is held meanwhile ("waking up…").

import { errorOf, headers, paths } from "../api.js";
import { MODES, answerText, modesFor, streamedPiece } from "../calls.js";
import { copyButton, fill, h, uid } from "../dom.js";
import { curl, pythonInference } from "../snippets.js";
import { readEvents } from "../sse.js";

const SCALE_UP_TIMEOUT_S = 120; // how long a call may be held while a replica starts (the server caps it)

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

  // The engines serve the model under the endpoint's name (vLLM, SGLang, llama.cpp check it).
  const payload = (text) => MODES[mode].body(text, env.name, messages);
  function showCode(text) {
    const body = payload(text || "Hello");
    const url = publicUrl();
    const c = curl("POST", `${base()}${MODES[mode].route}`, body, { "X-Scale-Up-Timeout": String(SCALE_UP_TIMEOUT_S) })
      .replace(`${window.location.origin}${base()}`, url);
    const py = pythonInference(mode, url, body, MODES[mode].route);
    fill(codeBox, h("h3", {}, "The same call"), h("div", { class: "actions" }, copyButton(c, "Copy as curl"), copyButton(py, "Copy as Python")),
      h("pre", { class: "snippet", tabIndex: 0, "aria-label": "curl" }, c), h("pre", { class: "snippet", tabIndex: 0, "aria-label": "Python" }, py));
  }
  function renderTabs() {
    fill(tabs, modes.map((m) => h("button", { type: "button", "aria-pressed": m === mode ? "true" : "false",
      onclick: () => { mode = m; messages = []; fill(transcript); renderTabs(); showCode(prompt.value); } }, MODES[m].label)));
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
      const response = await fetch(`${base()}${MODES[mode].route}`, {
        method: "POST", signal, cache: "no-store", body: JSON.stringify(body),
        headers: headers({ "Content-Type": "application/json", "X-Scale-Up-Timeout": String(SCALE_UP_TIMEOUT_S) }),
      });
      waking.hidden = true;
      if (!response.ok) throw await errorOf(response);
      if (!MODES[mode].stream) {
        out.textContent = answerText(mode, await response.json());
        out.parentElement.dataset.done = "true";
        return;
      }
      let reply = "";
      await readEvents(response, (data) => {
        if (data === "[DONE]") return;
        let event;
        try { event = JSON.parse(data); } catch { return; }
        const piece = streamedPiece(mode, event);
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
      modes = modesFor(endpoint);
      mode = modes[0];
      renderTabs();
      showCode("");
    },
    stop() { controller?.abort(); },
  };
}
