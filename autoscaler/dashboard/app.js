// The dashboard's shell: sign-in state, the namespace picker and a hash router. Each page is a
// module whose render(root, ctx) returns a function that stops what it started (polls, streams).

import { call, paths, token } from "./api.js";
import { fill, h } from "./dom.js";
import * as signin from "./pages/signin.js";
import * as endpoints from "./pages/endpoints.js";
import * as create from "./pages/create.js";
import * as endpoint from "./pages/endpoint.js";
import * as usage from "./pages/usage.js";

const NS_KEY = "endpointd.namespace";
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const picker = document.getElementById("namespace");
const who = document.getElementById("who");
let stop = () => {};

export const ctx = {
  me: null, // whoami-v2: {name, orgs: [{name}], isAdmin}
  get namespace() { return sessionStorage.getItem(NS_KEY) || this.me?.name || ""; },
  set namespace(ns) { sessionStorage.setItem(NS_KEY, ns); },
  seen: new Set(), // namespaces an admin has seen in a "*" listing: offered in the picker
  go(hash) { if (location.hash === hash) route(); else location.hash = hash; },
  refreshPicker() { renderPicker(); },
};

function namespaces() {
  const me = ctx.me;
  const own = [me.name, ...me.orgs.map((o) => o.name)];
  if (me.isAdmin) own.push("*", ...[...ctx.seen].sort());
  return [...new Set(own)];
}

function renderPicker() {
  if (!ctx.me) return;
  fill(picker, namespaces().map((ns) => h("option", { value: ns, selected: ns === ctx.namespace },
    ns === "*" ? "* (every namespace)" : ns)));
}

picker.addEventListener("change", () => {
  ctx.namespace = picker.value;
  ctx.go(location.hash.startsWith("#/usage") ? "#/usage" : "#/endpoints");
});

document.getElementById("signout").addEventListener("click", () => {
  token.clear();
  sessionStorage.removeItem(NS_KEY);
  ctx.me = null;
  ctx.go("#/signin");
});

window.addEventListener("endpointd:unauthenticated", () => {
  if (!ctx.me) return;
  token.clear();
  ctx.me = null;
  ctx.go("#/signin");
});

async function signedIn() {
  if (ctx.me) return true;
  if (!token.get()) return false;
  try {
    ctx.me = await call("GET", paths.whoami());
  } catch {
    token.clear();
    return false;
  }
  const allowed = namespaces();
  if (!allowed.includes(ctx.namespace) && !ctx.me.isAdmin) ctx.namespace = ctx.me.name;
  return true;
}

let routing = 0; // the latest navigation: an older one still waiting for whoami renders nothing

async function route() {
  stop();
  stop = () => {};
  const mine = ++routing;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map((part) => {
    try { return decodeURIComponent(part); } catch { return ""; } // a malformed %-escape: no such page
  });
  const known = await signedIn();
  if (mine !== routing) return;
  if (!known) {
    nav.hidden = true;
    stop = signin.render(main, ctx) || stop;
    return;
  }
  nav.hidden = false;
  who.textContent = `${ctx.me.name}${ctx.me.isAdmin ? " (admin)" : ""}`;
  renderPicker();
  for (const link of nav.querySelectorAll("a")) {
    link.toggleAttribute("aria-current", location.hash.startsWith(link.getAttribute("href")));
  }
  const [page, ns, name, tab] = parts;
  if (page === "new") stop = create.render(main, ctx) || stop;
  else if (page === "endpoint" && ns && name) stop = endpoint.render(main, ctx, ns, name, tab || "overview") || stop;
  else if (page === "endpoints") stop = endpoints.render(main, ctx) || stop;
  else if (page === "usage") stop = usage.render(main, ctx) || stop;
  else { location.replace("#/endpoints"); return; }
}

window.addEventListener("hashchange", route);
route();
