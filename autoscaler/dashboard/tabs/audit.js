// Audit: who did what to this endpoint (GET /v2/audit/{ns}?endpoint=…), newest first, page by page.

import { call, paths } from "../api.js";
import { fill, h } from "../dom.js";
import { when } from "../format.js";

export function mount(el, env) {
  const body = h("tbody");
  const note = h("p", { class: "muted", role: "status" });
  const more = h("button", { type: "button", hidden: true }, "Older entries");
  let cursor = null;
  fill(el, note, h("div", { class: "table-wrap" }, h("table", { "aria-label": "Audit log" },
    h("thead", {}, h("tr", {}, ["When", "Who", "Action", "Details", "Source", "Request id"].map((t) => h("th", { scope: "col" }, t)))),
    body)), more);
  async function load(reset) {
    const query = { endpoint: env.name, limit: "100" };
    if (!reset && cursor) query.cursor = cursor;
    try {
      const answer = await call("GET", paths.audit(env.ns, query));
      if (reset) fill(body);
      for (const e of answer.items) {
        body.append(h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.user), h("td", {}, e.action),
          h("td", { class: "wrap" }, h("code", {}, JSON.stringify(e.details ?? {}))), h("td", {}, e.sourceIp),
          h("td", {}, h("code", {}, e.requestId))));
      }
      cursor = answer.nextCursor;
      more.hidden = !cursor;
      note.textContent = body.childElementCount ? "" : "No audit entries for this endpoint.";
    } catch (error) {
      note.textContent = error.message;
    }
  }
  more.addEventListener("click", () => load(false));
  load(true);
  return {};
}
