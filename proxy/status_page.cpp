#include "proxy/status_page.h"

namespace pgvalve::proxy {

namespace {

constexpr std::string_view kPage = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgvalve status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2125; background: #fff; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #e3e6e8; vertical-align: top; }
  th { background: #f4f5f7; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  td.sql { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap; word-break: break-word; }
  .up { color: #1a7f37; font-weight: 600; } .down { color: #cf222e; font-weight: 600; }
  .warn { color: #9a6700; font-weight: 600; }
  .bar { background: #e3e6e8; width: 8em; height: .8em; display: inline-block; vertical-align: middle; }
  .bar > span { background: #0969da; height: 100%; display: block; }
  #meta { color: #57606a; } #error { color: #cf222e; font-weight: 600; }
</style>
</head>
<body>
<h1>pgvalve</h1>
<div id="meta">loading /status ...</div>
<div id="error"></div>
<h2>Hosts</h2>
<table id="hosts"><thead><tr><th>database</th><th>shard</th><th>host</th><th>role</th><th>state</th><th>takes</th><th>lag</th><th>failures</th><th>last error</th></tr></thead><tbody></tbody></table>
<h2>Pools</h2>
<table id="pools"><thead><tr><th>database</th><th>user</th><th>host</th><th>in use</th><th>saturation</th><th>waiting</th><th>longest wait</th><th>clients</th></tr></thead><tbody></tbody></table>
<h2>Statements by total time</h2>
<table id="queries"><thead><tr><th>query</th><th>calls</th><th>total ms</th><th>mean ms</th><th>p95 ms</th><th>errors</th><th>on replicas</th></tr></thead><tbody></tbody></table>
<h2>Slow statements</h2>
<table id="slow"><thead><tr><th>when</th><th>database</th><th>user</th><th>host</th><th>ms</th><th>query</th><th>advice</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function fill(id, items, render) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    render(row, item);
    body.appendChild(row);
  }
  if (items.length === 0) {
    const row = document.createElement("tr");
    cell(row, "none").colSpan = 9;
    body.appendChild(row);
  }
}
function ms(v) { return v === null || v === undefined ? "" : Number(v).toFixed(2); }
function render(s) {
  document.getElementById("meta").textContent =
    "version " + s.version + " \u00b7 " + s.clients + " client connections \u00b7 " +
    s.failovers + " failovers since start" + (s.draining ? " \u00b7 shutting down" : "") +
    ((s.paused || []).length ? " \u00b7 paused: " + s.paused.join(", ") : "") +
    ((s.disabled || []).length ? " \u00b7 disabled: " + s.disabled.join(", ") : "") +
    " \u00b7 updated " + new Date().toLocaleTimeString();
  fill("hosts", s.hosts || [], (r, h) => {
    cell(r, h.database); cell(r, h.shard); cell(r, h.host); cell(r, h.role);
    cell(r, h.state, h.state === "up" ? "up" : h.state === "down" ? "down" : "warn");
    cell(r, h.writable ? "writes" : h.readable ? "reads" : "nothing");
    cell(r, h.lag_ms === null ? "" : h.lag_ms + " ms (" + h.lag_bytes + " B)", "num");
    cell(r, h.failures, "num"); cell(r, h.last_error);
  });
  fill("pools", s.pools || [], (r, p) => {
    cell(r, p.database); cell(r, p.user); cell(r, p.host);
    cell(r, p.checked_out + " / " + p.size, "num");
    const used = p.size > 0 ? Math.min(1, p.checked_out / p.size) : 0;
    const bar = document.createElement("span"); bar.className = "bar";
    const fillbar = document.createElement("span"); fillbar.style.width = (used * 100) + "%";
    bar.appendChild(fillbar);
    cell(r, "").appendChild(bar);
    cell(r, p.waiting, p.waiting > 0 ? "num warn" : "num");
    cell(r, ms(p.max_wait_us / 1000) + " ms", "num"); cell(r, p.clients, "num");
  });
  fill("queries", s.queries || [], (r, q) => {
    cell(r, q.query, "sql"); cell(r, q.calls, "num"); cell(r, ms(q.total_ms), "num");
    cell(r, ms(q.mean_ms), "num"); cell(r, ms(q.p95_ms), "num");
    cell(r, q.errors, q.errors > 0 ? "num warn" : "num");
    cell(r, q.calls > 0 ? Math.round(100 * q.replica_calls / q.calls) + "%" : "", "num");
  });
  fill("slow", s.slow_queries || [], (r, q) => {
    cell(r, new Date(q.at_unix_ms).toLocaleTimeString()); cell(r, q.database); cell(r, q.user);
    cell(r, q.host); cell(r, ms(q.duration_ms), "num"); cell(r, q.query, "sql"); cell(r, q.advice);
  });
}
async function refresh() {
  try {
    const response = await fetch("/status", { cache: "no-store" });
    if (!response.ok) {
      throw new Error("/status answered " + response.status + ": " + (await response.text()));
    }
    render(await response.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "pgvalve is not answering: " + e.message;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
)HTML";

}  // namespace

std::string_view status_page_html() {
  return kPage;
}

}  // namespace pgvalve::proxy
