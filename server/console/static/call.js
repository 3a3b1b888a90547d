// One call, live, from /api/calls/{id}/events: the caller's words (partials greyed and
// replaced, then finals), the agent's reply as it streams, tool calls, each turn's
// route and latency, what happened on the line, and the supervisor's controls.

import { api, notify, sessionPath } from "./api.js";
import { el, fields } from "./dom.js";
import { clock, duration, enumName, ms, offset, compactJson } from "./format.js";
import { latencyBar, stageTotal } from "./latency.js";
import { ListenIn } from "./listen.js";

export function renderCall(root, me, sessionId) {
  let view = null;
  let gone = false;
  root.replaceChildren(el("p", { class: "muted", text: "Loading the call…" }));
  api(sessionPath(sessionId), { quiet: true }).then((data) => {
    if (!gone) view = new CallView(root, me, data.call);
  }, (err) => {
    if (gone) return;
    if (err.status === 404) notFound(root, sessionId);
    else root.replaceChildren(el("p", { class: "form-error", role: "alert", text: err.message }));
  });
  return () => {
    gone = true;
    view?.close();
  };
}

// A call that is not live: ended (its record is in History), or not this tenant's.
export async function notFound(root, sessionId) {
  try {
    await api(`/api/history/${encodeURIComponent(sessionId)}`, { quiet: true });
    location.replace(`#/record/${encodeURIComponent(sessionId)}`);
    return;
  } catch {
    // not recorded either (or not ours): say so below
  }
  root.replaceChildren(el("div", { id: "not-found", class: "card empty-state",
    "data-session-id": sessionId },
    el("h2", { text: "Call not found" }),
    el("p", { text: "No call in progress has this id among the calls you may see. " +
      "If it has just ended, its record appears in History shortly." }),
    el("p", {}, el("a", { href: "#/live", text: "Back to live calls" }), " · ",
      el("a", { href: "#/history", text: "History" }))));
}

class CallView {
  constructor(root, me, call) {
    this.root = root;
    this.call = call;
    this.sessionId = call.session_id;
    this.ended = call.state === "ended";
    this.loadedAt = performance.now();
    this.listen = null;
    this.build(me);
    this.reset();
    this.setState(call.state);
    this.tick = setInterval(() => this.showDuration(), 1000);
    this.stream = new EventSource(sessionPath(this.sessionId, "/events"));
    // The server sends everything so far first on every (re)connection: start over.
    this.stream.addEventListener("open", () => this.reset());
    for (const kind of ["transcript", "agent_text", "tool_call", "turn_metrics", "speech",
      "clear_playback", "transfer", "hangup", "ended", "error", "dtmf", "supervisor"]) {
      this.stream.addEventListener(kind, (event) => this.apply(kind, JSON.parse(event.data)));
    }
    this.stream.addEventListener("error", () => {
      if (this.stream.readyState === EventSource.CLOSED && !this.ended) {
        this.stream.close();
        notFound(this.root, this.sessionId);  // it ended, or the session did
      }
    });
  }

  close() {
    clearInterval(this.tick);
    this.stream.close();
    this.listen?.stop();
  }

