// Sign in with a token: kept in session storage (gone with the tab), sent as a bearer token.

import { ApiError, call, paths, token } from "../api.js";
import { field, fill, h } from "../dom.js";

export function render(root, ctx) {
  const input = h("input", { type: "password", name: "token", autocomplete: "off", required: true,
    placeholder: "hf_… or the admin token" });
  const holder = field("Token", input, { hint: "`endpointd tokens create USER` prints one; it stays in this tab only." });
  const error = holder.querySelector(".field-error");
  const form = h("form", { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"), holder,
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const value = input.value.trim();
    if (!value) { error.textContent = "Paste a token first."; return; }
    token.set(value);
    try {
      ctx.me = await call("GET", paths.whoami());
    } catch (e) {
      token.clear();
      error.textContent = e instanceof ApiError && e.status === 401
        ? `That token was refused: ${e.message}.`
        : e.message;
      input.focus();
      return;
    }
    ctx.namespace = ctx.me.name;
    ctx.go("#/endpoints");
  });
  fill(root, form);
  input.focus();
}
