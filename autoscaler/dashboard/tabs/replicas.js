// Replicas: a timeline of each replica (pending → running → stopped), from GET …/replica, with
// the times as text beside each bar.

import { call, paths } from "../api.js";
import { fill, h } from "../dom.js";
import { when } from "../format.js";

const POLL_MS = 3000;

export function mount(el, env) {
  const list = h("div", { class: "timelines" });
  const note = h("p", { class: "muted", role: "status" });
  fill(el, h("p", { class: "legend" }, ["pending", "initializing", "running", "sleeping", "parked", "draining", "stopped", "failed"].map((s) =>
    h("span", { class: ["swatch", `phase-${s}`] }, s))), note, list);
  let timer = null;
  let stopped = false;
  const controller = new AbortController();

  function bar(replica, start, end) {
    const track = h("div", { class: "track", role: "img",
      "aria-label": replica.timeline.map((t) => `${t.state} at ${when(t.at)}`).join(", ") });
    const span = Math.max(end - start, 1);
    replica.timeline.forEach((step, i) => {
      const from = Date.parse(step.at);
      const to = i + 1 < replica.timeline.length ? Date.parse(replica.timeline[i + 1].at) : end;
      const seg = h("span", { class: ["segment", `phase-${step.state}`], title: `${step.state} from ${when(step.at)}` });
      seg.style.left = `${((from - start) / span) * 100}%`;
      seg.style.width = `${Math.max(((to - from) / span) * 100, 0.5)}%`;
      track.append(seg);
    });
    return track;
  }

  async function load() {
    try {
      const { items } = await call("GET", paths.replicas(env.ns, env.name), { signal: controller.signal });
      const now = Date.now();
      const times = items.flatMap((r) => r.timeline.map((t) => Date.parse(t.at))).filter((t) => !Number.isNaN(t));
      const start = times.length ? Math.min(...times) : now;
      note.textContent = items.length ? `${items.length} replicas, from ${when(new Date(start).toISOString())} to now`
        : "No replicas yet (stopped ones are kept for 24 h).";
      fill(list, items.map((r) => h("article", { class: "timeline", dataset: { replica: r.id } },
        h("h3", {}, h("code", {}, r.id), " ", h("span", { class: ["badge", `phase-${r.state}`] }, r.state),
          r.exitCode != null ? ` exit code ${r.exitCode}` : ""),
        bar(r, start, r.stoppedAt ? Math.max(Date.parse(r.stoppedAt), start) : now),
        h("p", { class: "muted" }, `created ${when(r.createdAt)}`, r.readyAt ? ` · ready ${when(r.readyAt)}` : "",
          r.stoppedAt ? ` · stopped ${when(r.stoppedAt)}` : "", r.gpus?.length ? ` · GPUs ${r.gpus.join(", ")}` : ""),
        r.message ? h("p", { class: "message" }, r.message) : null)));
    } catch (error) {
      if (stopped) return;
      note.textContent = error.message;
    }
    if (!stopped) timer = setTimeout(load, POLL_MS);
  }
  load();
  return { stop() { stopped = true; clearTimeout(timer); controller.abort(); } };
}
