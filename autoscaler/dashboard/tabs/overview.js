// Overview: the state with its message (and the progress of a long wait), the URL, model, engine,
// hardware, and the lifecycle buttons. Delete asks for the name to be typed.

import { call, paths } from "../api.js";
import { copyButton, fill, h, statusLine, uid } from "../dom.js";
import { engineText, hardwareText, progressBlock, stateBadge, when } from "../format.js";

export function mount(el, env) {
  const { ns, name } = env;
  const facts = h("dl", { class: "facts" });
  const progress = h("div", {});
  const status = statusLine();
  const action = (label, path, cls = "") => h("button", { type: "button", class: cls, onclick: async (event) => {
    event.target.disabled = true;
    status.textContent = `${label}…`;
    try {
      await call("POST", paths.action(ns, name, path));
      status.textContent = `${label}: done.`;
      env.refresh();
    } catch (error) {
      status.textContent = error.message;
    } finally {
      event.target.disabled = false;
    }
  } }, label);
  const confirm = h("input", { type: "text", id: uid(), autocomplete: "off" });
  const remove = h("button", { type: "button", class: "danger", disabled: true }, "Delete");
  confirm.addEventListener("input", () => { remove.disabled = confirm.value !== name; });
  remove.addEventListener("click", async () => {
    if (confirm.value !== name) return;
    remove.disabled = true;
    try {
      await call("DELETE", paths.endpoint(ns, name));
      env.ctx.go("#/endpoints");
    } catch (error) {
      status.textContent = error.message;
      remove.disabled = false;
    }
  });
  fill(el, progress, facts,
    h("div", { class: "actions" }, action("Pause", "pause"), action("Resume", "resume"),
      action("Scale to zero", "scale-to-zero")),
    h("details", { class: "danger-zone" }, h("summary", {}, "Delete this endpoint"),
      h("label", { htmlFor: confirm.id }, `Type ${name} to delete it, with its logs and analytics:`), confirm, remove),
    status);

  return {
    update(endpoint) {
      if (!endpoint) { fill(facts); fill(progress); return; }
      const s = endpoint.status || {};
      const url = s.url;
      const row = (label, ...value) => [h("dt", {}, label), h("dd", {}, ...value)];
      fill(progress, progressBlock(s));
      fill(facts,
        row("State", stateBadge(s), " ", h("span", { class: "message" }, s.message || "")),
        row("URL", url ? [h("code", {}, url), " ", copyButton(url, "Copy URL")] : h("span", { class: "muted" }, "none until it runs")),
        row("Model", endpoint.model?.repository || "", endpoint.model?.revision ? ` @ ${endpoint.model.revision}` : ""),
        row("Engine", engineText(endpoint)),
        row("Hardware", hardwareText(endpoint)),
        row("Replicas", `${s.readyReplica ?? 0} ready of ${s.targetReplica ?? 0} wanted `
          + `(min ${endpoint.compute?.scaling?.minReplica}, max ${endpoint.compute?.scaling?.maxReplica})`),
        row("Security", endpoint.type || ""),
        row("Tags", (endpoint.tags || []).length ? endpoint.tags.map((t) => h("span", { class: "tag" }, t)) : h("span", { class: "muted" }, "none")),
        row("Created", when(s.createdAt)), row("Updated", when(s.updatedAt)));
    },
  };
}
