// Analytics: the endpoint's series from GET …/metrics, drawn with uPlot (vendored). Each graph has
// a text summary beside it, for screen readers and for a quick read.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { call, paths } from "../api.js";
import { fill, h } from "../dom.js";
import { bytes } from "../format.js";

const RANGES = [["15m", "15 min", 900, 10], ["1h", "1 h", 3600, 30], ["24h", "24 h", 86400, 300],
  ["30d", "30 d", 30 * 86400, 3600]];
const REFRESH_MS = 5000;
const COLOURS = ["#1b7f3b", "#b26b00", "#c0262d", "#2f5fb3", "#7a3fb0"];

const GRAPHS = [
  { key: "requests", title: "Requests by status class", unit: "requests per step",
    series: (s) => [["2xx", s.requests?.["2xx"]], ["4xx", s.requests?.["4xx"]], ["5xx", s.requests?.["5xx"]]],
    summary: (s) => `total ${sum(s.requests?.total)} (2xx ${sum(s.requests?.["2xx"])}, 4xx ${sum(s.requests?.["4xx"])}, `
      + `5xx ${sum(s.requests?.["5xx"])})`, bars: true },
  { key: "pending", title: "Pending requests", series: (s) => [["pending", s.pending_requests]],
    summary: (s) => `latest ${fmt(last(s.pending_requests))}, peak ${fmt(peak(s.pending_requests))}` },
  { key: "latency", title: "Latency (ms)",
    series: (s) => ["p50", "p90", "p95", "p99"].map((q) => [q, (s.latency_seconds?.[q] || []).map((v) => (v == null ? null : v * 1000))]),
    summary: (s) => `p50 ${ms(last(s.latency_seconds?.p50))}, p99 ${ms(last(s.latency_seconds?.p99))} (latest step with requests)` },
  { key: "replicas", title: "Running replicas against max",
    series: (s) => [["running", s.running_replicas], ["max", s.max_replicas]],
    summary: (s) => `running ${fmt(last(s.running_replicas))} of max ${fmt(last(s.max_replicas))}` },
  { key: "cpu", title: "CPU (%)", series: (s) => [["CPU", s.cpu_usage_percent]],
    summary: (s) => `latest ${fmt(last(s.cpu_usage_percent))} %` },
  { key: "memory", title: "Memory", series: (s) => [["memory", s.memory_usage_bytes]], bytes: true,
    summary: (s) => `latest ${bytes(last(s.memory_usage_bytes))}` },
  { key: "gpu", title: "GPU (%)", series: (s) => [["GPU", s.gpu_usage_percent]],
    summary: (s) => (last(s.gpu_usage_percent) == null ? "no GPU reported" : `latest ${fmt(last(s.gpu_usage_percent))} %`) },
  { key: "vram", title: "VRAM", series: (s) => [["VRAM", s.gpu_memory_usage_bytes]], bytes: true,
    summary: (s) => (last(s.gpu_memory_usage_bytes) == null ? "no GPU reported" : `latest ${bytes(last(s.gpu_memory_usage_bytes))}`) },
];

function sum(values) { return (values || []).reduce((a, v) => a + (v || 0), 0); }
function last(values) { for (let i = (values || []).length - 1; i >= 0; i -= 1) if (values[i] != null) return values[i]; return null; }
function peak(values) { const v = (values || []).filter((x) => x != null); return v.length ? Math.max(...v) : null; }
function fmt(v) { return v == null ? "–" : Number.isInteger(v) ? String(v) : v.toFixed(2); }
function ms(v) { return v == null ? "–" : `${(v * 1000).toFixed(1)} ms`; }

export function mount(el, env) {
  let range = RANGES[0];
  let charts = [];
  let timer = null;
  let stopped = false;
  const controller = new AbortController();
  const buttons = h("div", { class: "segmented", role: "group", "aria-label": "Time range" });
  const grid = h("div", { class: "charts" });
  const note = h("p", { class: "muted", role: "status" });
  const boxes = GRAPHS.map((g) => {
    const plot = h("div", { class: "plot" });
    const summary = h("p", { class: "summary", dataset: { graph: g.key } });
    const box = h("figure", { class: "chart", dataset: { graph: g.key } }, h("figcaption", {}, g.title), plot, summary);
    grid.append(box);
    return { g, plot, summary };
  });
  fill(el, buttons, note, grid);

  function renderButtons() {
    fill(buttons, RANGES.map((r) => h("button", { type: "button", "aria-pressed": r === range ? "true" : "false",
      onclick: () => { range = r; renderButtons(); load(); } }, r[1])));
  }

  function draw(answer) {
    for (const c of charts) c.destroy();
    charts = [];
    const times = answer.timestamps || [];
    for (const { g, plot, summary } of boxes) {
      const series = g.series(answer.series || {});
      summary.textContent = g.summary(answer.series || {});
      const width = Math.max(240, plot.clientWidth || 320);
      const opts = {
        width, height: 160, legend: { show: true },
        scales: { x: { time: true } },
        axes: [{}, { values: (u, ticks) => ticks.map((t) => (g.bytes ? bytes(t) : fmt(t))), size: g.bytes ? 84 : 60 }],
        series: [{}, ...series.map(([label], i) => ({
          label, stroke: COLOURS[i % COLOURS.length], width: 2,
          fill: g.bars ? `${COLOURS[i % COLOURS.length]}33` : undefined,
          paths: g.bars ? uPlot.paths.bars({ size: [0.8, 40] }) : undefined,
        }))],
      };
      const data = [times, ...series.map(([, values]) => (values || []).map((v) => (v == null ? null : v)))];
      charts.push(new uPlot(opts, data, plot));
    }
  }

  async function load() {
    clearTimeout(timer);
    const to = Date.now() / 1000;
    try {
      const answer = await call("GET", paths.metrics(env.ns, env.name,
        { from: String(Math.floor(to - range[2])), to: String(Math.ceil(to)), step: String(range[3]) }),
      { signal: controller.signal });
      note.textContent = `${range[1]} at ${answer.step} s per point; updated ${new Date().toLocaleTimeString()}`;
      draw(answer);
    } catch (error) {
      if (stopped) return;
      note.textContent = error.message;
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  const resize = new ResizeObserver(() => {
    for (const [i, c] of charts.entries()) c.setSize({ width: Math.max(240, boxes[i].plot.clientWidth), height: 160 });
  });
  resize.observe(grid);
  renderButtons();
  load();
  return { stop() { stopped = true; clearTimeout(timer); controller.abort(); resize.disconnect(); for (const c of charts) c.destroy(); } };
}
