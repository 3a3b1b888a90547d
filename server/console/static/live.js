// The live wallboard: the load summary (active calls, each scheduler's batch sizes and
// queue waits) and one row per call in progress, from /api/calls/stream.

import { api } from "./api.js";
import { el } from "./dom.js";
import { duration, ms } from "./format.js";

const SCHEDULERS = { vad: "Voice activity", stt: "Speech to text", llm: "Language model" };

export function renderLive(root, me) {
  const active = el("span", { id: "active-calls", class: "big-number", text: "–" });
  const transports = el("span", { id: "by-transport", class: "muted" });
  const draining = el("span", { id: "draining", class: "badge warn", hidden: true,
    text: "Draining: no new calls" });
  const schedulers = el("tbody", { id: "schedulers-body" });
  const status = el("span", { id: "live-status", class: "muted", text: "Connecting…" });
  const body = el("tbody", { id: "calls-body" });
  const columns = ["Caller", "Transport", "Profile", ...(me.operator ? ["Tenant"] : []),
    "State", "Duration", "Turns", "Last voice to voice", "Fallbacks", "Recording"];

  root.replaceChildren(
    el("section", { id: "load", class: "load", "aria-label": "Load" },
      el("div", { class: "card stat" }, el("h3", { text: "Active calls" }), active, transports,
        draining),
      el("div", { class: "card schedulers" }, el("h3", { text: "Schedulers" }),
        el("table", { id: "schedulers" },
          el("thead", {}, el("tr", {}, ["", "Batch now", "Batch mean", "Batch max",
            "Queue wait p50", "Queue wait p95"].map((h) => el("th", { scope: "col", text: h })))),
          schedulers))),
    el("section", { class: "card" },
      el("div", { class: "section-head" }, el("h2", { text: "Calls in progress" }), status),
      el("table", { id: "calls", class: "calls" },
        el("thead", {}, el("tr", {}, columns.map((h) => el("th", { scope: "col", text: h })))),
        body)));

  const rows = new Map();  // session id -> <tr>, updated in place (focus and clicks survive)

  function show(data) {
    const load = data.load || {};
    active.textContent = String(load.active_calls ?? 0);
    const by = Object.entries(load.by_transport || {}).filter(([, n]) => n);
    transports.textContent = by.map(([name, n]) => `${name} ${n}`).join(" · ");
    draining.hidden = !load.draining;
    schedulers.replaceChildren(...(load.schedulers || []).map((s) => el("tr",
      { "data-scheduler": s.name },
      el("th", { scope: "row", text: SCHEDULERS[s.name] || s.name }),
      // "now": the mean batch since the server last looked (about a second)
      el("td", { "data-field": "batch_size_now",
        text: fixed(s.batch_size_now ?? s.batch_size_p50) }),
      el("td", { "data-field": "batch_size_mean", text: fixed(s.batch_size_mean) }),
      el("td", { "data-field": "batch_size_max", text: String(s.batch_size_max ?? 0) }),
      el("td", { "data-field": "queue_wait_ms_p50", text: ms(s.queue_wait_ms_p50) }),
      el("td", { "data-field": "queue_wait_ms_p95", text: ms(s.queue_wait_ms_p95) }))));

    const calls = data.calls || [];
    const seen = new Set();
    for (const call of calls) {
      seen.add(call.session_id);
      let row = rows.get(call.session_id);
      if (!row) {
        row = newRow(call.session_id);
        rows.set(call.session_id, row);
      }
      fill(row, call, me);
      body.append(row);  // moves it into the server's order
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.remove();
        rows.delete(id);
      }
    }
    body.querySelector("tr.empty")?.remove();
    if (!calls.length) {
      body.append(el("tr", { class: "empty" }, el("td", { colspan: columns.length,
        text: "No calls in progress." })));
    }
  }

  const stream = new EventSource("/api/calls/stream");
  stream.addEventListener("open", () => { status.textContent = "Live"; });
  stream.addEventListener("calls", (event) => {
    status.textContent = "Live";
    show(JSON.parse(event.data));
  });
  stream.addEventListener("error", () => {
    status.textContent = "Reconnecting…";
    if (stream.readyState === EventSource.CLOSED) {
      // The server refused the stream (an expired session answers 401): ask why, which
      // sends the page to the login form when that is the reason.
      api("/api/me").then(() => { status.textContent = "Disconnected: reload the page."; },
        () => {});
    }
  });
  return () => stream.close();
}

function fixed(value) {
  return (Number(value) || 0).toFixed(1);
}

function newRow(sessionId) {
  const open = () => { location.hash = `#/call/${encodeURIComponent(sessionId)}`; };
  const row = el("tr", { class: "call-row", tabindex: 0, "data-session-id": sessionId,
    onclick: open,
    onkeydown: (e) => { if (e.key === "Enter") open(); } });
  return row;
}

function fill(row, call, me) {
  row.dataset.state = call.state || "";
  const link = el("a", { href: `#/call/${encodeURIComponent(call.session_id)}`,
    text: call.caller || call.call_id || call.session_id });
  const cells = [
    ["caller", link],
    ["transport", call.transport],
    ["profile", call.profile],
    ...(me.operator ? [["tenant", call.tenant]] : []),
    ["state", el("span", { class: `state state-${call.state}`, text: call.state })],
    ["duration", duration(call.duration_s)],
    ["turns", String(call.turns ?? 0)],
    ["last_voice_to_voice_ms", call.last_voice_to_voice_ms ? ms(call.last_voice_to_voice_ms) : "–"],
    ["fallbacks", String(call.fallbacks ?? 0)],
    ["recording", call.recording ? "● recording" : ""],
  ];
  row.replaceChildren(...cells.map(([name, value]) => el("td", { "data-field": name }, value)));
  if (call.fallbacks) row.querySelector('[data-field="fallbacks"]').classList.add("warn-text");
}
