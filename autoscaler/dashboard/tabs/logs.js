// Logs: the endpoint's runtime logs, live over Server-Sent Events (read with fetch, so the token
// stays in a header), filtered by replica (server side) and searched (in the page).

import { raw, paths } from "../api.js";
import { fill, h, uid } from "../dom.js";
import { readEvents } from "../sse.js";

const KEEP_LINES = 5000; // the page keeps at most this many lines: a chatty replica cannot exhaust it
const TAIL = 500;

export function mount(el, env) {
  const replica = h("select", { id: uid() }, h("option", { value: "" }, "every replica"));
  const search = h("input", { type: "search", id: uid(), placeholder: "text to look for" });
  const follow = h("input", { type: "checkbox", id: uid(), checked: true });
  const status = h("p", { class: "muted", role: "status" });
  const out = h("ol", { class: "log", tabIndex: 0, "aria-label": "Log lines", "aria-live": "off" });
  const seenReplicas = new Set();
  fill(el, h("div", { class: "filters", role: "search" },
    h("label", { htmlFor: replica.id }, "Replica"), replica,
    h("label", { htmlFor: search.id }, "Search"), search,
    h("label", { htmlFor: follow.id }, follow, " Scroll with new lines")), status, out);

  let controller = null;
  function matches(li) {
    const needle = search.value.trim().toLowerCase();
    return !needle || li.dataset.text.includes(needle);
  }
  function addReplica(id) {
    if (!id || seenReplicas.has(id)) return;
    seenReplicas.add(id);
    replica.append(h("option", { value: id }, id));
  }
  function add(line) {
    const match = line.match(/^(\S+) (\S+) (.*)$/);
    const [, at, id, text] = match || [null, "", "", line];
    addReplica(id);
    const li = h("li", { dataset: { replica: id, text: line.toLowerCase() } },
      h("time", {}, at), " ", h("code", { class: "replica" }, id), " ", h("span", { class: "text" }, text));
    li.hidden = !matches(li);
    out.append(li);
    while (out.childElementCount > KEEP_LINES) out.firstElementChild.remove();
    if (follow.checked) out.scrollTop = out.scrollHeight;
  }
  async function connect() {
    controller?.abort();
    controller = new AbortController();
    const signal = controller.signal;
    fill(out);
    status.textContent = "Connecting…";
    const query = { tail: String(TAIL) };
    if (replica.value) query.replica = replica.value;
    try {
      const response = await raw("GET", paths.logs(env.ns, env.name, query), { signal });
      status.textContent = "Live: new lines appear as the replicas write them.";
      await readEvents(response, add, signal);
      if (!signal.aborted) status.textContent = "The log stream ended (the endpoint was deleted, or endpointd stopped).";
    } catch (error) {
      if (!signal.aborted) status.textContent = `The logs could not be followed: ${error.message}`;
    }
  }
  replica.addEventListener("change", connect);
  search.addEventListener("input", () => { for (const li of out.children) li.hidden = !matches(li); });
  fetchReplicas();
  connect();

  async function fetchReplicas() {
    try {
      const response = await raw("GET", paths.replicas(env.ns, env.name));
      for (const r of (await response.json()).items) addReplica(r.id);
    } catch { /* the stream names replicas too */ }
  }
  return { stop() { controller?.abort(); } };
}
