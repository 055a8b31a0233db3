// Form sections shared by the create form and the Settings tab: the engine with its settings, the
// hardware, scaling, name/value lists (env, secrets). Each returns {el, value()} and reads back
// the wire format (docs/wire-format.md §5), so what the form sends is what the API documents.

import { field, fill, h, uid } from "./dom.js";

// The engines and their settings: the keys engines/presets.py reads for each variant.
export const ENGINES = {
  vLLM: { label: "vLLM", knobs: [["tensorParallelSize", "int"], ["dataParallelSize", "int"], ["maxNumSeqs", "int"],
    ["maxNumBatchedTokens", "int"], ["kvCacheDtype", "text"]] },
  tgi: { label: "TGI", knobs: [["maxInputLength", "int"], ["maxTotalTokens", "int"], ["maxBatchPrefillTokens", "int"],
    ["maxBatchTotalTokens", "int"], ["quantize", "text"], ["disableCustomKernels", "bool"]] },
  sGLang: { label: "SGLang", knobs: [["tensorParallelSize", "int"], ["maxRunningRequests", "int"],
    ["maxPrefillTokens", "int"], ["chunkedPrefillSize", "int"], ["kvCacheDtype", "text"]] },
  llamacpp: { label: "llama.cpp", knobs: [["modelPath", "text"], ["ctxSize", "int"], ["nParallel", "int"],
    ["threadsHttp", "int"], ["nGpuLayers", "int"], ["mmprojModelPath", "text"], ["mode", "text"], ["pooling", "text"]] },
  tei: { label: "TEI (embeddings)", knobs: [["maxBatchTokens", "int"], ["maxConcurrentRequests", "int"], ["pooling", "text"]] },
  huggingface: { label: "Inference toolkit (handler.py)", knobs: [] },
  custom: { label: "Custom image", knobs: [["url", "text"]] },
};
const COMMON_KNOBS = [["port", "int"], ["healthRoute", "text"]];

function knobInput(kind, value) {
  if (kind === "bool") return h("input", { type: "checkbox", checked: value === true });
  return h("input", { type: kind === "int" ? "number" : "text", step: kind === "int" ? "1" : undefined,
    value: value ?? "", inputmode: kind === "int" ? "numeric" : undefined });
}

/** The engine: a variant and its settings. `image` is a model.image ({variant: {...}}). */
export function engineSection(image = { custom: { url: "", healthRoute: "/health" } }) {
  const select = h("select", {}, Object.entries(ENGINES).map(([key, e]) => h("option", { value: key }, e.label)));
  const knobsBox = h("div", { class: "grid" });
  const username = h("input", { type: "text", autocomplete: "off" });
  const password = h("input", { type: "password", autocomplete: "new-password" });
  const credentials = h("fieldset", { class: "sub" }, h("legend", {}, "Registry credentials (optional)"),
    field("Username", username, { error: "model.image.custom.credentials.username" }),
    field("Password", password, { error: "model.image.custom.credentials.password",
      hint: "Stored sealed, never shown again: a changed image needs it typed again." }));
  let inputs = {};
  let extra = {}; // keys of the variant this form has no input for: kept as they were

  function show(variant, options = {}) {
    select.value = variant;
    inputs = {};
    const known = [...ENGINES[variant].knobs, ...COMMON_KNOBS];
    extra = Object.fromEntries(Object.entries(options).filter(([k]) => !known.some(([n]) => n === k) && k !== "credentials"));
    fill(knobsBox, known.map(([name, kind]) => {
      const input = knobInput(kind, options[name]);
      inputs[name] = [input, kind];
      return field(name === "url" ? "Image (url)" : name, input, { error: `model.image.${variant}.${name}` });
    }));
    credentials.hidden = variant !== "custom";
    username.value = options.credentials?.username || "";
    password.value = "";
  }

  select.addEventListener("change", () => show(select.value, {}));
  const [variant] = Object.keys(image);
  show(variant in ENGINES ? variant : "custom", image[variant] || {});

  const el = h("fieldset", {}, h("legend", {}, "Engine"),
    field("Engine", select, { error: "model.image" }), knobsBox, credentials);
  return {
    el,
    set: (img) => { const [v] = Object.keys(img); show(v, img[v] || {}); },
    variant: () => select.value,
    value() {
      const options = { ...extra };
      for (const [name, [input, kind]] of Object.entries(inputs)) {
        if (kind === "bool") { if (input.checked) options[name] = true; continue; }
        const text = input.value.trim();
        if (text === "") continue;
        options[name] = kind === "int" && /^-?\d+$/.test(text) ? Number(text) : text;
      }
      if (select.value === "custom" && username.value.trim()) {
        options.credentials = { username: username.value.trim() };
        if (password.value) options.credentials.password = password.value;
      }
      return { [select.value]: options };
    },
  };
}

