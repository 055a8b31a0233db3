// Settings: edit scaling, env, secrets, image and hardware with a sparse PUT (only what changed),
// saying before the save which changes roll the replicas (model and hardware) and which do not.

import { call, paths } from "../api.js";
import { copyButton, field, fill, h, statusLine } from "../dom.js";
import { engineSection, hardwareSection, pairsSection, scalingSection, showError } from "../fields.js";
import { curl, withoutSecrets } from "../snippets.js";

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

export function mount(el, env) {
  let built = false;
  let notice = ""; // said in the rebuilt form after a save
  fill(el, h("p", { class: "muted" }, "Loading…"));

  function build(endpoint) {
    built = true;
    const scaling = scalingSection(endpoint.compute.scaling);
    const engine = engineSection(endpoint.model.image);
    const envs = pairsSection("Environment", "model.env", endpoint.model.env || {});
    const replaceSecrets = h("input", { type: "checkbox" });
    const secrets = pairsSection("Secrets", "model.secrets", {}, { secret: true });
    secrets.el.hidden = true;
    replaceSecrets.addEventListener("change", () => { secrets.el.hidden = !replaceSecrets.checked; plan(); });
    const tags = h("input", { type: "text", value: (endpoint.tags || []).join(", "), autocomplete: "off" });
    const hardwareBox = h("div", {}, h("p", { class: "muted" }, "Loading the hardware…"));
    let hardware = { value: () => null };
    const verdict = h("p", { class: "verdict", role: "status", "aria-live": "polite" });
    const formError = h("p", { class: "field-error form-error", role: "alert" });
    const status = statusLine();
    status.textContent = notice;
    notice = "";
    const snippet = h("pre", { class: "snippet", hidden: true, tabIndex: 0 });
    const current = endpoint.compute;

    function changes() {
      const body = {};
      const rolls = [];
      const quiet = [];
      const s = scaling.value();
      const was = current.scaling;
      const scalingChanged = ["minReplica", "maxReplica", "scaleToZeroTimeout"].some((k) => (s[k] ?? null) !== (was[k] ?? null))
        || !same(Object.entries(s.measure)[0], Object.entries(was.measure || {})[0]);
      if (scalingChanged) { body.compute = { scaling: s }; quiet.push("scaling"); }
      const hw = hardware.value();
      if (hw && (hw.accelerator !== current.accelerator || hw.instanceType !== current.instanceType
        || hw.instanceSize !== current.instanceSize)) {
        body.compute = { ...(body.compute || {}), accelerator: hw.accelerator, instanceType: hw.instanceType,
          instanceSize: hw.instanceSize };
        rolls.push("hardware");
      }
      const image = engine.value();
      const model = {};
      if (!same(image, endpoint.model.image)) { model.image = image; rolls.push("image"); }
      const e = envs.value();
      if (!same(e, endpoint.model.env || {})) { model.env = e; rolls.push("env"); }
      if (replaceSecrets.checked) { model.secrets = secrets.value().values; rolls.push("secrets"); }
      if (Object.keys(model).length) body.model = model;
      const t = tags.value.split(",").map((x) => x.trim()).filter(Boolean);
      if (!same(t, endpoint.tags || [])) { body.tags = t; quiet.push("tags"); }
      return { body, rolls, quiet };
    }
    function plan() {
      const { rolls, quiet } = changes();
      if (!rolls.length && !quiet.length) verdict.textContent = "Nothing changed yet.";
      else if (rolls.length) {
        verdict.textContent = `Saving rolls the replicas: new ones start with the new ${rolls.join(", ")} and replace the old`
          + `${quiet.length ? ` (the ${quiet.join(" and ")} change alone would need no restart)` : ""}.`;
      } else verdict.textContent = `Saving changes the ${quiet.join(" and ")} without restarting a replica.`;
      verdict.classList.toggle("rolls", rolls.length > 0);
    }

    const form = h("form", { novalidate: true, "aria-label": "Settings" },
      h("p", { class: "hint" }, "Scaling and tags apply at once; the image, env, secrets and hardware roll the replicas."),
      scaling.el, engine.el, envs.el,
      h("fieldset", {}, h("legend", {}, "Secrets"),
        h("label", {}, replaceSecrets, " Replace every secret (their values are never shown; rolls the replicas)"), secrets.el),
      hardwareBox, h("fieldset", {}, h("legend", {}, "Tags"), field("Tags", tags, { error: "tags" })),
      verdict, formError,
      h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save"),
        copyButton(() => { snippet.hidden = false; snippet.textContent = curl("PUT", paths.endpoint(env.ns, env.name), withoutSecrets(changes().body)); return snippet.textContent; }, "Copy as curl")),
      status, snippet);
    form.addEventListener("input", plan);
    form.addEventListener("change", plan);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const { body } = changes();
      if (!Object.keys(body).length) { status.textContent = "Nothing to save."; return; }
      status.textContent = "Saving…";
      formError.textContent = "";
      try {
        await call("PUT", paths.endpoint(env.ns, env.name), { body });
        status.textContent = "Saved.";
        notice = "Saved.";
        built = false; // the next read rebuilds the form from what the API now holds
        env.refresh();
      } catch (error) {
        status.textContent = "";
        showError(form, error.message, formError);
      }
    });
    call("GET", paths.provider(env.ns)).then((provider) => {
      hardware = hardwareSection(provider, current);
      fill(hardwareBox, hardware.el);
      plan();
    }).catch((error) => fill(hardwareBox, h("p", { class: "field-error" }, `The hardware could not be read: ${error.message}`)));
    fill(el, form);
    plan();
  }

  return {
    update(endpoint) {
      if (endpoint && !built) build(endpoint);
    },
  };
}
