"""One phone call: its state (listening / thinking / speaking), turn-taking, the agent's
replies and barge-in. Proto messages are built here and nowhere deeper: the engines
and the agent speak in dataclasses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import grpc
import numpy as np
from opentelemetry.trace import Span

from voxline.agent.agent import Agent, Control, Say, ToolEvent
from voxline.agent.tools import Outcome, ToolResult
from voxline.audio.convert import InboundAudio, OutboundAudio
from voxline.audio.formats import AudioFormatError, CallAudioFormat
from voxline.engines.base import ChatMessage
from voxline.records import CallRecord, ToolRecord, TurnRecord
from voxline.runtime import Runtime
from voxline.session.continuity import Continuity
from voxline.session.listener import Listener, Partial
from voxline.session.speculation import Speculation
from voxline.session.turns import SpeechStarted, SpeechStopped, TurnEnded
from voxline.store import CallState
from voxline.v1 import voice_agent_pb2 as pb
from voxline.workers import iterate_in_thread

log = logging.getLogger(__name__)

_OUTCOMES = {
    Outcome.OK: pb.ToolCall.OUTCOME_OK,
    Outcome.ERROR: pb.ToolCall.OUTCOME_ERROR,
    Outcome.TIMEOUT: pb.ToolCall.OUTCOME_TIMEOUT,
    Outcome.INVALID_ARGUMENTS: pb.ToolCall.OUTCOME_INVALID_ARGUMENTS,
}
# Fallbacks that mean a turn failed (several in a row send the call to a human); a
# filler said during a long wait is a fallback too, but not a failure.
FAILURES = {"stt_error", "stt_timeout", "llm_error", "llm_timeout", "tts_error",
            "tts_timeout", "tool_error", "tool_timeout"}


class CallError(Exception):
    """Ends the call with a gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class State(StrEnum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    ENDED = "ended"


@dataclass
class CallSpec:
    """The accepted CallStart, checked."""

    call_id: str
    audio: CallAudioFormat
    profile: str
    metadata: dict[str, str]
    end_of_turn_ms: int
    tenant: str = ""
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class AgentTurn:
    turn_id: int
    started: float  # perf_counter when the caller's turn ended (or the call began)
    endpoint_ms: int = 0
    stt_ms: int = 0
    llm_first_token_ms: int = 0
    tts_first_chunk_ms: int = 0
    voice_to_voice_ms: int = 0
    chunks: int = 0
    audio_ms: float = 0.0
    caller_text: str = ""
    utterance: TurnEnded | None = None
    interruptible: bool = True
    spoken: list[str] = field(default_factory=list)
    cancelled: bool = False
    control: Control | None = None  # the agent ends the call after this turn
    tools: list[ToolRecord] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    # The reply prepared while the caller paused, when this turn uses it.
    speculation: Speculation | None = None
    # The caller turn whose final transcript this one's replaces (0: none).
    supersedes: int = 0


class CallSession:
    def __init__(self, runtime: Runtime, spec: CallSpec, inputs: asyncio.Queue,
                 out: asyncio.Queue, continuity: Continuity | None = None,
                 resumed: CallState | None = None) -> None:
        """`inputs` holds the gateway's CallInput messages, then None when it closes its
        side; events for the gateway go to `out`. `continuity` keeps the conversation in
        the store; `resumed`: the state of the broken stream this one continues."""
        self.rt = runtime
        self.spec = spec
        self.session_id = spec.session_id
        self.continuity = continuity
        self.resumed = resumed
        self._inputs = inputs
        self._out = out
        cfg = runtime.settings
        self.state = State.LISTENING
        self.faults = cfg.faults
        self.metrics = runtime.metrics
        self._tracer = runtime.services.tracing.tracer
        kit = runtime.agent(spec.profile)
        self.kit = kit
        self.profile = kit.profile
        assert kit.chat is not None
        self.agent = Agent(kit, kit.chat, spec.metadata, cfg.faults.llm_timeout_s,
                           spec.call_id, cfg.faults.llm_queue_timeout_s)
        self._tts = kit.tts or runtime.tts
        self._inbound = InboundAudio(spec.audio)
        self.listener = Listener(runtime.vad_scheduler, runtime.stt_scheduler, cfg.turn,
                                 spec.end_of_turn_ms, self._on_partial,
                                 kit.profile.stt_prompt, runtime.turn_model)
        self.audio_in_ms = 0.0
        self.caller_turns = 0
        self.agent_turns = 0
        self._turn: AgentTurn | None = None
        self._reply: asyncio.Task | None = None
        # A caller turn interrupted by more caller speech before any reply audio: the
        # caller was still talking, so its audio opens the next turn, whose final
        # transcript supersedes this one's.
        self._carry: AgentTurn | None = None
        self._speculation: Speculation | None = None  # prepared, not yet confirmed
        self._play_end = 0.0  # perf_counter when the audio sent so far will have played
        self._last_seq: int | None = None
        self.frames_lost = 0
        self.dtmf_digits = 0
        self._transferring = False
        self._failed_turns = 0  # in a row
        # One piece of agent audio at a time: a filler never interleaves with a reply.
        self._sending = asyncio.Lock()
        self.ended: tuple[str, str] | None = None  # (CallEnded reason, detail)
        engines = {kind: m for kind, m in runtime.models.items() if ":" not in kind}
        for kind, name in (("llm", kit.profile.llm.model), ("tts", kit.profile.voice)):
            if name:
                engines[kind] = runtime.models[f"{kind}:{name}"]
        self.models = {kind: f"{m.name}@{m.instance_id}" for kind, m in engines.items()}
        self.record = CallRecord(spec.call_id, self.session_id, kit.profile.name, spec.tenant,
                                 time.time(), models=self.models)
        self._sessions: list[str] = []  # the streams this call had before this one
        self._call_started = self.record.started_at  # of the first stream
        if resumed is not None:
            self._restore(resumed)

    # ------------------------------------------------------------------ continuity

    def _restore(self, state: CallState) -> None:
        """Take the conversation up where the broken stream left it: history, turn
        numbers and the record's earlier turns (the record covers the whole call)."""
        agent = self.agent
        agent.history = [ChatMessage(**m) for m in state.history]
        agent.routed_turns, agent.llm_turns = state.routed_turns, state.llm_turns
        self.caller_turns, self.agent_turns = state.caller_turns, state.agent_turns
        # The record's own times and usage are this stream's (records of one call add
        # up); its turns are the whole call's.
        self._call_started = state.started_at
        self.record.resumed_from = state.sessions[-1] if state.sessions else ""
        self.record.turns = [
            TurnRecord(**{**t, "tools": [ToolRecord(**x) for x in t["tools"]]})
            for t in state.turns]
        self._sessions = state.sessions

    def snapshot(self) -> CallState:
        """A snapshot of what a resume needs (after each committed turn)."""
        spec, agent = self.spec, self.agent
        return CallState(
            spec.call_id, spec.tenant, self.profile.name, spec.metadata, spec.end_of_turn_ms,
            self._call_started, [*self._sessions, self.session_id],
            self.caller_turns, self.agent_turns, agent.routed_turns, agent.llm_turns,
            history=[asdict(m) for m in agent.history],
            turns=[asdict(t) for t in self.record.turns])

    def _persist(self) -> None:
        if self.continuity is not None:
            self.continuity.save(self.snapshot())

    # ------------------------------------------------------------------ output

    def _emit(self, **payload: object) -> None:
        self._out.put_nowait(pb.CallOutput(**payload))

    def _span(self, name: str, **attributes: Any) -> AbstractContextManager[Span]:
        return self._tracer.start_as_current_span(
            name, attributes={"voxline.call_id": self.spec.call_id, **attributes})

    def _fallback(self, turn: AgentTurn, kind: str) -> None:
        turn.fallbacks.append(kind)
        self.metrics.fallbacks.labels(kind).inc()
        log.warning("call %s turn %d: fallback %s", self.spec.call_id, turn.turn_id, kind)

    def shutdown(self, detail: str) -> None:
        """End the call with a spoken goodbye (the server is draining)."""
        self._inputs.put_nowait(_Shutdown(detail))

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Serve the call until it ends. Raises CallError for a bad stream."""
        with self._span("call", **{"voxline.session_id": self.session_id,
                                   "voxline.profile": self.profile.name,
                                   "voxline.tenant": self.spec.tenant}):
            await self._run()

    async def _run(self) -> None:
        limits = self.rt.settings.limits
        self._emit(accepted=pb.CallAccepted(
            call_id=self.spec.call_id, session_id=self.session_id,
            agent_profile=self.profile.name, end_of_turn_silence_ms=self.spec.end_of_turn_ms,
            models=self.models, resumed=self.resumed is not None,
            resume_token=self.continuity.token if self.continuity else "",
        ))
        log.info("call %s %s (%s %d Hz, profile %s)", self.spec.call_id,
                 "resumed" if self.resumed else "accepted", self.spec.audio.encoding,
                 self.spec.audio.sample_rate, self.profile.name)
        self._persist()  # resumable from the first moment
        # A resumed call is not greeted again: the caller hears that the agent is back.
        opening = self.profile.fallback.resumed if self.resumed else self.profile.greeting
        self._start_reply(AgentTurn(0, time.perf_counter()), say=opening)
        deadline = time.monotonic() + limits.max_call_s
        try:
            while True:
                timeout = min(limits.idle_timeout_s, deadline - time.monotonic())
                try:
                    msg = await asyncio.wait_for(self._inputs.get(), timeout=max(timeout, 0))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        return self._end(pb.CallEnded.MAX_DURATION,
                                         f"call reached the {limits.max_call_s:.0f} s limit")
                    return self._end(
                        pb.CallEnded.IDLE_TIMEOUT,
                        f"no message from the gateway for {limits.idle_timeout_s:g} s",
                    )
                if msg is None:
                    return self._end(pb.CallEnded.CALLER_HANGUP, "gateway closed the stream")
                if isinstance(msg, CallError):  # from the stream itself: unparsable, too big
                    raise msg
                if isinstance(msg, _AgentEnd):
                    return self._end(msg.reason, msg.detail)
                if isinstance(msg, _Shutdown):
                    await self._goodbye()
                    return self._end(pb.CallEnded.SERVER_SHUTDOWN, msg.detail)
                kind = msg.WhichOneof("payload")
                if kind == "audio":
                    await self._on_audio(msg.audio)
                elif kind == "dtmf":
                    await self._on_dtmf(msg.dtmf)
                elif kind == "hangup":
                    return self._end(pb.CallEnded.CALLER_HANGUP, msg.hangup.reason or "hang-up")
                elif kind == "mark":
                    pass  # playback marks refine barge-in bookkeeping in a later version
                elif kind == "start":
                    raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                                    "the call has already started; send CallStart only once")
                else:
                    raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                                    "empty CallInput: set one of start, audio, dtmf, hangup, mark")
        finally:
            await self._stop_work()

    async def _goodbye(self) -> None:
        """Say the shutdown phrase over whatever the agent was doing, and let it play."""
        self._transferring = True  # no new turns now
        if self._reply is not None and not self._reply.done():
            self._barge_in()
        self.caller_turns += 1  # numbered as a turn, like a DTMF transfer
        turn = AgentTurn(self.caller_turns, time.perf_counter(), interruptible=False)
        self._start_reply(turn, say=self.profile.fallback.shutdown)
        assert self._reply is not None
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._reply), 20)

    def _end(self, reason: int, detail: str) -> None:
        self.state = State.ENDED
        self.ended = (pb.CallEnded.Reason.Name(reason), detail)
        log.info("call %s ended: %s (%s)", self.spec.call_id,
                 pb.CallEnded.Reason.Name(reason), detail)
        self._emit(ended=pb.CallEnded(reason=reason, detail=detail,
                                      caller_turns=self.caller_turns,
                                      agent_turns=self.agent_turns,
                                      audio_received_ms=int(self.audio_in_ms),
                                      frames_lost=self.frames_lost,
                                      routed_turns=self.agent.routed_turns,
                                      llm_turns=self.agent.llm_turns))

    async def _stop_work(self) -> None:
        await self._discard_speculation()
        await self.listener.close()
        self.agent.close()
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reply

    # ------------------------------------------------------------------ caller input

    async def _on_audio(self, chunk: pb.AudioChunk) -> None:
        try:
            self.spec.audio.check_frame(len(chunk.audio), self.rt.settings.limits.max_frame_ms)
        except AudioFormatError as exc:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"audio chunk {chunk.sequence_number}: {exc}") from exc
        if self._last_seq is not None and chunk.sequence_number > self._last_seq + 1:
            self.frames_lost += chunk.sequence_number - self._last_seq - 1
        self._last_seq = chunk.sequence_number
        ms = self.spec.audio.duration_ms(len(chunk.audio))
        self.audio_in_ms += ms
        self.metrics.audio.labels("in").inc(ms / 1000)
        for event in await self.listener.feed(self._inbound(chunk.audio)):
            await self._on_turn_event(event)

    async def _on_dtmf(self, dtmf: pb.DtmfDigit) -> None:
        if dtmf.digit not in set("0123456789*#ABCD") or len(dtmf.digit) != 1:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            "DTMF digit must be one of 0-9, *, #, A-D")
        self.dtmf_digits += 1  # counted, never logged: digits may be card numbers
        log.info("call %s: DTMF digit received (#%d)", self.spec.call_id, self.dtmf_digits)
        transfer = self.profile.transfer
        if transfer and dtmf.digit == transfer.dtmf and not self._transferring:
            self._transferring = True
            await self._discard_speculation()
            if self._reply is not None and not self._reply.done():
                self._barge_in()
            self.caller_turns += 1
            turn = AgentTurn(self.caller_turns, time.perf_counter(), interruptible=False)
            self._start_reply(turn, say=self.agent.end_call(
                "transfer_to_human", "caller asked for a human (DTMF)"))

    def _agent_ends_call(self, control: Control) -> None:
        """Tell the gateway, then end the call behind the caller's queued input."""
        if control.action == "transfer_to_human":
            assert self.profile.transfer is not None
            target = self.profile.transfer.target
            self._emit(transfer=pb.TransferRequest(target=target, reason=control.reason))
            end = _AgentEnd(pb.CallEnded.TRANSFERRED, f"transferred to {target}")
        else:
            self._emit(hangup=pb.HangupRequest(reason=control.reason))
            end = _AgentEnd(pb.CallEnded.AGENT_HANGUP, control.reason)
        self._inputs.put_nowait(end)

    async def _on_turn_event(self, event: object) -> None:
        if isinstance(event, SpeechStarted):
            self._emit(speech=pb.SpeechEvent(kind=pb.SpeechEvent.SPEECH_STARTED,
                                             audio_ms=event.audio_ms))
            await self._discard_speculation()  # the caller goes on
            if (self._reply is not None and not self._reply.done()
                    and self._turn is not None and self._turn.interruptible):
                self._barge_in()
        elif isinstance(event, SpeechStopped):
            self._emit(speech=pb.SpeechEvent(kind=pb.SpeechEvent.SPEECH_STOPPED,
                                             audio_ms=event.audio_ms))
            self._speculate(event)
        elif isinstance(event, TurnEnded) and not self._transferring:
            spec, self._speculation = self._speculation, None
            if spec is not None and not spec.matches(event):
                await self._drop(spec)
                spec = None
            if spec is not None:
                spec.confirm()
                self.rt.stats.speculations_used += 1
                self.metrics.speculations.labels("used").inc()
            self.caller_turns += 1
            turn = AgentTurn(self.caller_turns, time.perf_counter(),
                             endpoint_ms=self.listener.endpointer.audio_ms - event.end_ms,
                             utterance=event, speculation=spec)
            self._start_reply(turn, utterance=event)

    # ------------------------------------------------------------------ speculation

    def _speculate(self, stopped: SpeechStopped) -> None:
        """Prepare the reply to what the caller said so far (session/speculation.py)."""
        ep = self.listener.endpointer
        if (not self.rt.settings.turn.speculate or self._transferring or not ep.in_turn
                or self._speculation is not None
                or (self._reply is not None and not self._reply.done())):
            return
        utterance = ep.so_far(stopped.audio_ms)
        audio = utterance.audio
        if self._carry is not None and self._carry.utterance is not None:
            audio = np.concatenate([self._carry.utterance.audio, audio])  # it opens this one
        self._speculation = Speculation(
            TurnEnded(utterance.start_ms, utterance.end_ms, audio), self.agent,
            lambda a: asyncio.wait_for(self.listener.final(a), self.faults.stt_timeout_s),
            self._synthesize_all)

    async def _discard_speculation(self) -> None:
        spec, self._speculation = self._speculation, None
        if spec is not None:
            await self._drop(spec)

    async def _drop(self, spec: Speculation) -> None:
        self.rt.stats.speculations_wasted += 1
        self.metrics.speculations.labels("wasted").inc()
        await spec.cancel()

    async def _tts_audio(self, text: str) -> AsyncIterator[np.ndarray]:
        """A clause's audio: a fixed phrase as rendered at load, anything else from TTS
        on its worker thread, each chunk within faults.tts_timeout_s (TimeoutError
        otherwise)."""
        if text in self.kit.rendered:
            yield self.kit.rendered[text]
            return
        async with contextlib.aclosing(iterate_in_thread(
                lambda: self._tts.synthesize(text), self.rt.executors["tts"])) as audio:
            while True:
                try:
                    samples = await asyncio.wait_for(anext(audio), self.faults.tts_timeout_s)
                except StopAsyncIteration:
                    return
                yield samples

    async def _synthesize_all(self, text: str) -> list[np.ndarray]:
        """All of a clause's audio, for a speculative reply."""
        async with contextlib.aclosing(self._tts_audio(text)) as audio:
            return [samples async for samples in audio]

    def _on_partial(self, p: Partial) -> None:
        self._emit(transcript=pb.Transcript(
            text=p.text, stable_text=p.stable, is_final=False, turn_id=self.caller_turns + 1,
            start_ms=p.start_ms, end_ms=p.end_ms,
        ))

    # ------------------------------------------------------------------ barge-in

    def _barge_in(self) -> None:
        turn = self._turn
        assert turn is not None and self._reply is not None
        turn.cancelled = True
        if turn.chunks:
            # Tell the gateway first: nothing of this turn may be played any more.
            self._emit(clear_playback=pb.ClearPlayback(turn_id=turn.turn_id))
        self._play_end = time.perf_counter()
        self._reply.cancel()
        log.info("call %s: barge-in on agent turn %d (%s)", self.spec.call_id, turn.turn_id,
                 "speaking" if turn.chunks else "thinking")

    # ------------------------------------------------------------------ agent replies

    def _start_reply(self, turn: AgentTurn, say: str | AsyncIterator[object] = "",
                     utterance: TurnEnded | None = None) -> None:
        """Answer `utterance` through the agent, or speak `say` (a text, or agent
        events)."""
        self._turn = turn
        self._reply = asyncio.create_task(self._reply_task(turn, say, utterance))

    async def _reply_task(self, turn: AgentTurn, say: str | AsyncIterator[object],
                          utterance: TurnEnded | None) -> None:
        with self._span("turn", **{"voxline.turn_id": turn.turn_id}) as span:
            if utterance is not None:
                now = time.time_ns()
                self._tracer.start_span(
                    "end_of_turn", start_time=now - turn.endpoint_ms * 1_000_000,
                    attributes={"voxline.call_id": self.spec.call_id}).end(end_time=now)
            watchdog = (asyncio.create_task(self._fill_silence(turn))
                        if utterance is not None else None)
            try:
                await self._reply_steps(turn, say, utterance)
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                span.set_attributes({"voxline.voice_to_voice_ms": turn.voice_to_voice_ms,
                                     "voxline.interrupted": turn.cancelled,
                                     "voxline.fallbacks": turn.fallbacks})

    async def _reply_steps(self, turn: AgentTurn, say: str | AsyncIterator[object],
                           utterance: TurnEnded | None) -> None:
        self.state = State.THINKING
        spec = turn.speculation
        try:
            if utterance is not None:
                text = await self._final_transcript(turn, utterance)
                if text is None:  # STT failed: ask the caller to say it again
                    pieces = _say(self.profile.fallback.not_understood)
                elif not text:
                    return  # noise, not words: nothing to answer
                else:
                    pieces = spec.events() if spec is not None else self.agent.respond(text)
            else:
                pieces = _say(say) if isinstance(say, str) else say
            await self._speak(turn, pieces, from_llm=utterance is not None)
            self.agent_turns += 1
            # The turn is over when the caller has heard it (estimated from the audio sent).
            await asyncio.sleep(max(0.0, self._play_end - time.perf_counter()))
            if turn.control is not None:
                self._agent_ends_call(turn.control)
        except Exception as exc:
            log.exception("call %s: agent turn %d failed", self.spec.call_id, turn.turn_id)
            self._emit(error=pb.Error(code="INTERNAL", message=f"agent turn failed: {exc}"))
        finally:
            if spec is not None:  # e.g. a barge-in: the rest of its work stops
                await spec.cancel(undo=False)
            self._finish_turn(turn)

    async def _final_transcript(self, turn: AgentTurn, utterance: TurnEnded) -> str | None:
        """The caller's words ("" for noise), or None when STT failed."""
        carried, self._carry = self._carry, None
        if carried is not None and carried.utterance is not None:
            before = carried.utterance
            utterance = TurnEnded(before.start_ms, utterance.end_ms,
                                  np.concatenate([before.audio, utterance.audio]))
            turn.utterance = utterance
            turn.supersedes = carried.turn_id
            self._supersede(carried.turn_id, turn.turn_id)
        start = time.perf_counter()
        with self._span("stt_final"):
            try:
                if turn.speculation is not None:  # transcribed while the caller paused
                    result = await turn.speculation.transcript
                else:
                    result = await asyncio.wait_for(self.listener.final(utterance.audio),
                                                    self.faults.stt_timeout_s)
            except TimeoutError:
                self._fallback(turn, "stt_timeout")
                return None
            except Exception:
                log.exception("call %s: STT failed", self.spec.call_id)
                self._fallback(turn, "stt_error")
                return None
        turn.stt_ms = int((time.perf_counter() - start) * 1000)
        text = result.text.strip()
        turn.caller_text = text
        self._emit(transcript=pb.Transcript(
            text=text, is_final=True, start_ms=utterance.start_ms, end_ms=utterance.end_ms,
            turn_id=turn.turn_id, supersedes_turn_id=turn.supersedes,
        ))
        log.info("call %s turn %d: final transcript in %d ms%s", self.spec.call_id,
                 turn.turn_id, turn.stt_ms,
                 f" (replaces turn {turn.supersedes})" if turn.supersedes else "")
        return text

    def _supersede(self, old: int, new: int) -> None:
        """The record keeps the replacement only (the stream says so in the final)."""
        for rec in self.record.turns:
            if rec.turn_id == old:
                rec.caller_text, rec.superseded_by = "", new

    async def _speak(self, turn: AgentTurn, pieces: AsyncIterator[object],
                     from_llm: bool) -> None:
        """Run the agent and TTS side by side: each piece of text is synthesised as
        soon as it is ready while the LLM goes on."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def think() -> None:
            try:
                with self._span("agent" if from_llm else "say"):
                    await consume()
                if from_llm and self.agent.failure:
                    self._fallback(turn, self.agent.failure)
            finally:
                queue.put_nowait(None)

        async def consume() -> None:
            async for event in pieces:
                if isinstance(event, Say):
                    if from_llm:
                        turn.llm_first_token_ms = int(self.agent.first_token_ms)
                    self._emit(agent_text=pb.AgentText(text=event.text, turn_id=turn.turn_id))
                    queue.put_nowait(event.text)
                elif isinstance(event, Control):
                    turn.control = event
                elif isinstance(event, ToolEvent):
                    self._on_tool(turn, event.result)

        async def speak() -> None:
            out = OutboundAudio(self.spec.audio, self._tts.sample_rate,
                                self.rt.settings.playback.chunk_ms)
            failed = False
            while (text := await queue.get()) is not None:
                if failed:
                    continue  # the apology was said; the rest of the reply is dropped
                self.metrics.tts_characters.inc(len(text))
                self.record.usage.tts_chars += len(text)
                async with self._sending:
                    said = await self._synthesize(turn, text, out)
                turn.spoken.append(said)
                failed = said != text
            async with self._sending:
                for chunk in out.push(np.zeros(0, np.float32), last=True):
                    await self._send_audio(turn, chunk)

        async with asyncio.TaskGroup() as tg:
            tg.create_task(think())
            tg.create_task(speak())
        self._emit(agent_text=pb.AgentText(text="", turn_id=turn.turn_id, is_final=True))

    def _on_tool(self, turn: AgentTurn, r: ToolResult) -> None:
        self._emit(tool_call=pb.ToolCall(
            name=r.name, arguments_json=json.dumps(r.arguments), outcome=_OUTCOMES[r.outcome],
            result_json=r.result_json, duration_ms=r.duration_ms, turn_id=turn.turn_id,
        ))
        outcome = r.outcome.name.lower()
        self.metrics.tool_calls.labels(r.name, outcome).inc()
        turn.tools.append(ToolRecord(r.name, json.dumps(r.arguments), outcome, r.duration_ms))
        if r.outcome in (Outcome.ERROR, Outcome.TIMEOUT):
            self._fallback(turn, f"tool_{'error' if r.outcome is Outcome.ERROR else 'timeout'}")

    async def _synthesize(self, turn: AgentTurn, text: str, out: OutboundAudio) -> str:
        """Speak `text` and return what was said: `text`, or if TTS fails or stalls, the
        apology."""
        asked = time.perf_counter()
        spec = turn.speculation
        if spec is not None and spec.first_audio is not None and text == spec.first_say:
            try:
                prepared = await spec.first_audio  # synthesised while the caller paused
            except Exception:
                prepared = None  # synthesise it now, as any clause
            if prepared is not None:
                # What the reply waited for it: 1 ms when it was ready in the pause.
                turn.tts_first_chunk_ms = turn.tts_first_chunk_ms or max(
                    1, int((time.perf_counter() - asked) * 1000))
                for samples in prepared:
                    for chunk in out.push(samples):
                        await self._send_audio(turn, chunk)
                return text
        with self._span("tts", **{"voxline.characters": len(text)}):
            try:
                async with contextlib.aclosing(self._tts_audio(text)) as audio:
                    async for samples in audio:
                        if not turn.tts_first_chunk_ms:
                            turn.tts_first_chunk_ms = int((time.perf_counter() - asked) * 1000)
                        for chunk in out.push(samples):
                            await self._send_audio(turn, chunk)
                return text
            except Exception as exc:
                log.error("call %s: TTS failed: %r", self.spec.call_id, exc)
                self._fallback(turn, "tts_timeout" if isinstance(exc, TimeoutError)
                               else "tts_error")
        said = self.profile.fallback.llm_error  # pre-rendered, as every fixed phrase
        self._emit(agent_text=pb.AgentText(text=said, turn_id=turn.turn_id))
        for chunk in out.push(self.kit.rendered[said]):
            await self._send_audio(turn, chunk)
        return said

    async def _fill_silence(self, turn: AgentTurn) -> None:
        """While the turn is being answered, never leave the caller in silence longer
        than max_silence_ms (from the end of their speech, then from the end of the
        last audio sent): say the profile's filler phrases in turn, pre-rendered, so no
        model stands in the way."""
        fillers = self.profile.fallback.filler
        limit = self.faults.max_silence_ms / 1000
        silent_since = time.perf_counter() - turn.endpoint_ms / 1000
        n = 0
        while fillers and not turn.cancelled:
            wake = max(self._play_end, silent_since) + limit
            await asyncio.sleep(max(0.0, wake - time.perf_counter()))
            async with self._sending:  # after the sentence being spoken, if any
                if turn.cancelled or self._play_end + limit > time.perf_counter() + 0.05:
                    continue  # audio went out meanwhile: the silence starts again
                phrase = fillers[n % len(fillers)]
                n += 1
                self._fallback(turn, "silence_filler")
                self._emit(agent_text=pb.AgentText(text=phrase, turn_id=turn.turn_id))
                out = OutboundAudio(self.spec.audio, self._tts.sample_rate,
                                    self.rt.settings.playback.chunk_ms)
                for chunk in (*out.push(self.kit.rendered[phrase]),
                              *out.push(np.zeros(0, np.float32), last=True)):
                    await self._send_audio(turn, chunk)

    async def _send_audio(self, turn: AgentTurn, chunk: bytes) -> None:
        lead = self.rt.settings.playback.lead_ms / 1000
        wait = self._play_end - time.perf_counter() - lead
        if wait > 0:
            await asyncio.sleep(wait)
        if turn.cancelled:
            return
        now = time.perf_counter()
        if turn.chunks == 0:
            turn.voice_to_voice_ms = turn.endpoint_ms + int((now - turn.started) * 1000)
            self.state = State.SPEAKING
        self._emit(audio=pb.AgentAudio(audio=chunk, turn_id=turn.turn_id,
                                       chunk_index=turn.chunks, offset_ms=int(turn.audio_ms)))
        duration = self.spec.audio.duration_ms(len(chunk)) / 1000
        self._play_end = max(self._play_end, now) + duration
        turn.chunks += 1
        turn.audio_ms += duration * 1000
        self.metrics.audio.labels("out").inc(duration)
        self.record.usage.audio_out_s += duration

    def _finish_turn(self, turn: AgentTurn) -> None:
        if self.state is State.ENDED:
            return  # the call is over; nothing more goes to the gateway
        if turn.turn_id > 0 or turn.chunks:
            # Every caller turn ends with metrics, even one with nothing to answer, so a
            # gateway can tell the turn is over.
            if turn.cancelled and not turn.chunks and turn.utterance is not None:
                self._carry = turn
                if turn.caller_text:
                    self.agent.retract_turn()
            elif turn.caller_text:
                self.agent.commit_reply(" ".join(turn.spoken), turn.cancelled)
            self._emit(turn_metrics=pb.TurnMetrics(
                turn_id=turn.turn_id, endpoint_ms=turn.endpoint_ms, stt_ms=turn.stt_ms,
                llm_first_token_ms=turn.llm_first_token_ms,
                tts_first_chunk_ms=turn.tts_first_chunk_ms,
                voice_to_voice_ms=turn.voice_to_voice_ms,
                tool_ms=self.agent.tool_ms if turn.turn_id else 0,
                interrupted=turn.cancelled, audio_ms=int(turn.audio_ms),
                route=self.agent.route if turn.caller_text else "",
                llm_last_token_ms=int(self.agent.last_token_ms) if turn.caller_text else 0,
                speculative=turn.speculation is not None,
                **self._llm_figures(turn),
            ))
            self._account(turn)
            self._persist()
        self.state = State.LISTENING
        self._after_failures(turn)

    def _llm_figures(self, turn: AgentTurn) -> dict[str, int]:
        """The turn's LLM queue wait and prompt tokens (TurnMetrics fields)."""
        if not turn.caller_text:
            return {}
        a = self.agent
        return {"llm_queue_ms": int(a.llm_queue_ms),
                "llm_prompt_tokens_evaluated": a.prompt_evaluated,
                "llm_prompt_tokens_reused": a.prompt_reused}

    def sync_usage(self) -> None:
        """Bring the record's usage, and the token metrics, up to date."""
        usage, tokens = self.record.usage, self.metrics.llm_tokens
        tokens.labels("in").inc(self.agent.tokens_in - usage.llm_tokens_in)
        tokens.labels("out").inc(self.agent.tokens_out - usage.llm_tokens_out)
        usage.llm_tokens_in, usage.llm_tokens_out = self.agent.tokens_in, self.agent.tokens_out
        usage.audio_in_s = self.audio_in_ms / 1000

    def _account(self, turn: AgentTurn) -> None:
        """The turn's latencies, tokens and record."""
        m = self.metrics
        if turn.utterance is not None:
            for stage, ms in (("end_of_turn", turn.endpoint_ms), ("stt_final", turn.stt_ms),
                              ("llm_queue", int(self.agent.llm_queue_ms)),
                              ("llm_first_token", turn.llm_first_token_ms),
                              ("tts_first_chunk", turn.tts_first_chunk_ms)):
                if ms:
                    m.stage.labels(stage).observe(ms / 1000)
            if self.agent.prompt_evaluated or self.agent.prompt_reused:
                m.llm_prompt_tokens.labels("evaluated").observe(self.agent.prompt_evaluated)
                m.llm_prompt_tokens.labels("reused").observe(self.agent.prompt_reused)
            if turn.voice_to_voice_ms:
                m.voice_to_voice.observe(turn.voice_to_voice_ms / 1000)
        self.sync_usage()
        route = self.agent.route if turn.caller_text else ""
        if turn.turn_id == 0 and self.resumed:
            route = "resumed"  # the record has the first stream's greeting as turn 0 too
        self.record.turns.append(TurnRecord(
            turn.turn_id, turn.caller_text, " ".join(turn.spoken), route, turn.cancelled,
            turn.endpoint_ms, turn.stt_ms, turn.llm_first_token_ms, turn.tts_first_chunk_ms,
            turn.voice_to_voice_ms, turn.tools, turn.fallbacks))

    def _after_failures(self, turn: AgentTurn) -> None:
        """Several failed turns in a row: hand the call to a human (or end it)."""
        if turn.turn_id == 0 or turn.control is not None or self._transferring:
            return
        if not FAILURES.intersection(turn.fallbacks):
            self._failed_turns = 0
            return
        self._failed_turns += 1
        if self._failed_turns < self.faults.max_failed_turns:
            return
        self._transferring = True
        action = "transfer_to_human" if self.profile.transfer else "end_call"
        self.metrics.fallbacks.labels(f"{action}_after_failures").inc()
        log.warning("call %s: %d failed turns in a row, %s", self.spec.call_id,
                    self._failed_turns, action)
        self.caller_turns += 1
        self._start_reply(
            AgentTurn(self.caller_turns, time.perf_counter(), interruptible=False),
            say=self.agent.end_call(action, f"{self._failed_turns} failed turns in a row"))


@dataclass
class _Shutdown:
    """Queued when the server drains: say goodbye, then end the call."""

    detail: str


@dataclass
class _AgentEnd:
    """Queued behind the caller's input when the agent ends the call."""

    reason: int
    detail: str


async def _say(text: str) -> AsyncIterator[object]:
    yield Say(text)