/** Why a size of the provider's offer cannot run now, or null. */
export function unavailable(compute) {
  if (compute.status && compute.status !== "available" && compute.status !== "low_availability") {
    const q = compute.quota || {};
    return `not available now (${compute.status}): ${q.usedAccelerators ?? "?"} of ${q.maxAccelerators ?? "?"} in use`;
  }
  const q = compute.quota;
  if (q && q.maxAccelerators - q.usedAccelerators < compute.numAccelerators) {
    return `needs ${compute.numAccelerators}, only ${q.maxAccelerators - q.usedAccelerators} free`;
  }
  return null;
}

/** The hardware, from GET /v2/provider/{ns}: sizes that cannot fit are disabled with the reason. */
export function hardwareSection(provider, current = null) {
  const group = h("div", { class: "choices", role: "radiogroup", "aria-label": "Hardware" });
  const name = uid("hw");
  let choice = null;
  const rows = [];
  for (const vendor of provider?.vendors || []) {
    for (const region of vendor.regions || []) {
      for (const c of region.computes || []) {
        const why = unavailable(c);
        const input = h("input", { type: "radio", name, value: c.id, disabled: Boolean(why) });
        const picked = current && c.accelerator === current.accelerator && c.instanceType === current.instanceType
          && c.instanceSize === current.instanceSize;
        const value = { vendor: vendor.name, region: region.name, ...c };
        if (picked || (!current && !why && !choice)) { input.checked = true; choice = value; }
        input.addEventListener("change", () => { choice = value; });
        const memory = c.gpuMemoryGb ? `, ${c.gpuMemoryGb} GB GPU memory` : "";
        rows.push(h("label", { class: ["choice", why ? "disabled" : ""], title: why || "" }, input,
          h("span", {}, h("strong", {}, `${c.instanceType} ${c.instanceSize}`),
            ` ${c.architecture} · ${c.numCpus ?? "?"} CPUs · ${c.memoryGb} GB${memory}`),
          why ? h("span", { class: "reason" }, why) : null));
      }
    }
  }
  fill(group, rows.length ? rows : h("p", { class: "muted" }, "The provider lists no hardware."));
  const err = h("p", { class: "field-error", role: "alert", dataset: { field: "compute" } });
  return {
    el: h("fieldset", {}, h("legend", {}, "Hardware"), group, err),
    value: () => choice,
  };
}

function numberInput(value, attrs = {}) {
  return h("input", { type: "number", step: "1", value: value ?? "", inputmode: "numeric", ...attrs });
}

