// The public API, as any client sees it: a bearer token from session storage, JSON bodies, and
// the API's own error sentences ({"error": "..."}) surfaced as they are.

const TOKEN_KEY = "endpointd.token";

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The error sentence of a failed response. */
export async function errorOf(response) {
  let message = response.headers.get("X-Error-Message") || `${response.status} ${response.statusText}`;
  try {
    const body = await response.clone().json();
    if (body && typeof body.error === "string") message = body.error;
  } catch { /* not JSON: keep the header or status */ }
  return new ApiError(response.status, message);
}

export function headers(extra = {}) {
  const out = { ...extra };
  const t = token.get();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** fetch() with the token; returns the Response, throws ApiError for 4xx/5xx. */
export async function raw(method, path, { body, signal, extraHeaders } = {}) {
  const init = { method, headers: headers(extraHeaders), signal, cache: "no-store" };
  if (body !== undefined) {
    init.body = typeof body === "string" ? body : JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (signal?.aborted) throw error;
    throw new ApiError(0, `endpointd did not answer (${error.message}); is it running?`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) window.dispatchEvent(new CustomEvent("endpointd:unauthenticated", { detail: error }));
    throw error;
  }
  return response;
}

export async function call(method, path, options) {
  const response = await raw(method, path, options);
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

const seg = encodeURIComponent;
export const paths = {
  whoami: () => "/api/whoami-v2",
  endpoints: (ns) => `/v2/endpoint/${seg(ns)}`,
  endpoint: (ns, name) => `/v2/endpoint/${seg(ns)}/${seg(name)}`,
  action: (ns, name, action) => `/v2/endpoint/${seg(ns)}/${seg(name)}/${action}`,
  provider: (ns) => `/v2/provider/${seg(ns)}`,
  logs: (ns, name, query) => `/v2/endpoint/${seg(ns)}/${seg(name)}/logs/sse?${new URLSearchParams(query)}`,
  replicas: (ns, name) => `/v2/endpoint/${seg(ns)}/${seg(name)}/replica`,
  events: (ns, name, since) => `/v2/endpoint/${seg(ns)}/${seg(name)}/events?${new URLSearchParams({ since, limit: "1000" })}`,
  audit: (ns, query) => `/v2/audit/${seg(ns)}?${new URLSearchParams(query)}`,
  usage: (ns, query) => `/v2/usage/${seg(ns)}?${new URLSearchParams(query)}`,
  metrics: (ns, name, query) => `/v2/endpoint/${seg(ns)}/${seg(name)}/metrics?${new URLSearchParams(query)}`,
  catalog: () => "/api/v1/catalog/list",
  deployRecipe: (id) => `/api/v1/catalog/recipe/${seg(id)}/deploy`,
  suggest: (repository, accelerator) => `/v2/engines/suggest?${new URLSearchParams({ repository, accelerator })}`,
  dataPlane: (ns, name) => `/endpoints/${seg(ns)}/${seg(name)}`,
};