  build(me) {
    const call = this.call;
    this.stateEl = el("span", { id: "call-state", class: "state" });
    this.durationEl = el("span", { id: "call-duration" });
    this.transcript = el("ol", { id: "transcript", class: "transcript", "aria-live": "polite" });
    this.toolsBody = el("tbody", { id: "tools-body" });
    this.latency = el("div", { id: "latency", class: "latency-list" });
    this.activity = el("ol", { id: "activity", class: "activity" });
    this.recordLink = el("p", { id: "record-link", hidden: true },
      el("a", { href: `#/record/${encodeURIComponent(this.sessionId)}`,
        text: "Open this call's record" }));
    this.root.replaceChildren(
      el("section", { class: "card call-head", id: "call", "data-session-id": this.sessionId },
        el("div", { class: "section-head" },
          el("h2", {}, "Call ", el("span", { class: "mono", text: call.call_id })),
          this.stateEl),
        fields([
          ["transport", "Transport", call.transport],
          ["profile", "Profile", call.profile],
          ...(me.operator ? [["tenant", "Tenant", call.tenant]] : []),
          ["caller", "Caller", call.caller || "–"],
          ["started", "Started", clock(call.started_at)],
          ["duration", "Duration", this.durationEl],
        ]),
        this.controls(call), this.recordLink),
      el("div", { class: "call-grid" },
        el("section", { class: "card" }, el("h3", { text: "Transcript" }), this.transcript),
        el("div", { class: "side" },
          el("section", { class: "card" }, el("h3", { text: "Latency by turn" }), this.latency),
          el("section", { class: "card" }, el("h3", { text: "Tool calls" }),
            el("table", { id: "tools", class: "tools" },
              el("thead", {}, el("tr", {}, ["Turn", "Tool", "Arguments", "Outcome", "Time"]
                .map((h) => el("th", { scope: "col", text: h })))),
              this.toolsBody)),
          el("section", { class: "card" }, el("h3", { text: "On the line" }), this.activity))));
    this.showDuration();
  }

