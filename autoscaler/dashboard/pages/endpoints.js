// The endpoints of a namespace (or of every one, "*", for admins): a live table with filters and sorting.

import { call, paths } from "../api.js";
import { copyButton, fill, h, uid } from "../dom.js";
import { ago, engineText, hardwareText, STATES, stateBadge } from "../format.js";

const POLL_MS = 2000;
const COLUMNS = [
  ["name", "Name", (e) => e.name],
  ["state", "State", (e) => e.status?.state || ""],
  ["model", "Model", (e) => e.model?.repository || ""],
  ["engine", "Engine", (e) => engineText(e)],
  ["hardware", "Hardware", (e) => hardwareText(e)],
  ["replicas", "Replicas", (e) => (e.status?.readyReplica ?? 0) * 10000 + (e.status?.targetReplica ?? 0)],
  ["url", "URL", (e) => e.status?.url || ""],
  ["updated", "Last update", (e) => e.status?.updatedAt || ""],
];

export function render(root, ctx) {
  const ns = ctx.namespace;
  const all = ns === "*";
  let items = [];
  let sort = { key: "name", dir: 1 };
  const nameFilter = h("input", { type: "search", id: uid(), placeholder: "part of a name" });
  const stateFilter = h("select", { id: uid() }, h("option", { value: "" }, "any state"),
    STATES.map((s) => h("option", { value: s }, s)));
  const tagFilter = h("select", { id: uid() }, h("option", { value: "" }, "any tag"));
  const filters = h("div", { class: "filters", role: "search" },
    h("label", { htmlFor: nameFilter.id }, "Name"), nameFilter,
    h("label", { htmlFor: stateFilter.id }, "State"), stateFilter,
    h("label", { htmlFor: tagFilter.id }, "Tag"), tagFilter);
  const head = h("tr");
  const body = h("tbody");
  const table = h("table", { class: "endpoints", "aria-label": `Endpoints of ${all ? "every namespace" : ns}` },
    h("thead", {}, head), body);
  const status = h("p", { class: "status-line" }); // not a live region: it changes every poll
  fill(root, h("section", {},
    h("div", { class: "title-row" }, h("h1", {}, all ? "Endpoints of every namespace" : `Endpoints of ${ns}`),
      h("a", { class: "button primary", href: "#/new" }, "New endpoint")),
    filters, h("div", { class: "table-wrap" }, table), status));

  function renderHead() {
    const cols = all ? [["namespace", "Namespace", (e) => e.namespace], ...COLUMNS] : COLUMNS;
    fill(head, cols.map(([key, label]) => {
      const active = sort.key === key;
      return h("th", { scope: "col", "aria-sort": active ? (sort.dir > 0 ? "ascending" : "descending") : "none" },
        h("button", { type: "button", class: "sort", onclick: () => {
          sort = { key, dir: active ? -sort.dir : 1 };
          renderHead();
          renderBody();
        } }, label, active ? (sort.dir > 0 ? " ▲" : " ▼") : ""));
    }));
    return cols;
  }

  let tagList = "";
  function renderTags() {
    const tags = [...new Set(items.flatMap((e) => e.tags || []))].sort();
    if (JSON.stringify(tags) === tagList) return; // an open list is not rebuilt under the pointer
    tagList = JSON.stringify(tags);
    const current = tagFilter.value;
    fill(tagFilter, h("option", { value: "" }, "any tag"),
      tags.map((t) => h("option", { value: t, selected: t === current }, t)));
  }

  function renderBody() {
    const cols = all ? [["namespace", "", (e) => e.namespace], ...COLUMNS] : COLUMNS;
    const getter = cols.find(([key]) => key === sort.key)[2];
    const text = nameFilter.value.trim().toLowerCase();
    const shown = items
      .filter((e) => !text || e.name.toLowerCase().includes(text))
      .filter((e) => !stateFilter.value || e.status?.state === stateFilter.value)
      .filter((e) => !tagFilter.value || (e.tags || []).includes(tagFilter.value))
      .sort((a, b) => {
        const x = getter(a), y = getter(b);
        return (x < y ? -1 : x > y ? 1 : 0) * sort.dir;
      });
    fill(body, shown.map((e) => {
      const endpointNs = e.namespace || ns;
      const href = `#/endpoint/${encodeURIComponent(endpointNs)}/${encodeURIComponent(e.name)}/overview`;
      const url = e.status?.url;
      // data-label: the column's name, shown beside each cell where a phone's screen stacks them.
      const cell = (label, attrs, ...content) => h("td", { ...attrs, dataset: { ...attrs.dataset, label } }, ...content);
      return h("tr", { dataset: { name: e.name } },
        all ? cell("Namespace", {}, endpointNs) : null,
        cell("Name", {}, h("a", { href }, e.name),
          (e.tags || []).length ? h("div", { class: "tags" }, e.tags.map((t) => h("span", { class: "tag" }, t))) : null),
        cell("State", {}, stateBadge(e.status)),
        cell("Model", { class: "wrap" }, e.model?.repository || ""),
        cell("Engine", {}, engineText(e)),
        cell("Hardware", {}, hardwareText(e)),
        cell("Replicas", { class: "num" }, `${e.status?.readyReplica ?? 0}/${e.status?.targetReplica ?? 0}`),
        cell("URL", { class: "wrap" }, url ? [h("code", {}, url), " ", copyButton(url, "Copy URL")] : h("span", { class: "muted" }, "–")),
        cell("Last update", { title: e.status?.updatedAt || "", class: "ago", dataset: { at: e.status?.updatedAt || "" } },
          ago(e.status?.updatedAt)));
    }));
    if (!shown.length) {
      body.append(h("tr", {}, h("td", { colspan: cols.length, class: "muted" },
        items.length ? "No endpoint matches the filters." : "No endpoints yet: create one.")));
    }
  }

  for (const control of [nameFilter, stateFilter, tagFilter]) control.addEventListener("input", renderBody);

  let timer = null;
  let seen = "";
  let stopped = false;
  const controller = new AbortController();
  async function poll() {
    try {
      const answer = await call("GET", paths.endpoints(ns), { signal: controller.signal });
      const text = JSON.stringify(answer.items || []);
      const changed = text !== seen;
      seen = text;
      items = answer.items || [];
      if (all) {
        const before = ctx.seen.size;
        for (const e of items) if (e.namespace) ctx.seen.add(e.namespace);
        if (ctx.seen.size !== before) ctx.refreshPicker();
      }
      status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      status.classList.remove("bad");
      if (changed) { // redraw only on a change: focus, selection and open menus survive the polls
        renderTags();
        renderBody();
      } else {
        for (const td of body.querySelectorAll("td.ago")) td.textContent = ago(td.dataset.at);
      }
    } catch (error) {
      if (stopped) return;
      status.textContent = error.message;
      status.classList.add("bad");
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  renderHead();
  poll();
  return () => { stopped = true; clearTimeout(timer); controller.abort(); };
}
