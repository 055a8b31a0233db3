// Usage: what each endpoint of the namespace (or of every one, "*", for admins) used over a chosen
// period — replica-hours by hardware, requests, tokens, bytes — and its cost by the operator's
// [rates] (GET /v2/usage/{ns}, one bucket: the period's totals). Refreshed while shown.

import { call, paths } from "../api.js";
import { fill, h } from "../dom.js";
import { bytes, when } from "../format.js";

const REFRESH_MS = 10000;
const DAY = 86400;
// [key, label, the period's start for a given now (unix seconds)]
export const PERIODS = [
  ["24h", "Last 24 h", (now) => now - DAY],
  ["7d", "Last 7 days", (now) => now - 7 * DAY],
  ["30d", "Last 30 days", (now) => now - 30 * DAY],
  ["month", "This month", (now) => {
    const d = new Date(now * 1000);
    return Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1) / 1000;
  }],
];
const COLUMNS = ["Endpoint", "Replica-hours", "Hardware", "Requests", "Tokens in", "Tokens out", "Bytes in / out", "Cost"];

function hours(seconds) { return (seconds / 3600).toFixed(3); } // 0.001 h: 3.6 s
function count(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }
function money(cost) { return Number(cost).toFixed(4); }

/** The cells of one row, as text, from an endpoint's (or the namespace's) figures. */
export function cells(label, f) {
  const hardware = (f.replicas || []).map((r) =>
    `${r.instanceType} ${r.instanceSize}: ${hours(r.replicaSeconds)} h${r.ratePerHour === null ? " (unpriced)" : ""}`);
  return [label, hours(f.replicaSeconds), hardware.join(", ") || "–", count(f.requests), count(f.tokensIn),
    count(f.tokensOut), `${bytes(f.bytesIn)} / ${bytes(f.bytesOut)}`, money(f.cost)];
}

/** Every row of an answer: one per endpoint (namespace/name when `all`), then the total. */
export function rows(answer, all) {
  return [
    ...answer.endpoints.map((e) => cells(all ? `${e.namespace}/${e.name}` : e.name, e.total)),
    cells("Total", answer.total),
  ];
}

export function render(root, ctx) {
  const ns = ctx.namespace;
  const all = ns === "*";
  let period = PERIODS[0];
  let timer = null;
  let stopped = false;
  const controller = new AbortController();
  const buttons = h("div", { class: "segmented", role: "group", "aria-label": "Period" });
  const note = h("p", { class: "muted", role: "status" });
  const unpriced = h("p", { class: "muted" });
  const body = h("tbody");
  const foot = h("tfoot");
  const table = h("table", { class: "usage", "aria-label": `Usage of ${all ? "every namespace" : ns}` },
    h("thead", {}, h("tr", {}, COLUMNS.map((t) => h("th", { scope: "col" }, t)))), body, foot);
  fill(root, h("section", {}, h("div", { class: "title-row" },
    h("h1", {}, all ? "Usage of every namespace" : `Usage of ${ns}`)), buttons, note,
  h("div", { class: "table-wrap" }, table), unpriced));

  function renderButtons() {
    fill(buttons, PERIODS.map((p) => h("button", { type: "button", "aria-pressed": p === period ? "true" : "false",
      onclick: () => { period = p; renderButtons(); load(); } }, p[1])));
  }

  function row(values, name) {
    return h("tr", { dataset: name ? { name } : {} }, values.map((v, i) => (i === 0
      ? h("th", { scope: "row" }, v) : h("td", { class: i === 2 ? "wrap" : "num", dataset: { label: COLUMNS[i] } }, v))));
  }

  async function load() {
    clearTimeout(timer);
    const to = Math.ceil(Date.now() / 1000);
    const from = Math.floor(period[2](to));
    try {
      const answer = await call("GET", paths.usage(ns, { from: String(from), to: String(to) }), { signal: controller.signal });
      const shown = rows(answer, all);
      fill(body, shown.slice(0, -1).map((values, i) => row(values, answer.endpoints[i].name)));
      if (!answer.endpoints.length) {
        body.append(h("tr", {}, h("td", { colspan: COLUMNS.length, class: "muted" }, "No usage in this period.")));
      }
      fill(foot, row(shown[shown.length - 1]));
      fill(unpriced, answer.unpriced.length
        ? `Unpriced (no rate in the operator's [rates], so they cost nothing here): ${answer.unpriced.join(", ")}.` : "");
      note.textContent = `${period[1]}: ${when(answer.from)} to ${when(answer.to)}; updated ${new Date().toLocaleTimeString()}`;
    } catch (error) {
      if (stopped) return;
      note.textContent = error.message;
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  renderButtons();
  load();
  return () => { stopped = true; clearTimeout(timer); controller.abort(); };
}