  controls(call) {
    const counter = el("span", { id: "listen-counts", class: "muted", "data-caller": 0,
      "data-agent": 0 });
    const listen = el("button", { id: "listen", type: "button", "aria-pressed": "false",
      text: "Listen" });
    listen.addEventListener("click", () => {
      if (this.listen) {
        this.listen.stop();
        this.listen = null;
        listen.textContent = "Listen";
        listen.setAttribute("aria-pressed", "false");
        return;
      }
      this.listen = new ListenIn(this.sessionId, counter);
      this.listen.start();
      listen.textContent = "Stop listening";
      listen.setAttribute("aria-pressed", "true");
    });

    const text = el("input", { id: "whisper-text", type: "text", maxlength: 500,
      placeholder: "A sentence the agent says as its next turn", "aria-label": "Whisper" });
    const send = el("button", { id: "whisper-send", type: "submit", text: "Whisper" });
    const whisper = el("form", { id: "whisper-form", class: "whisper" }, text, send);
    whisper.addEventListener("submit", async (event) => {
      event.preventDefault();
      const words = text.value.trim();
      if (!words) {
        notify("Type what the agent should say first.", "error");
        return;
      }
      send.disabled = true;
      try {
        await this.post("/whisper", { text: words });
        text.value = "";
        notify("Whisper sent: the agent says it as its next turn.");
      } catch {
        // shown by api()
      } finally {
        send.disabled = this.ended;
      }
    });

    const transfer = el("button", { id: "transfer", type: "button", text: "Transfer",
      disabled: !call.can_transfer,
      title: call.can_transfer ? "Hand the caller to the profile's transfer target"
        : "This call's profile has no transfer target" });
    transfer.addEventListener("click", async () => {
      transfer.disabled = true;
      try {
        await this.post("/transfer", {});
        notify("Transfer requested: the agent says its transfer phrase, then hands over.");
      } catch {
        transfer.disabled = this.ended;
      }
    });

    // Ending a call takes a second click, so a misplaced one costs nothing.
    const end = el("button", { id: "end", type: "button", class: "danger", text: "End call" });
    const yes = el("button", { id: "end-yes", type: "button", class: "danger",
      text: "Yes, end it" });
    const no = el("button", { id: "end-no", type: "button", text: "Keep the call" });
    const confirm = el("span", { id: "end-confirm", class: "confirm", hidden: true },
      "End this call? ", yes, no);
    end.addEventListener("click", () => { confirm.hidden = false; end.hidden = true; });
    no.addEventListener("click", () => { confirm.hidden = true; end.hidden = false; });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        await this.post("/end", {});
        notify("Ending the call: the agent says goodbye.");
      } catch {
        yes.disabled = false;
      }
      confirm.hidden = true;
      end.hidden = false;
      end.disabled = true;
    });
    this.buttons = [send, transfer, end, text];
    return el("div", { id: "controls", class: "controls" },
      el("div", { class: "listen" }, listen, counter), whisper, transfer, end, confirm);
  }

  post(path, body) {
    return api(sessionPath(this.sessionId, path), { method: "POST", body });
  }

  reset() {
    this.turns = new Map();
    this.metrics = new Map();
    this.transcript.replaceChildren();
    this.toolsBody.replaceChildren(emptyRow(5, "No tool calls yet."));
    this.latency.replaceChildren(el("p", { class: "muted", text: "No turn finished yet." }));
    this.activity.replaceChildren(el("li", { class: "muted empty",
      text: "Barge-ins, key presses, transfers and supervisor actions appear here." }));
  }

  showDuration() {
    if (this.ended) return;
    const seconds = (this.call.duration_s || 0) + (performance.now() - this.loadedAt) / 1000;
    this.durationEl.textContent = duration(seconds);
  }

  setState(state) {
    this.stateEl.textContent = state;
    this.stateEl.className = `state state-${state.split(" ").pop()}`;
    this.stateEl.dataset.state = state;
  }

  turn(id) {
    const turnId = Number(id) || 0;
    let turn = this.turns.get(turnId);
    if (!turn) {
      const caller = el("p", { class: "caller", hidden: true });
      const agent = el("p", { class: "agent", hidden: true });
      const meta = el("p", { class: "turn-meta" });
      const li = el("li", { class: "turn", "data-turn-id": turnId },
        el("span", { class: "turn-number", text: turnId ? `Turn ${turnId}` : "Greeting" }),
        caller, agent, meta);
      turn = { id: turnId, li, caller, agent, meta, agentText: "" };
      this.turns.set(turnId, turn);
      this.transcript.append(li);
    }
    return turn;
  }

  apply(kind, e) {
    const handler = {
      transcript: () => this.onTranscript(e),
      agent_text: () => this.onAgentText(e),
      tool_call: () => this.onTool(e),
      turn_metrics: () => this.onMetrics(e),
      speech: () => {
        if (e.kind === "SPEECH_STARTED") this.setState("caller speaking");
      },
      clear_playback: () => {
        this.turn(e.turn_id).li.classList.add("interrupted");
        this.note(e, "clear_playback", "The caller spoke over the agent: its audio was cut.");
      },
      transfer: () => this.note(e, "transfer",
        `Transfer to ${e.target || "the transfer target"}${e.reason ? ` (${e.reason})` : ""}`),
      hangup: () => this.note(e, "hangup", `The agent hangs up${e.reason ? `: ${e.reason}` : ""}`),
      dtmf: () => this.note(e, "dtmf", "The caller pressed a key."),
      error: () => this.note(e, "error", `Error: ${e.message || e.code || "unknown"}`),
      supervisor: () => this.onSupervisor(e),
      ended: () => this.onEnded(e),
    }[kind];
    if (handler) handler();
  }

  onTranscript(e) {
    if (e.is_final && e.supersedes_turn_id) {
      // The caller went on after a pause: this final holds the earlier turn's words.
      const old = this.turns.get(Number(e.supersedes_turn_id));
      if (old) {
        old.caller.hidden = true;
        old.caller.textContent = "";
        if (!old.agentText) {
          old.li.remove();
          this.turns.delete(old.id);
        }
      }
    }
    const turn = this.turn(e.turn_id);
    turn.caller.hidden = false;
    turn.caller.textContent = e.text || "";
    turn.caller.classList.toggle("partial", !e.is_final);
    turn.caller.dataset.final = e.is_final ? "true" : "false";
    if (e.is_final) this.setState("thinking");
  }

  onAgentText(e) {
    const turn = this.turn(e.turn_id);
    if (e.text) {
      turn.agentText = turn.agentText ? `${turn.agentText} ${e.text.trim()}` : e.text.trim();
      turn.agent.textContent = turn.agentText;
      turn.agent.hidden = false;
      turn.agent.classList.add("streaming");
      if (!this.ended) this.setState("speaking");
    }
    if (e.is_final) {
      turn.agent.classList.remove("streaming");
      turn.agent.dataset.final = "true";
      if (!this.ended) this.setState("listening");
    }
  }

  onTool(e) {
    this.toolsBody.querySelector("tr.empty")?.remove();
    const outcome = enumName(e.outcome || "OUTCOME_OK", "OUTCOME_");
    const args = e.arguments ?? e.arguments_json ?? "{}";
    this.toolsBody.append(el("tr", { "data-tool": e.name, "data-turn-id": e.turn_id || 0,
      "data-outcome": outcome },
      el("td", { text: String(e.turn_id || 0) }),
      el("td", { "data-field": "name", class: "mono", text: e.name }),
      el("td", { "data-field": "arguments" }, el("pre", { text: compactJson(args) })),
      el("td", { "data-field": "outcome", class: outcome === "ok" ? "" : "warn-text",
        text: outcome }),
      el("td", { "data-field": "duration_ms", text: ms(e.duration_ms) })));
    const turn = this.turn(e.turn_id);
    turn.meta.append(el("span", { class: "badge tool", text: e.name }));
  }

  onMetrics(e) {
    const id = Number(e.turn_id) || 0;
    this.metrics.set(id, e);
    const turn = this.turn(id);
    turn.li.dataset.route = e.route || "llm";
    turn.meta.querySelector(".route")?.remove();
    if (id) {  // the greeting is not routed
      turn.meta.prepend(el("span", { class: "badge route", "data-field": "route",
        text: e.route ? `route: ${e.route}` : "route: LLM" }));
    }
    if (e.interrupted) turn.li.classList.add("interrupted");
    // The greeting answers no caller turn: it has no stages to show.
    const answered = [...this.metrics.entries()].filter(([n]) => n > 0)
      .sort((a, b) => a[0] - b[0]);
    if (!answered.length) return;
    const scale = Math.max(...answered.map(([, m]) => stageTotal(m)));
    this.latency.replaceChildren(...answered.map(([n, m]) => el("div",
      { class: "turn-latency", "data-turn-id": n },
      el("h4", {}, `Turn ${n}`, el("span", { class: "muted" }, ` · ${m.route || "LLM"}`,
        m.interrupted ? " · interrupted" : "")),
      latencyBar(m, scale))));
  }

  onSupervisor(e) {
    const what = { whisper: "whispered", transfer: "transferred the call", end: "ended the call" };
    const line = `${e.who || "A supervisor"} ${what[e.action] || e.action}`;
    this.note(e, "supervisor", e.text ? `${line}: “${e.text}”` : line);
    this.transcript.append(el("li", { class: "supervisor-note", "data-action": e.action },
      line, e.text ? el("q", { text: e.text }) : null));
  }

  onEnded(e) {
    this.ended = true;
    this.stream.close();
    this.setState("ended");
    const reason = enumName(e.reason || "ended");
    this.note(e, "ended", `Call ended: ${reason}${e.detail ? ` (${e.detail})` : ""}`);
    for (const control of this.buttons) control.disabled = true;
    this.recordLink.hidden = false;
  }

  note(e, kind, text) {
    this.activity.querySelector("li.empty")?.remove();
    this.activity.append(el("li", { "data-kind": kind, class: kind === "error" ? "warn-text" : "" },
      el("span", { class: "at", text: offset(e.at) }), text));
  }
}

function emptyRow(columns, text) {
  return el("tr", { class: "empty" }, el("td", { colspan: columns, text }));
}
