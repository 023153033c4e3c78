// ketch's dashboard: one page, hash routes, data from /dashboard/api, live updates from
// /dashboard/events (server-sent events). Text from the server is always set as text,
// never as HTML: function names, logs and reprs are other people's strings.
"use strict";

const main = document.getElementById("main");
let stream = null; // the page's EventSource, closed when the route changes
let timer = null;
let routeGen = 0; // bumped by every route change: a page whose data came late does not render

// Replace the page's content, unless the user has gone to another page meanwhile.
function show(gen, ...nodes) {
  if (gen === routeGen) main.replaceChildren(...nodes);
  return gen === routeGen;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "onclick") node.addEventListener("click", v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function get(what, params) {
  const q = new URLSearchParams(params || {}).toString();
  const r = await fetch(`/dashboard/api/${what}${q ? "?" + q : ""}`, { credentials: "same-origin" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function live(path, onData) {
  stream = new EventSource(path);
  stream.onopen = () => document.getElementById("live").classList.add("on");
  stream.onerror = () => document.getElementById("live").classList.remove("on");
  stream.onmessage = (e) => onData(JSON.parse(e.data));
}

const ago = (ts) => {
  if (!ts) return "-";
  const s = Date.now() / 1000 - ts;
  if (s < 60) return `${Math.max(0, Math.round(s))}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
};
const money = (x) => (x === null || x === undefined ? "-" : `$${Number(x).toFixed(4)}`);
const secs = (x) => (x === null || x === undefined ? "-" : x < 1 ? `${(x * 1000).toFixed(0)} ms` : `${x.toFixed(2)} s`);
const link = (href, text) => el("a", { href }, text);

function table(headers, rows, numeric) {
  numeric = numeric || [];
  return el(
    "table",
    {},
    el("tr", {}, headers.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : "" }, h))),
    rows.map((r) => el("tr", {}, r.map((c, i) => el("td", { class: numeric.includes(i) ? "num" : "" }, c)))),
  );
}

// An SVG bar chart of [label, value] pairs: a chart, not a table of numbers.
function barChart(points, opts) {
  const w = 640, h = 160, pad = 28;
  const max = Math.max(1e-9, ...points.map((p) => p[1]));
  const bw = (w - 2 * pad) / Math.max(points.length, 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", "100%");
  svg.setAttribute("data-points", String(points.length));
  const add = (tag, attrs, text) => {
    const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
  };
  points.forEach(([label, v], i) => {
    const bh = ((h - 2 * pad) * v) / max;
    add("rect", { class: "bar", x: pad + i * bw + 1, y: h - pad - bh, width: Math.max(bw - 2, 1), height: bh }, undefined);
    if (points.length <= 14 || i % Math.ceil(points.length / 8) === 0)
      add("text", { x: pad + i * bw, y: h - 8 }, label);
  });
  const top = points.some((p) => p[1] > 0) ? max : 0;
  add("text", { x: 2, y: pad - 6 }, `${opts.unit || ""}${opts.fmt ? opts.fmt(top) : top}`);
  return svg;
}

// -- pages ------------------------------------------------------------------------------

async function appsPage(gen) {
  show(gen, el("h1", {}, "Apps"), el("div", { id: "apps" }, "Loading…"));
  let last = null; // the previous reading: inputs per second come from two of them
  const render = (data) => {
    const before = last ? Object.fromEntries(last.apps.map((a) => [a.app_id, a.inputs_total])) : {};
    const dt = last ? data.at - last.at : 0;
    const rows = data.apps.map((a) => [
      link(`#/app/${encodeURIComponent(a.name)}`, a.name),
      el("span", { class: a.state === "running" ? "ok" : "muted" }, a.state),
      a.deployed ? `deployed${a.version ? " v" + a.version : ""}` : "ephemeral",
      String(a.n_containers),
      dt > 0 && a.app_id in before ? ((a.inputs_total - before[a.app_id]) / dt).toFixed(1) : "-",
      el("span", { class: a.errors_total ? "bad" : "" }, String(a.errors_total)),
      money(a.cost_today),
      ago(a.created_at),
    ]);
    last = data;
    document.getElementById("apps").replaceChildren(
      table(["app", "state", "kind", "containers", "calls/s", "errors", "cost today", "created"], rows, [3, 4, 5, 6]),
    );
  };
  const first = await get("apps");
  if (gen !== routeGen) return;
  render(first);
  live("/dashboard/events/apps", render);
}

async function appPage(gen, name) {
  const a = await get("app", { name });
  const parts = [el("h1", {}, `${a.name} `, el("span", { class: "muted" }, `${a.state}, ${a.deployed ? "deployed" : "ephemeral"}${a.version ? ", v" + a.version : ""}`))];
  parts.push(el("div", { class: "card" }, `cost today ${money(a.cost_today)}`, a.budget_per_day !== null ? ` of a $${a.budget_per_day.toFixed(2)}/day budget` : "", ` · ${a.n_containers} container(s)`, " · ", link(`#/logs?app=${encodeURIComponent(a.name)}`, "logs")));
  for (const f of a.functions) {
    const points = [];
    for (let m = 0; m < a.minutes; m++) {
      const minute = a.minute0 + m;
      const d = new Date(minute * 60000);
      points.push([`${d.getHours()}:${String(d.getMinutes()).padStart(2, "0")}`, f.per_minute[minute] || 0]);
    }
    parts.push(el("h2", {}, f.tag));
    parts.push(el("div", { class: "card" }, `latency p50 ${secs(f.p50_s)} · p99 ${secs(f.p99_s)} (${f.samples} calls) · queue time mean ${secs(f.queue_mean_s)} · cold starts ${f.cold_starts}${f.cold_start_mean_s ? ", mean " + secs(f.cold_start_mean_s) : ""} · `, el("span", { class: f.failures ? "bad" : "" }, `${f.failures} failed`)));
    parts.push(el("div", { class: "calls-chart", "data-function": f.tag }, barChart(points, { unit: "calls/min ≤ " })));
  }
  const urls = Object.entries(a.web_urls || {});
  if (urls.length) parts.push(el("h2", {}, "Web endpoints"), table(["endpoint", "URL"], urls.map(([k, v]) => [k, el("a", { href: v }, v)])));
  if ((a.schedules || []).length)
    parts.push(el("h2", {}, "Schedules"), table(["function", "next run", "last run"], a.schedules.map((s) => [s.tag, s.next_at ? new Date(s.next_at * 1000).toLocaleString() : "-", s.last ? `${s.last.status} ${ago(s.last.at)}` : "-"])));
  const gpuText = (c) => (c.gpus.length ? c.gpus.map((g) => `#${g.index} ${g.utilization === null ? "?" : Math.round(g.utilization * 100) + "%"}`).join(", ") : "-");
  parts.push(el("h2", {}, "Containers"), table(["container", "function", "state", "CPU s", "memory MiB", "GPUs", "started"], a.containers.map((c) => [c.container_id, c.function || "", c.state || "", c.cpu_s === null ? "-" : c.cpu_s.toFixed(1), c.memory_bytes === null ? "-" : (c.memory_bytes / 1048576).toFixed(0), gpuText(c), ago(c.started_at)]), [3, 4]));
  parts.push(el("h2", {}, "Recent calls"), callsTable(a.calls));
  if (a.versions.length)
    parts.push(el("h2", {}, "Versions"), table(["version", "deployed", "source", "note", "roll back"], a.versions.map((v) => [`v${v.version}`, ago(v.created_at), v.source_hash, v.note, el("code", { class: "cmd" }, `ketch app rollback ${a.name} v${v.version}`)])));
  if (show(gen, ...parts)) timer = setTimeout(() => route(), 5000);
}

function callsTable(calls) {
  return table(
    ["call", "function", "kind", "ok", "failed", "cost", "created"],
    calls.map((c) => [link(`#/call/${c.call_id}`, c.call_id), c.function + (c.method ? "." + c.method : ""), c.kind, String(c.succeeded), el("span", { class: c.failed ? "bad" : "" }, String(c.failed)), money(c.cost), ago(c.created_at)]),
    [3, 4, 5],
  );
}

async function callPage(gen, id) {
  const c = await get("call", { id });
  const parts = [el("h1", {}, `${c.call_id} `, el("span", { class: "muted" }, `${c.app} / ${c.function}${c.method ? "." + c.method : ""}`))];
  parts.push(el("div", { class: "card" }, `${c.kind}, ${c.n_inputs ?? "?"} input(s) · code version ${c.version || "-"} · created ${new Date(c.created_at * 1000).toLocaleString()}`, c.usage ? ` · ${money(c.usage.cost)} for ${secs(c.usage.seconds)} of container time` : ""));
  for (const r of c.results) {
    const failed = r.status !== "success";
    parts.push(el("h2", {}, `input ${r.idx}: `, el("span", { class: failed ? "bad" : "ok" }, r.status)));
    parts.push(el("div", { class: "card timeline" }, `queued ${new Date(c.created_at * 1000).toLocaleTimeString()} → finished after ${secs(r.at - c.created_at)}`));
    if (r.args !== undefined) parts.push(el("div", {}, "arguments: ", el("code", {}, `(${r.args})`)));
    if (r.result !== undefined) parts.push(el("div", {}, "result: ", el("code", {}, r.result)));
    if (r.traceback) parts.push(el("pre", { class: "traceback" }, r.traceback));
    if (r.container) parts.push(el("div", { class: "muted" }, `container ${r.container}`));
    if (failed)
      parts.push(el("div", { class: "card replay" }, el("button", { id: "replay", onclick: () => replay(c.call_id) }, "Replay"), " with the code that ran it, or locally: ", el("code", { class: "cmd" }, `ketch call replay ${c.call_id} --local --pdb`), el("span", { id: "replayed" }, "")));
  }
  const retried = c.inputs.filter((i) => i.attempts > 0);
  if (retried.length) parts.push(el("div", { class: "card" }, `retried: ${retried.map((i) => `input ${i.idx} × ${i.attempts}`).join(", ")}`));
  parts.push(el("h2", {}, "Logs"), el("pre", { class: "logs call-logs" }, c.logs.map((l) => l.text).join("") || "(no output)"));
  show(gen, ...parts);
}

async function replay(callId) {
  const out = document.getElementById("replayed");
  out.textContent = " replaying…";
  const r = await fetch(`/dashboard/replay?id=${encodeURIComponent(callId)}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-Ketch-Dashboard": "1" },
  });
  const body = await r.json();
  if (!r.ok) {
    out.textContent = ` ${body.error || r.statusText}`;
    return;
  }
  out.replaceChildren(" → ", link(`#/call/${body.call_id}`, body.call_id));
}

async function logsPage(gen, params) {
  const form = el("form", { class: "filters" });
  for (const [k, ph] of [["app", "app (required)"], ["search", "search text"], ["function", "function"], ["call", "call fc-…"], ["container", "container ta-…"]])
    form.append(el("input", { name: k, placeholder: ph, value: params.get(k) || "" }));
  form.append(el("button", { type: "submit" }, "Follow"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams(new FormData(form));
    for (const [k, v] of [...q.entries()]) if (!v) q.delete(k);
    location.hash = `#/logs?${q}`;
  });
  const out = el("pre", { class: "logs", id: "log-lines" }, "");
  show(gen, el("h1", {}, "Logs"), form, out);
  if (!params.get("app")) {
    out.textContent = "Name an app to follow its output.";
    return;
  }
  const q = Object.fromEntries(params.entries());
  const first = await get("logs", q);
  if (gen !== routeGen) return;
  out.textContent = first.logs.map((l) => `[${l.tag || ""}] ${l.text}`).join("");
  live(`/dashboard/events/logs?${new URLSearchParams(q)}`, (data) => {
    for (const l of data.logs) out.append(document.createTextNode(`[${l.tag || ""}] ${l.text}`));
    out.scrollTop = out.scrollHeight;
  });
}

async function containersPage(gen) {
  const d = await get("containers");
  const shown = show(gen, 
    el("h1", {}, "Containers"),
    table(["container", "app", "function", "state", "started"], d.containers.map((c) => [c.container_id, c.app_name || "", c.function || "", c.state || "", ago(c.started_at)])),
    el("h2", {}, "Sandboxes"),
    table(["sandbox", "app", "name", "created"], d.sandboxes.map((s) => [s.sandbox_id, s.app_id || "", s.name || "", ago(s.created_at)])),
  );
  if (shown) timer = setTimeout(() => route(), 5000);
}

async function objectsPage(gen) {
  const d = await get("objects");
  const parts = [el("h1", {}, "Volumes, Dicts, Queues, Secrets")];
  for (const [kind, title] of [["volume", "Volumes"], ["dict", "Dicts"], ["queue", "Queues"], ["secret", "Secrets (names only)"]])
    parts.push(el("h2", {}, title), table(["name", "id", "size", "created"], d[kind].map((o) => [o.name, o.object_id, o.size ?? "", ago(o.created_at)])));
  show(gen, ...parts);
}

async function usagePage(gen) {
  const [byDay, byFn] = await Promise.all([get("usage", { by: "day" }), get("usage", { by: "function" })]);
  show(gen, 
    el("h1", {}, "Usage"),
    el("div", { class: "usage-chart" }, barChart(byDay.rows.map((r) => [r.day.slice(5), r.cost]), { unit: "$ ≤ ", fmt: (x) => x.toFixed(4) })),
    el("h2", {}, "By function"),
    table(["app", "function", "seconds", "CPU core-s", "memory GiB-s", "GPU s", "cost"], byFn.rows.map((r) => [r.app, r.tag, r.seconds.toFixed(1), r.cpu_s.toFixed(1), r.mem_gib_s.toFixed(1), r.gpu_s.toFixed(1), money(r.cost)]), [2, 3, 4, 5, 6]),
    el("p", { class: "muted" }, `rates: $${byDay.rates.cpu_core}/core-s, $${byDay.rates.memory_gib}/GiB-s; GPUs per second by type (config.toml [rates])`),
  );
}

async function route() {
  if (stream) stream.close(), (stream = null);
  if (timer) clearTimeout(timer), (timer = null);
  document.getElementById("live").classList.remove("on");
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const gen = ++routeGen;
  try {
    if (parts[0] === "app") await appPage(gen, parts[1]);
    else if (parts[0] === "call") await callPage(gen, parts[1]);
    else if (parts[0] === "logs") await logsPage(gen, params);
    else if (parts[0] === "containers") await containersPage(gen);
    else if (parts[0] === "objects") await objectsPage(gen);
    else if (parts[0] === "usage") await usagePage(gen);
    else await appsPage(gen);
  } catch (err) {
    show(gen, el("h1", {}, "Error"), el("p", { class: "bad" }, String(err.message || err)));
  }
}

window.addEventListener("hashchange", route);
route();
