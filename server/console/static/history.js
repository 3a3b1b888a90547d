// History: the call records, searched by time, tenant (operators), profile, end reason
// and text; and one record's timeline turn by turn, with its recording when it has one.

import { api } from "./api.js";
import { el, fields } from "./dom.js";
import { dateTime, duration, enumName, ms, offset, compactJson } from "./format.js";
import { latencyBar, stageTotal } from "./latency.js";

const REASONS = ["CALLER_HANGUP", "AGENT_HANGUP", "TRANSFERRED", "IDLE_TIMEOUT",
  "SERVER_SHUTDOWN", "MAX_DURATION", "GATEWAY_LOST"];

// `query`: the search in the page's address (#/history?profile=...), so a search can be
// bookmarked and the back button returns to it.
export function renderHistory(root, me, query) {
  const input = (name, attrs) => el("input", { id: `h-${name}`, name, value: query.get(name)
    ?? "", ...attrs });
  const reason = el("select", { id: "h-reason", name: "reason" },
    el("option", { value: "", text: "Any" }),
    REASONS.map((r) => el("option", { value: r, text: enumName(r),
      selected: query.get("reason") === r })));
  const controls = [
    ["since", "From", input("since", { type: "datetime-local" })],
    ["until", "To", input("until", { type: "datetime-local" })],
    ...(me.operator ? [["tenant", "Tenant", input("tenant", { type: "text" })]] : []),
    ["profile", "Profile", input("profile", { type: "text" })],
    ["reason", "End reason", reason],
    ["q", "Words said", input("q", { type: "search", placeholder: "e.g. refund" })],
  ];
  const form = el("form", { id: "history-form", class: "card search" },
    controls.map(([name, label, control]) => el("label", { for: `h-${name}` },
      el("span", { text: label }), control)),
    el("button", { id: "h-search", type: "submit", class: "primary", text: "Search" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) params.set(name, String(value));
    const qs = params.toString();
    const hash = `#/history${qs ? `?${qs}` : ""}`;
    if (location.hash === hash) search(); else location.hash = hash;
  });

  const columns = ["Started", "Duration", ...(me.operator ? ["Tenant"] : []), "Profile",
    "Transport", "End reason", "Turns", "Recording", "Caller said"];
  const body = el("tbody", { id: "history-body" });
  const status = el("span", { id: "history-status", class: "muted" });
  root.replaceChildren(form, el("section", { class: "card" },
    el("div", { class: "section-head" }, el("h2", { text: "Calls" }), status),
    el("table", { id: "history-results", class: "calls" },
      el("thead", {}, el("tr", {}, columns.map((h) => el("th", { scope: "col", text: h })))),
      body)));

  async function search() {
    const params = new URLSearchParams({ limit: "50" });
    for (const [name, value] of query) {
      if (!value) continue;
      // datetime-local is the supervisor's local time; the API takes unix seconds
      params.set(name, name === "since" || name === "until"
        ? String(Math.floor(new Date(value).getTime() / 1000)) : value);
    }
    status.textContent = "Searching…";
    let data;
    try {
      data = await api(`/api/history?${params}`);
    } catch (err) {
      status.textContent = err.message;
      return;
    }
    const records = data.records || [];
    status.textContent = `${records.length} call${records.length === 1 ? "" : "s"}`;
    body.replaceChildren(...records.map((r) => row(r, me)));
    if (!records.length) {
      body.append(el("tr", { class: "empty" }, el("td", { colspan: columns.length,
        text: "No call matches this search." })));
    }
  }
  search();
  return null;
}

function row(r, me) {
  const open = () => { location.hash = `#/record/${encodeURIComponent(r.session_id)}`; };
  return el("tr", { class: "call-row", tabindex: 0, "data-session-id": r.session_id,
    "data-reason": r.reason, onclick: open,
    onkeydown: (e) => { if (e.key === "Enter") open(); } },
  el("td", { "data-field": "started_at" }, el("a", {
    href: `#/record/${encodeURIComponent(r.session_id)}`, text: dateTime(r.started_at) })),
  el("td", { "data-field": "duration_s", text: duration(r.duration_s) }),
  ...(me.operator ? [el("td", { "data-field": "tenant", text: r.tenant })] : []),
  el("td", { "data-field": "profile", text: r.profile }),
  el("td", { "data-field": "transport", text: r.transport }),
  el("td", { "data-field": "reason", text: enumName(r.reason || "in progress") }),
  el("td", { "data-field": "turns", text: String(r.turns ?? 0) }),
  el("td", { "data-field": "recording", text: r.recording ? "yes" : "" }),
  el("td", { "data-field": "snippet", class: "snippet", text: r.snippet || "" }));
}

