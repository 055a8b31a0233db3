// What the Playground sends to each engine, on the routes that engine really serves, and how it
// reads the answer:
//   vLLM, SGLang, llama.cpp   OpenAI chat (`/v1/chat/completions`, streamed); llama.cpp in embedding
//                             mode: OpenAI embeddings (`/v1/embeddings`)
//   TGI                       OpenAI chat, and its own `/generate_stream` (streamed tokens)
//   TEI                       OpenAI embeddings (`/v1/embeddings`)
//   the inference toolkit     `POST /` with {"inputs", "parameters"} only, by the endpoint's task:
//   (huggingface, hfServe)    text generation ([{generated_text}]), embeddings ({embeddings} for
//                             sentence-embeddings, the vector itself for feature-extraction), any
//                             other task's JSON answer as it is
//   a custom image            all three OpenAI/TGI calls (the echo engine serves them all)

import { variant } from "./format.js";

export const MAX_TOKENS = 64;
const TOOLKIT_GENERATION = new Set(["text-generation", "text2text-generation", "summarization", "translation"]);
const TOOLKIT_EMBEDDINGS = new Set(["sentence-embeddings", "feature-extraction"]);
const ANSWER_PREVIEW_CHARS = 2000;

/** Each mode: its tab's label, the route, the body for a prompt, and whether the answer streams. */
export const MODES = {
  chat: { label: "Chat", route: "/v1/chat/completions", stream: true,
    body: (text, model, history = []) => ({ model, messages: [...history, { role: "user", content: text }], max_tokens: MAX_TOKENS, stream: true }) },
  generate: { label: "Text generation", route: "/generate_stream", stream: true,
    body: (text) => ({ inputs: text, parameters: { max_new_tokens: MAX_TOKENS } }) },
  embeddings: { label: "Embeddings", route: "/v1/embeddings", stream: false,
    body: (text, model) => ({ input: text, model }) },
  toolkitGenerate: { label: "Text generation", route: "/", stream: false,
    body: (text) => ({ inputs: text, parameters: { max_new_tokens: MAX_TOKENS } }) },
  toolkitEmbeddings: { label: "Embeddings", route: "/", stream: false, body: (text) => ({ inputs: text }) },
  toolkit: { label: "Inputs", route: "/", stream: false, body: (text) => ({ inputs: text }) },
};

const BY_ENGINE = { vLLM: ["chat"], sGLang: ["chat"], llamacpp: ["chat"], tgi: ["chat", "generate"], tei: ["embeddings"] };
const ALL = ["chat", "generate", "embeddings"];

/** The modes an endpoint's engine serves, the first one shown first. */
export function modesFor(endpoint) {
  const engine = variant(endpoint);
  if (engine === "huggingface" || engine === "hfServe") {
    const task = endpoint?.model?.task || "";
    if (TOOLKIT_GENERATION.has(task)) return ["toolkitGenerate"];
    if (TOOLKIT_EMBEDDINGS.has(task)) return ["toolkitEmbeddings"];
    return ["toolkit"];
  }
  if (engine === "llamacpp" && endpoint?.model?.image?.llamacpp?.mode === "embedding") return ["embeddings"];
  return BY_ENGINE[engine] || ALL;
}

function vectorText(vector) {
  if (!Array.isArray(vector)) return null;
  return `${vector.length} dimensions: [${vector.slice(0, 8).map((v) => Number(v).toFixed(4)).join(", ")}${vector.length > 8 ? ", …" : ""}]`;
}

/** What to show of a non-streamed answer (a JSON value). */
export function answerText(mode, answer) {
  if (mode === "embeddings") return vectorText(answer?.data?.[0]?.embedding) ?? JSON.stringify(answer);
  if (mode === "toolkitEmbeddings") {
    let vector = answer && !Array.isArray(answer) ? answer.embeddings : answer;
    if (Array.isArray(vector) && Array.isArray(vector[0])) vector = vector[0];
    return vectorText(vector) ?? JSON.stringify(answer);
  }
  if (mode === "toolkitGenerate") {
    const first = Array.isArray(answer) ? answer[0] : answer;
    const text = first?.generated_text ?? first?.summary_text ?? first?.translation_text;
    if (typeof text === "string") return text;
  }
  const whole = JSON.stringify(answer, null, 2);
  return whole.length > ANSWER_PREVIEW_CHARS ? `${whole.slice(0, ANSWER_PREVIEW_CHARS)}…` : whole;
}

/** The text of one streamed event (an SSE data line, parsed), or "" when it carries none. */
export function streamedPiece(mode, event) {
  if (mode === "chat") return event?.choices?.[0]?.delta?.content || "";
  return event?.token?.special ? "" : event?.token?.text || "";
}
