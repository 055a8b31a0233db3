// Create an endpoint: from a catalog recipe, or from scratch with every knob of the API. The API's
// validation errors are shown at the field their sentence names.

import { ApiError, call, paths } from "../api.js";
import { copyButton, field, fill, h, statusLine } from "../dom.js";
import { engineSection, ENGINES, hardwareSection, pairsSection, scalingSection, showError } from "../fields.js";
import { curl, pythonCreate, withoutSecrets } from "../snippets.js";

const FRAMEWORKS = ["pytorch", "custom", "tensorflow", "onnx"];

function namespaceControl(ctx) {
  const own = [ctx.me.name, ...ctx.me.orgs.map((o) => o.name)];
  const start = ctx.namespace && ctx.namespace !== "*" ? ctx.namespace : ctx.me.name;
  if (ctx.me.isAdmin) return h("input", { type: "text", value: start, required: true, autocomplete: "off" });
  return h("select", {}, own.map((ns) => h("option", { value: ns, selected: ns === start }, ns)));
}

function catalogPanel(ctx, nsInput) {
  const box = h("div", { class: "catalog" }, h("p", { class: "muted" }, "Loading the catalog…"));
  const status = statusLine();
  call("GET", paths.catalog()).then((answer) => {
    const items = answer.items || [];
    if (!items.length) { fill(box, h("p", { class: "muted" }, "The catalog has no models.")); return; }
    fill(box, items.map((model) => h("article", { class: "card recipe" },
      h("h3", {}, model.repoId), h("p", { class: "muted" }, `${model.task} · ${model.license}`),
      (model.recipes || []).map((recipe) => {
        const name = h("input", { type: "text", placeholder: "name (optional)", autocomplete: "off",
          "aria-label": `Name for ${model.repoId} on ${recipe.engineType}` });
        const deploy = h("button", { type: "button", class: "primary" }, "Deploy");
        deploy.addEventListener("click", async () => {
          status.textContent = "Deploying…";
          const body = { namespace: nsInput.value.trim() };
          if (name.value.trim()) body.config = { name: name.value.trim() };
          try {
            const answer = await call("POST", paths.deployRecipe(recipe.publicId), { body });
            const e = answer.endpoint;
            ctx.go(`#/endpoint/${encodeURIComponent(e.namespace || body.namespace)}/${encodeURIComponent(e.name)}/overview`);
          } catch (error) {
            status.textContent = error.message;
          }
        });
        // A recipe this host cannot deploy says why (its image, its model or its hardware), and is not offered.
        const cannot = recipe.deployable === false;
        if (cannot) { deploy.disabled = true; name.disabled = true; }
        return h("div", { class: ["recipe-row", cannot ? "unavailable" : ""], dataset: { recipe: recipe.publicId } },
          h("span", {}, `${recipe.engineType} on ${recipe.accelerator}`, recipe.ggufFile ? ` (${recipe.ggufFile})` : ""),
          name, deploy, cannot ? h("p", { class: "muted reason" }, `Cannot deploy on this host: ${recipe.reason}`) : null);
      }))), status);
  }).catch((error) => {
    fill(box, h("p", { class: "muted" }, error instanceof ApiError && error.status === 404
      ? "This endpointd has no catalog (GET /api/v1/catalog/list answered 404): create from scratch."
      : `The catalog could not be read: ${error.message}`));
  });
  return box;
}