export function renderRecord(root, me, sessionId) {
  root.replaceChildren(el("p", { class: "muted", text: "Loading the record…" }));
  let gone = false;
  api(`/api/history/${encodeURIComponent(sessionId)}`, { quiet: true }).then((rec) => {
    if (!gone) showRecord(root, me, rec);
  }, (err) => {
    if (gone) return;
    root.replaceChildren(err.status === 404
      ? el("div", { id: "not-found", class: "card empty-state", "data-session-id": sessionId },
        el("h2", { text: "Record not found" }),
        el("p", { text: "No call record has this id among the calls you may see." }),
        el("p", {}, el("a", { href: "#/history", text: "Back to History" })))
      : el("p", { class: "form-error", role: "alert", text: err.message }));
  });
  return () => { gone = true; };
}

function showRecord(root, me, rec) {
  const turns = rec.turns || [];
  const scale = Math.max(0, ...turns.map(stageTotal));
  const timeline = el("ol", { id: "timeline", class: "transcript" },
    turns.filter((t) => !t.superseded_by || t.agent_text).map((t) => turnItem(t, scale)));
  const actions = rec.supervisor || [];
  const recording = rec.recording
    ? el("audio", { id: "recording", controls: true, preload: "metadata",
      src: `/api/history/${encodeURIComponent(rec.session_id)}/recording` })
    : el("p", { class: "muted", id: "no-recording", text: "This call was not recorded." });
  root.replaceChildren(
    el("section", { id: "record", class: "card", "data-session-id": rec.session_id },
      el("div", { class: "section-head" },
        el("h2", {}, "Call ", el("span", { class: "mono", text: rec.call_id })),
        el("span", { class: "state state-ended", "data-field": "reason",
          text: enumName(rec.reason || "in progress") })),
      fields([
        ["started_at", "Started", dateTime(rec.started_at)],
        ["duration_s", "Duration", duration(rec.duration_s)],
        ...(me.operator ? [["tenant", "Tenant", rec.tenant]] : []),
        ["profile", "Profile", rec.profile],
        ["transport", "Transport", rec.transport],
        ["detail", "Why it ended", rec.detail || "–"],
      ]),
      el("h3", { text: "Recording" }), recording,
      el("p", {}, el("a", { href: "#/history", text: "Back to History" }))),
    el("div", { class: "call-grid" },
      el("section", { class: "card" }, el("h3", { text: "Timeline" }), timeline),
      el("section", { class: "card" }, el("h3", { text: "Supervisor actions" }),
        el("ol", { id: "supervisor-actions", class: "activity" },
          actions.length ? actions.map((a) => el("li", { "data-action": a.action },
            el("span", { class: "at", text: offset(a.at_s) }),
            el("strong", { text: a.who || "supervisor" }), ` ${a.action}`,
            a.text ? el("q", { text: a.text }) : null))
            : el("li", { class: "muted", text: "None." })))));
}

function turnItem(t, scale) {
  const tools = (t.tools || []).map((tool) => el("li", { "data-tool": tool.name },
    el("span", { class: "mono", text: tool.name }), " ",
    el("code", { text: compactJson(tool.arguments) }),
    ` · ${tool.outcome || "ok"} · ${ms(tool.duration_ms)}`));
  return el("li", { class: `turn${t.interrupted ? " interrupted" : ""}`,
    "data-turn-id": t.turn_id, "data-route": t.route || "llm" },
  el("span", { class: "turn-number", text: t.turn_id ? `Turn ${t.turn_id}` : "Greeting" }),
  t.caller_text ? el("p", { class: "caller", "data-final": "true", text: t.caller_text }) : null,
  t.agent_text ? el("p", { class: "agent", text: t.agent_text }) : null,
  el("p", { class: "turn-meta" },
    t.turn_id ? el("span", { class: "badge route", "data-field": "route",
      text: t.route ? `route: ${t.route}` : "route: LLM" }) : null,
    t.interrupted ? el("span", { class: "badge warn", text: "interrupted" }) : null,
    (t.fallbacks || []).map((f) => el("span", { class: "badge warn", text: `fallback: ${f}` }))),
  tools.length ? el("ul", { class: "turn-tools" }, tools) : null,
  t.turn_id && (t.voice_to_voice_ms || stageTotal(t)) ? latencyBar({ ...t }, scale) : null);
}
