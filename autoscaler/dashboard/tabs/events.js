// Events: why the control plane scaled, started or replaced replicas (GET …/events), newest first.

import { call, paths } from "../api.js";
import { fill, h } from "../dom.js";
import { when } from "../format.js";

const POLL_MS = 3000;
const KEEP = 2000; // the newest this many stay on the page

export function mount(el, env) {
  const body = h("tbody");
  const note = h("p", { class: "muted", role: "status" });
  fill(el, note, h("div", { class: "table-wrap" }, h("table", { "aria-label": "Events" },
    h("thead", {}, h("tr", {}, ["When", "Kind", "Replica", "Reason", "Inputs"].map((t) => h("th", { scope: "col" }, t)))),
    body)));
  let timer = null;
  let stopped = false;
  const controller = new AbortController();
  let since = 0; // the API pages forward from a sequence number: only new events are asked for
  let items = [];
  async function load() {
    try {
      // The events after `since`, the latest 1000 of them when more came (the API's rule).
      const page = await call("GET", paths.events(env.ns, env.name, String(since)), { signal: controller.signal });
      items = [...items, ...page.items].slice(-KEEP);
      since = page.last;
      note.textContent = items.length ? `${items.length} events, newest first` : "No events yet.";
      if (page.items.length || !body.childElementCount) fill(body, [...items].reverse().map((e) => h("tr", {},
        h("td", {}, when(e.at)), h("td", {}, e.kind), h("td", {}, e.replica ? h("code", {}, e.replica) : ""),
        h("td", { class: "wrap" }, e.reason), h("td", { class: "wrap" }, h("code", {}, JSON.stringify(e.inputs ?? {}))))));
    } catch (error) {
      if (stopped) return;
      note.textContent = error.message;
    }
    if (!stopped) timer = setTimeout(load, POLL_MS);
  }
  load();
  return { stop() { stopped = true; clearTimeout(timer); controller.abort(); } };
}