export function render(root, ctx) {
  const nsInput = namespaceControl(ctx);
  const name = h("input", { type: "text", required: true, autocomplete: "off", placeholder: "my-endpoint" });
  const repository = h("input", { type: "text", required: true, autocomplete: "off",
    placeholder: "org/model or /path/under/a/model/root" });
  const revision = h("input", { type: "text", autocomplete: "off", placeholder: "main" });
  const task = h("input", { type: "text", autocomplete: "off", placeholder: "text-generation" });
  const framework = h("select", {}, FRAMEWORKS.map((f) => h("option", { value: f }, f)));
  const command = h("textarea", { rows: 2, placeholder: "one word per line (optional)" });
  const args = h("textarea", { rows: 2, placeholder: "one argument per line (optional)" });
  const lines = (area) => area.value.split("\n").map((l) => l.trim()).filter(Boolean);
  const engine = engineSection();
  const suggestion = h("div", { class: "suggestion", role: "status", "aria-live": "polite" });
  const hardwareBox = h("div", {}, h("p", { class: "muted" }, "Loading the hardware…"));
  let hardware = { value: () => null };
  const scaling = scalingSection({ minReplica: 1, maxReplica: 1 });
  const type = h("select", {}, ["public", "authenticated", "private"].map((t) => h("option", { value: t }, t)));
  type.value = "authenticated";
  const env = pairsSection("Environment", "model.env");
  const secrets = pairsSection("Secrets", "model.secrets", {}, { secret: true });
  const tags = h("input", { type: "text", autocomplete: "off", placeholder: "comma,separated" });
  const domain = h("input", { type: "text", autocomplete: "off", placeholder: "e1.models.example.com (optional)" });
  const formError = h("p", { class: "field-error form-error", role: "alert" });
  const status = statusLine();
  const snippet = h("pre", { class: "snippet", hidden: true, tabIndex: 0, "aria-label": "Request as code" });

  function body() {
    const hw = hardware.value() || {};
    const image = engine.value();
    const out = {
      name: name.value.trim(),
      type: type.value,
      provider: { vendor: hw.vendor || "local", region: hw.region || "local" },
      compute: { accelerator: hw.accelerator, instanceType: hw.instanceType, instanceSize: hw.instanceSize,
        scaling: scaling.value() },
      model: { repository: repository.value.trim(), framework: framework.value, image,
        env: env.value(), secrets: secrets.value().values },
      tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean),
    };
    if (revision.value.trim()) out.model.revision = revision.value.trim();
    if (task.value.trim()) out.model.task = task.value.trim();
    if (lines(command).length) out.model.command = lines(command);
    if (lines(args).length) out.model.args = lines(args);
    if (domain.value.trim()) out.route = { domain: domain.value.trim() };
    return out;
  }
  const target = () => paths.endpoints(nsInput.value.trim());

  const showSnippet = (text) => { snippet.hidden = false; snippet.textContent = text; return text; };
  const curlText = () => showSnippet(curl("POST", target(), withoutSecrets(body())));
  const pythonText = () => showSnippet(pythonCreate(nsInput.value.trim(), body()));

  async function suggest() {
    const repo = repository.value.trim();
    const accelerator = hardware.value()?.accelerator || "cpu";
    fill(suggestion);
    if (!repo) return;
    let answer;
    try {
      answer = await call("GET", paths.suggest(repo, accelerator));
    } catch {
      return; // no suggestion route on this server, or none for this repository: the choice stays the user's
    }
    const image = answer.image && typeof answer.image === "object" ? answer.image
      : answer.variant ? { [answer.variant]: answer.settings || {} } : null;
    if (!image || !(Object.keys(image)[0] in ENGINES)) return;
    const [variant] = Object.keys(image);
    const pull = answer.mustPull === true || answer.present === false;
    fill(suggestion, h("span", {}, `Suggested engine: ${ENGINES[variant].label}`,
      answer.reason ? ` (${answer.reason})` : "",
      pull ? `; its image ${answer.containerImage || ""} is not on this host and will be pulled first` : ""), " ",
      h("button", { type: "button", class: "small", onclick: () => engine.set(image) }, "Use it"));
  }
  repository.addEventListener("change", suggest);

  const form = h("form", { class: "create", novalidate: true, "aria-labelledby": "create-title" },
    h("fieldset", {}, h("legend", {}, "Endpoint"), h("div", { class: "grid" },
      field("Namespace", nsInput, { error: "namespace" }),
      field("Name", name, { error: "name", hint: "1–32 lowercase letters, digits or '-'." }),
      field("Security level", type, { error: "type", hint: "public: anyone; authenticated: any token; private: tokens of the namespace." }))),
    h("fieldset", {}, h("legend", {}, "Model"), h("div", { class: "grid" },
      field("Repository", repository, { error: "model.repository", hint: "A Hub id, or a directory under one of the operator's model roots." }),
      field("Revision", revision, { error: "model.revision" }),
      field("Task", task, { error: "model.task" }),
      field("Framework", framework, { error: "model.framework" }))),
    suggestion, engine.el,
    h("details", { class: "sub" }, h("summary", {}, "Container command and arguments"), h("div", { class: "grid" },
      field("Command", command, { error: "model.command", hint: "Replaces the engine's entrypoint." }),
      field("Arguments", args, { error: "model.args" }))),
    hardwareBox, scaling.el, env.el, secrets.el,
    h("fieldset", {}, h("legend", {}, "Routing and tags"), h("div", { class: "grid" },
      field("Tags", tags, { error: "tags" }),
      field("Route domain", domain, { error: "route.domain", hint: "Serve this endpoint at a host name of its own." }))),
    formError,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create endpoint"),
      copyButton(curlText, "Copy as curl"), copyButton(pythonText, "Copy as Python")),
    status, snippet);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "Creating…";
    formError.textContent = "";
    try {
      const created = await call("POST", target(), { body: body() });
      ctx.go(`#/endpoint/${encodeURIComponent(created.namespace || nsInput.value.trim())}/${encodeURIComponent(created.name)}/overview`);
    } catch (error) {
      status.textContent = "";
      showError(form, error.message, formError);
    }
  });

  call("GET", paths.provider(nsInput.value.trim() || ctx.me.name)).then((provider) => {
    hardware = hardwareSection(provider);
    fill(hardwareBox, hardware.el);
  }).catch((error) => fill(hardwareBox, h("p", { class: "field-error" }, `The hardware could not be read: ${error.message}`)));

  const scratch = h("section", { "aria-labelledby": "scratch-title" }, h("h2", { id: "scratch-title" }, "From scratch"), form);
  const catalog = h("section", { "aria-labelledby": "catalog-title" }, h("h2", { id: "catalog-title" }, "From the catalog"),
    catalogPanel(ctx, nsInput));
  fill(root, h("div", {}, h("h1", { id: "create-title" }, "New endpoint"), catalog, scratch));
}
