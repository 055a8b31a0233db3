// How API values are shown: states, engines, hardware, times.

import { h } from "./dom.js";

// Wire states (docs/wire-format.md §7) and the colour class each is drawn with.
export const STATES = ["pending", "initializing", "updating", "updateFailed", "running", "paused", "failed", "scaledToZero"];
const TONE = { running: "ok", scaledToZero: "idle", paused: "idle", failed: "bad", updateFailed: "bad",
  pending: "busy", initializing: "busy", updating: "busy" };

/** A coloured state badge with the status message on hover (and for screen readers). */
export function stateBadge(status) {
  const state = status?.state || "unknown";
  const message = status?.message || "";
  return h("span", { class: ["badge", `tone-${TONE[state] || "idle"}`], title: message, "data-state": state,
    "aria-label": message ? `${state}: ${message}` : state }, state);
}

export function variant(endpoint) {
  const image = endpoint?.model?.image || {};
  return Object.keys(image)[0] || "";
}

export function engineText(endpoint) {
  const name = variant(endpoint);
  if (name === "custom") return `custom (${endpoint.model.image.custom.url || "?"})`;
  return name;
}

export function hardwareText(endpoint) {
  const c = endpoint?.compute || {};
  return `${c.accelerator || "?"} · ${c.instanceType || "?"} · ${c.instanceSize || "?"}`;
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function ago(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const s = Math.max(0, Math.round((Date.now() - date.getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** What a long wait is doing, from the status message: image pulls, downloads, start-up. */
export function progressOf(status) {
  if (!status || !["pending", "initializing", "updating"].includes(status.state)) return null;
  const message = status.message || "";
  // The launcher's steps (autoscaler/control/launcher.py): "fetching model artifacts of …: A MiB of B MiB (N %)",
  // "pulling image …: K of L layers done, A MiB of B MiB downloaded (N %)" (engines/progress.py),
  // "starting replica …", "waiting for …". The bar is the message's "(N %)".
  let what = "Starting";
  if (/^fetching model artifacts|model download/i.test(message)) what = "Downloading the model";
  else if (/^pulling image/i.test(message)) what = "Pulling the image";
  else if (/^waiting for replica/i.test(message)) what = "Waiting for the engine to answer its health route";
  else if (status.state === "initializing") what = "Initializing";
  else if (status.state === "updating") what = "Updating";
  else if (status.state === "pending") what = "Waiting for a place to run";
  const percent = message.match(/(\d{1,3}(?:\.\d+)?)\s?%/);
  return { what, message, percent: percent ? Math.min(100, Number(percent[1])) : null };
}

/** A progress block (a determinate bar when the message says a percentage). */
export function progressBlock(status) {
  const p = progressOf(status);
  if (!p) return null;
  const bar = h("progress", { max: 100, "aria-label": p.what });
  if (p.percent !== null) bar.value = p.percent;
  return h("div", { class: "progress", role: "status" }, h("strong", {}, `${p.what}…`), bar,
    p.message ? h("span", { class: "muted" }, p.message) : null);
}
