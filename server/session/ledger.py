"""A call's ledger: what it is counted and measured by (usage, metrics, trace spans), the
record it leaves (turns, tools, fallbacks) and the snapshots a resumed stream takes up.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict
from typing import Any

from opentelemetry.trace import Span

from voxline.agent.agent import Agent
from voxline.agent.tools import Outcome, ToolResult
from voxline.engines.base import ChatMessage
from voxline.record_store import RecordStore
from voxline.records import CallRecord, SupervisorAction, ToolRecord, TurnRecord
from voxline.runtime import Runtime
from voxline.session.continuity import Continuity
from voxline.session.spec import AgentTurn, CallSpec
from voxline.store import CallState
from voxline.v1 import voice_agent_pb2 as pb

log = logging.getLogger(__name__)

_OUTCOMES = {
    Outcome.OK: pb.ToolCall.OUTCOME_OK,
    Outcome.ERROR: pb.ToolCall.OUTCOME_ERROR,
    Outcome.TIMEOUT: pb.ToolCall.OUTCOME_TIMEOUT,
    Outcome.INVALID_ARGUMENTS: pb.ToolCall.OUTCOME_INVALID_ARGUMENTS,
}
# How often a call's input lag is observed (once a second of audio: cheap, and enough
# for a histogram).
_LAG_EVERY_MS = 1000.0


class CallLedger:
    def __init__(self, runtime: Runtime, spec: CallSpec, agent: Agent, models: dict[str, str],
                 emit: Callable[..., None], continuity: Continuity | None) -> None:
        self.spec = spec
        self.agent = agent
        self.metrics = runtime.metrics
        self._tracer = runtime.services.tracing.tracer
        self._emit = emit
        self.continuity = continuity
        self._records = runtime.services.records
        self._record_writer = runtime.services.executors["records"]
        self._prices, self._scrub = runtime.settings.costs, runtime.settings.records.redact
        self.declared_tools = set(agent.toolbox.configs)
        self.record = CallRecord(spec.call_id, spec.session_id, agent.profile.name,
                                 spec.tenant, time.time(), models=models,
                                 transport=spec.transport)
        self.caller_turns = 0
        self.agent_turns = 0
        self.audio_in_ms = 0.0
        self.frames_lost = 0
        self.sessions: list[str] = []  # the streams this call had before this one
        self.call_started = self.record.started_at  # of the first stream
        # Labelled series looked up once, not per frame.
        self._audio_in = self.metrics.audio.labels("in")
        self._audio_out = self.metrics.audio.labels("out")
        self._lag = self.metrics.input_lag
        self._lag_due = 0.0

    # ------------------------------------------------------------------ resume

    def restore(self, state: CallState) -> None:
        """Take the conversation up where the broken stream left it: history, turn
        numbers and the record's earlier turns (the record covers the whole call; its
        own times and usage are this stream's, as records of one call add up)."""
        agent = self.agent
        agent.history = [ChatMessage(**m) for m in state.history]
        agent.routed_turns, agent.llm_turns = state.routed_turns, state.llm_turns
        self.caller_turns, self.agent_turns = state.caller_turns, state.agent_turns
        self.call_started = state.started_at
        self.record.resumed_from = state.sessions[-1] if state.sessions else ""
        self.record.turns = [
            TurnRecord(**{**t, "tools": [ToolRecord(**x) for x in t["tools"]]})
            for t in state.turns]
        self.sessions = state.sessions

    def snapshot(self) -> CallState:
        """What a resume needs (taken after each committed turn)."""
        spec, agent = self.spec, self.agent
        return CallState(
            spec.call_id, spec.tenant, agent.profile.name, spec.metadata, spec.end_of_turn_ms,
            self.call_started, [*self.sessions, spec.session_id],
            self.caller_turns, self.agent_turns, agent.routed_turns, agent.llm_turns,
            history=[asdict(m) for m in agent.history],
            turns=[asdict(t) for t in self.record.turns])

    def persist(self) -> None:
        if self.continuity is not None:
            self.continuity.save(self.snapshot())

    def save_record(self) -> None:
        """Write the record as it stands — the call's header first, then after each
        turn — so a server that dies mid-call loses no completed turn."""
        if self._records is not None:
            self._record_writer.submit(_write_record, self._records,
                                       self.record.as_stored(self._prices, self._scrub))

    def close_record(self, reason: str, detail: str) -> None:
        """The call is over: its record, with the reason, written a last time."""
        self.sync_usage()  # a turn cut short by the end of the call counts too
        self.record.finish(reason, detail)
        self.save_record()

    # ------------------------------------------------------------------ as it goes

    def span(self, name: str, **attributes: Any) -> AbstractContextManager[Span]:
        return self._tracer.start_as_current_span(
            name, attributes={"voxline.call_id": self.spec.call_id, **attributes})

    def end_of_turn_span(self, turn: AgentTurn) -> None:
        now = time.time_ns()
        self._tracer.start_span(
            "end_of_turn", start_time=now - turn.endpoint_ms * 1_000_000,
            attributes={"voxline.call_id": self.spec.call_id}).end(end_time=now)

    def audio_in(self, ms: float, lag_s: float) -> None:
        self.audio_in_ms += ms
        self._audio_in.inc(ms / 1000)
        if self.audio_in_ms >= self._lag_due:
            self._lag_due = self.audio_in_ms + _LAG_EVERY_MS
            self._lag.observe(lag_s)

    def audio_out(self, seconds: float) -> None:
        self._audio_out.inc(seconds)
        self.record.usage.audio_out_s += seconds

    def tts_text(self, text: str) -> None:
        self.metrics.tts_characters.inc(len(text))
        self.record.usage.tts_chars += len(text)

    def fallback(self, turn: AgentTurn, kind: str) -> None:
        turn.fallbacks.append(kind)
        self.metrics.fallbacks.labels(kind).inc()
        log.warning("call %s turn %d: fallback %s", self.spec.call_id, turn.turn_id, kind)

    def tool_call(self, turn: AgentTurn, r: ToolResult) -> None:
        """Tell the gateway, count it and note it in the turn."""
        self._emit(tool_call=pb.ToolCall(
            name=r.name, arguments_json=json.dumps(r.arguments), outcome=_OUTCOMES[r.outcome],
            result_json=r.result_json, duration_ms=r.duration_ms, turn_id=turn.turn_id,
        ))
        outcome = r.outcome.name.lower()
        # A name the LLM made up is one series, not a new one per invention.
        label = r.name if r.name in self.declared_tools else "unknown"
        self.metrics.tool_calls.labels(label, outcome).inc()
        turn.tools.append(ToolRecord(r.name, json.dumps(r.arguments), outcome, r.duration_ms))
        if r.outcome in (Outcome.ERROR, Outcome.TIMEOUT):
            self.fallback(turn, f"tool_{'error' if r.outcome is Outcome.ERROR else 'timeout'}")

    def supervised(self, action: str, who: str, text: str) -> None:
        at = round(time.time() - self.record.started_at, 3)
        self.record.supervisor.append(SupervisorAction(at, who, action, text))
        self.save_record()

    def supersede(self, old: int, new: int) -> None:
        """The record keeps the replacement only (the stream says so in the final)."""
        for rec in self.record.turns:
            if rec.turn_id == old:
                rec.caller_text, rec.superseded_by = "", new

    # ------------------------------------------------------------------ turn over

    def turn_metrics(self, turn: AgentTurn) -> pb.TurnMetrics:
        a = turn.answered
        return pb.TurnMetrics(
            turn_id=turn.turn_id, endpoint_ms=turn.endpoint_ms, stt_ms=turn.stt_ms,
            llm_first_token_ms=a.first_token_ms, tts_first_chunk_ms=turn.tts_first_chunk_ms,
            voice_to_voice_ms=turn.voice_to_voice_ms, tool_ms=a.tool_ms,
            interrupted=turn.cancelled, audio_ms=int(turn.audio_ms), route=a.route,
            llm_last_token_ms=a.last_token_ms, speculative=turn.speculation is not None,
            llm_queue_ms=a.llm_queue_ms, llm_prompt_tokens_evaluated=a.prompt_evaluated,
            llm_prompt_tokens_reused=a.prompt_reused, input_lag_ms=turn.input_lag_ms)

    def account(self, turn: AgentTurn, resumed: bool) -> None:
        """The turn's latencies, tokens and record."""
        m, a = self.metrics, turn.answered
        if turn.utterance is not None:
            for stage, ms in (("end_of_turn", turn.endpoint_ms), ("stt_final", turn.stt_ms),
                              ("llm_queue", a.llm_queue_ms),
                              ("llm_first_token", a.first_token_ms),
                              ("tts_first_chunk", turn.tts_first_chunk_ms)):
                if ms:
                    m.stage.labels(stage).observe(ms / 1000)
            if a.prompt_evaluated or a.prompt_reused:
                m.llm_prompt_tokens.labels("evaluated").observe(a.prompt_evaluated)
                m.llm_prompt_tokens.labels("reused").observe(a.prompt_reused)
            if turn.voice_to_voice_ms:
                m.voice_to_voice.observe(turn.voice_to_voice_ms / 1000)
        self.sync_usage()
        route = a.route
        if turn.turn_id == 0 and resumed:
            route = "resumed"  # the record has the first stream's greeting as turn 0 too
        self.record.turns.append(TurnRecord(
            turn.turn_id, turn.caller_text, " ".join(turn.spoken), route, turn.cancelled,
            turn.endpoint_ms, turn.stt_ms, a.first_token_ms, turn.tts_first_chunk_ms,
            turn.voice_to_voice_ms, turn.tools, turn.fallbacks))
        self.save_record()

    def sync_usage(self) -> None:
        """Bring the record's usage, and the token metrics, up to date."""
        usage, tokens, agent = self.record.usage, self.metrics.llm_tokens, self.agent
        tokens.labels("in").inc(agent.tokens_in - usage.llm_tokens_in)
        tokens.labels("out").inc(agent.tokens_out - usage.llm_tokens_out)
        usage.llm_tokens_in, usage.llm_tokens_out = agent.tokens_in, agent.tokens_out
        usage.audio_in_s = self.audio_in_ms / 1000


def _write_record(store: RecordStore, record: CallRecord) -> None:
    try:
        store.write(record)
    except Exception:  # a full disk must not take calls down
        log.exception("could not write the record of call %s", record.call_id)
