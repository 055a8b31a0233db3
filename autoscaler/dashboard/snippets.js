// "Copy as curl" and "copy as Python": the same request the dashboard sends, for a terminal or a
// script. The token is never written into them ($HF_TOKEN), nor are secret values.

const origin = () => window.location.origin;

function shellQuote(text) {
  return `'${String(text).replace(/'/g, "'\\''")}'`;
}

function py(value, indent = 0) {
  const pad = "    ".repeat(indent + 1);
  const end = "    ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return value.length ? `[${value.map((v) => py(v, indent)).join(", ")}]` : "[]";
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${pad}${JSON.stringify(k)}: ${py(v, indent + 1)},`).join("\n")}\n${end}}`;
}

/** A copy of a create/update body with each secret's value replaced by a placeholder. */
export function withoutSecrets(body) {
  const copy = JSON.parse(JSON.stringify(body));
  const secrets = copy?.model?.secrets;
  if (secrets) for (const k of Object.keys(secrets)) secrets[k] = `<${k}>`;
  const creds = copy?.model?.image?.custom?.credentials;
  if (creds?.password) creds.password = "<registry password>";
  return copy;
}

export function curl(method, path, body, extraHeaders = {}) {
  const lines = [`curl -X ${method} ${shellQuote(origin() + path)}`, `  -H "Authorization: Bearer $HF_TOKEN"`];
  for (const [k, v] of Object.entries(extraHeaders)) lines.push(`  -H ${shellQuote(`${k}: ${v}`)}`);
  if (body !== undefined) {
    lines.push(`  -H "Content-Type: application/json"`, `  -d ${shellQuote(JSON.stringify(body))}`);
  }
  return lines.join(" \\\n");
}

const SETUP = () => [
  "import os",
  `os.environ["HF_ENDPOINT"] = ${JSON.stringify(origin())}  # before importing huggingface_hub`,
  "import huggingface_hub.constants as c",
  `c.INFERENCE_ENDPOINTS_ENDPOINT = ${JSON.stringify(`${origin()}/v2`)}`,
  "from huggingface_hub import create_inference_endpoint",
  "",
];

/** The create body as huggingface_hub's create_inference_endpoint() call (token from $HF_TOKEN). */
export function pythonCreate(ns, body) {
  const b = withoutSecrets(body);
  const s = b.compute?.scaling || {};
  const [metric, threshold] = Object.entries(s.measure || {})[0] || [];
  const args = [
    ["repository", b.model?.repository], ["framework", b.model?.framework], ["accelerator", b.compute?.accelerator],
    ["instance_size", b.compute?.instanceSize], ["instance_type", b.compute?.instanceType],
    ["region", b.provider?.region], ["vendor", b.provider?.vendor], ["type", b.type], ["namespace", ns],
    ["min_replica", s.minReplica], ["max_replica", s.maxReplica], ["scale_to_zero_timeout", s.scaleToZeroTimeout],
    ["scaling_metric", metric], ["scaling_threshold", threshold], ["revision", b.model?.revision], ["task", b.model?.task],
    ["custom_image", b.model?.image], ["container_command", b.model?.command], ["container_args", b.model?.args],
    ["env", b.model?.env], ["secrets", b.model?.secrets],
    ["tags", b.tags], ["domain", b.route?.domain],
  ].filter(([, v]) => v !== undefined && v !== null && !(typeof v === "object" && !Array.isArray(v) && !Object.keys(v).length)
    && !(Array.isArray(v) && !v.length));
  return [...SETUP(),
    "endpoint = create_inference_endpoint(",
    `    ${JSON.stringify(b.name)},`,
    ...args.map(([k, v]) => `    ${k}=${py(v, 1)},`),
    ")",
    "endpoint.wait()",
    "print(endpoint.url)",
  ].join("\n");
}

/** A playground call as Python: huggingface_hub's InferenceClient where it speaks the engine's
 * route (chat, TGI's streamed generation), else a plain POST of the same body to the same route. */
export function pythonInference(kind, url, payload, route) {
  const head = ["import os", "from huggingface_hub import InferenceClient", "",
    `client = InferenceClient(${JSON.stringify(url)}, token=os.environ.get("HF_TOKEN"),`,
    `                         headers={"X-Scale-Up-Timeout": "120"})  # wake it if scaled to zero`, ""];
  if (kind === "chat") {
    return [...head, `for chunk in client.chat_completion(${py(payload.messages, 0)}, model=${JSON.stringify(payload.model)},`,
      `                                   max_tokens=${payload.max_tokens}, stream=True):`,
      "    print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)"].join("\n");
  }
  if (kind === "generate") {
    return [...head, `for token in client.text_generation(${JSON.stringify(payload.inputs)}, max_new_tokens=${payload.parameters.max_new_tokens}, stream=True):`,
      "    print(token, end=\"\", flush=True)"].join("\n");
  }
  const target = route === "/" ? url : `${url}${route}`;
  return ["import os", "import requests", "",
    `answer = requests.post(${JSON.stringify(target)}, json=${py(payload, 0)},`,
    `                       headers={"Authorization": f"Bearer {os.environ['HF_TOKEN']}", "X-Scale-Up-Timeout": "120"})`,
    "answer.raise_for_status()",
    kind === "embeddings" ? "print(answer.json()[\"data\"][0][\"embedding\"])" : "print(answer.json())"].join("\n");
}
