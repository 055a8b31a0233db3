// One endpoint: its header (name, state) and tabs. The endpoint is read every few seconds and each
// tab is told, so the state, the replicas and the URL stay live.

import { call, paths } from "../api.js";
import { fill, h, statusLine } from "../dom.js";
import { stateBadge } from "../format.js";
import * as overview from "../tabs/overview.js";
import * as analytics from "../tabs/analytics.js";
import * as replicas from "../tabs/replicas.js";
import * as logs from "../tabs/logs.js";
import * as events from "../tabs/events.js";
import * as audit from "../tabs/audit.js";
import * as settings from "../tabs/settings.js";
import * as playground from "../tabs/playground.js";

const POLL_MS = 2000;
const TABS = [["overview", "Overview", overview], ["analytics", "Analytics", analytics], ["replicas", "Replicas", replicas],
  ["logs", "Logs", logs], ["events", "Events", events], ["audit", "Audit", audit], ["settings", "Settings", settings],
  ["playground", "Playground", playground]];

export function render(root, ctx, ns, name, tab) {
  const entry = TABS.find(([key]) => key === tab) || TABS[0];
  const badge = h("span", {});
  const status = statusLine();
  const base = `#/endpoint/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
  const nav = h("nav", { class: "tabs", "aria-label": "Endpoint views" }, TABS.map(([key, label]) =>
    h("a", { href: `${base}/${key}`, "aria-current": key === entry[0] ? "page" : undefined }, label)));
  const panel = h("section", { class: "panel", "aria-label": entry[1] });
  fill(root, h("div", {}, h("p", { class: "crumbs" }, h("a", { href: "#/endpoints" }, "Endpoints"), ` / ${ns} /`),
    h("div", { class: "title-row" }, h("h1", {}, name), badge), nav, status, panel));

  let current = null;
  let stopped = false;
  let timer = null;
  const controller = new AbortController();
  let seen = "";
  const env = { ctx, ns, name, get endpoint() { return current; }, refresh: () => poll() };
  const view = entry[2].mount(panel, env) || {};

  async function poll() {
    clearTimeout(timer);
    try {
      current = await call("GET", paths.endpoint(ns, name), { signal: controller.signal });
      const text = JSON.stringify(current);
      status.textContent = "";
      if (text !== seen) { // redraw only what changed: focus and selections survive the polls
        seen = text;
        fill(badge, stateBadge(current.status));
        view.update?.(current);
      }
    } catch (error) {
      if (stopped) return;
      status.textContent = error.status === 404 ? `Endpoint ${ns}/${name} does not exist (any more).` : error.message;
      if (error.status === 404) { seen = ""; view.update?.(null); }
    }
    if (!stopped) timer = setTimeout(poll, POLL_MS);
  }
  poll();
  return () => { stopped = true; clearTimeout(timer); controller.abort(); view.stop?.(); };
}