/** min/max replicas, scale-to-zero timeout, strategy and threshold (compute.scaling). */
export function scalingSection(scaling = { minReplica: 1, maxReplica: 1 }) {
  const min = numberInput(scaling.minReplica, { min: 0 });
  const max = numberInput(scaling.maxReplica, { min: 1 });
  const zero = numberInput(scaling.scaleToZeroTimeout, { min: 1, placeholder: "15 when min is 0" });
  const [metric, threshold] = Object.entries(scaling.measure || { pendingRequests: 1.5 })[0];
  const strategy = h("select", {}, h("option", { value: "pendingRequests" }, "pending requests per replica"),
    h("option", { value: "hardwareUsage" }, "hardware usage (%)"));
  strategy.value = metric;
  const limit = h("input", { type: "number", step: "any", value: threshold ?? "", min: 0 });
  const el = h("fieldset", {}, h("legend", {}, "Scaling"), h("div", { class: "grid" },
    field("Min replicas", min, { error: "compute.scaling.minReplica", hint: "0 lets it scale to zero." }),
    field("Max replicas", max, { error: "compute.scaling.maxReplica" }),
    field("Scale to zero after (minutes)", zero, { error: "compute.scaling.scaleToZeroTimeout" }),
    field("Scaling strategy", strategy, { error: "compute.scaling.metric" }),
    field("Threshold", limit, { error: "compute.scaling.measure", hint: "Pending requests per replica, or percent." })));
  const int = (input) => (input.value.trim() === "" ? null : Number(input.value));
  return {
    el,
    value() {
      const out = { minReplica: int(min), maxReplica: int(max), scaleToZeroTimeout: int(zero) };
      out.measure = { [strategy.value]: limit.value.trim() === "" ? null : Number(limit.value) };
      return out;
    },
  };
}

/** Name/value rows for env or secrets (masked values for secrets). */
export function pairsSection(legend, path, entries = {}, { secret = false, names = [] } = {}) {
  const list = h("div", { class: "pairs" });
  function row(name = "", value = "", known = false) {
    const n = h("input", { type: "text", value: name, "aria-label": `${legend} name`, autocomplete: "off" });
    const v = h("input", { type: secret ? "password" : "text", value, autocomplete: secret ? "new-password" : "off",
      "aria-label": `${legend} value`, placeholder: known ? "unchanged (stored sealed)" : "" });
    const r = h("div", { class: "pair", dataset: { known: known ? "1" : "" } }, n, v,
      h("button", { type: "button", class: "small", "aria-label": `Remove this ${legend} entry`,
        onclick: () => r.remove() }, "Remove"));
    list.append(r);
    return r;
  }
  for (const [k, v] of Object.entries(entries)) row(k, v);
  for (const k of names) row(k, "", true);
  const err = h("p", { class: "field-error", role: "alert", dataset: { field: path } });
  return {
    el: h("fieldset", {}, h("legend", {}, legend), list,
      h("button", { type: "button", class: "small", onclick: () => row().querySelector("input").focus() }, `Add ${secret ? "a secret" : "a variable"}`),
      err),
    /** {name: value}; for secrets, rows left blank that were already stored are reported in `kept`. */
    value() {
      const out = {};
      const kept = [];
      for (const r of list.querySelectorAll(".pair")) {
        const [n, v] = r.querySelectorAll("input");
        const key = n.value.trim();
        if (!key) continue;
        if (r.dataset.known && v.value === "") kept.push(key);
        else out[key] = v.value;
      }
      return secret ? { values: out, kept } : out;
    },
  };
}

/** Show the API's error at the field it names (its sentence starts with the JSON path), else at `fallback`. */
export function showError(form, message, fallback) {
  for (const slot of form.querySelectorAll(".field-error")) slot.textContent = "";
  const path = (message.match(/^([A-Za-z_][\w]*(?:\.[\w]+)*)/) || [])[1] || "";
  let best = null;
  for (const slot of form.querySelectorAll(".field-error[data-field]")) {
    const f = slot.dataset.field;
    if ((path === f || path.startsWith(`${f}.`)) && (!best || f.length > best.dataset.field.length)) best = slot;
  }
  const target = best || fallback;
  target.textContent = message;
  const control = best ? document.querySelector(`[aria-describedby="${best.id}"]`) : null;
  (control || target).scrollIntoView?.({ block: "center" });
  control?.focus?.();
  return target;
}
