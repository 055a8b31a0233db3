// Building the page from elements and text nodes: every text a user or the API gave stays text.

const PROPS = new Set(["value", "checked", "disabled", "selected", "hidden", "type", "placeholder", "required",
  "readOnly", "multiple", "min", "max", "step", "title", "htmlFor", "id", "name", "tabIndex", "autocomplete",
  "rows", "href", "role", "download", "open"]);

/** h("button", {class: "x", onclick: f, "aria-label": "…"}, "text", child, …): an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (PROPS.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

let counter = 0;
/** A unique id for label/field pairs. */
export function uid(prefix = "f") {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** A labelled field: the label, the control, a hint and a slot for the API's error about it. */
export function field(label, control, { hint, error } = {}) {
  control.id = control.id || uid();
  const err = h("p", { class: "field-error", role: "alert", id: `${control.id}-error` });
  if (error) err.dataset.field = error;
  control.setAttribute("aria-describedby", err.id);
  return h("div", { class: "field" }, h("label", { htmlFor: control.id }, label), control,
    hint ? h("p", { class: "hint" }, hint) : null, err);
}

/** A button that copies `text()` to the clipboard and says so. */
export function copyButton(text, label = "Copy") {
  const button = h("button", { type: "button", class: "small" }, label);
  button.addEventListener("click", async () => {
    const value = typeof text === "function" ? text() : text;
    try {
      await navigator.clipboard.writeText(value);
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed: select and copy by hand";
    }
    setTimeout(() => { button.textContent = label; }, 1500);
  });
  return button;
}

/** A status line (role=status) that screen readers announce. */
export function statusLine(cls = "") {
  return h("p", { class: ["status-line", cls], role: "status", "aria-live": "polite" });
}
