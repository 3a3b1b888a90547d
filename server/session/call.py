"""One phone call: reads the gateway's messages, hears the caller, and wires the parts
that answer them.

The call's audio flows through: `Inbox` (server/streams.py: bounded, backpressure, one
idle deadline) → G.711/PCM decode and resampling (audio/convert.py) → `Listener` (VAD
through the shared scheduler, turn-taking, partials) → `TurnControl` (replies.py:
barge-in, carried utterances, the reply task, failures) → `Agent` (agent/agent.py) →
`Speaker` (speaking.py: synthesis, pacing, clear, filler) → `Outbox`. `CallLedger`
(ledger.py) keeps its usage, metrics, record, spans and snapshots. Proto messages are
built in this package and nowhere deeper: the engines and the agent speak in
dataclasses.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum

import grpc

from voxline.agent.agent import Agent
from voxline.audio.convert import InboundAudio
from voxline.audio.formats import AudioFormatError
from voxline.errors import ServiceError
from voxline.runtime import Runtime
from voxline.session.continuity import Continuity
from voxline.session.ledger import CallLedger
from voxline.session.listener import Listener, Partial
from voxline.session.recording import open_recorder
from voxline.session.replies import TurnControl
from voxline.session.speaking import Speaker
from voxline.session.spec import CallSpec
from voxline.session.turns import SpeechStarted, SpeechStopped, TurnEnded
from voxline.session.watch import CallWatch, WatchedOutbox
from voxline.store import CallState
from voxline.streams import Inbox, Outbox
from voxline.v1 import voice_agent_pb2 as pb

log = logging.getLogger(__name__)

_DIGITS = frozenset("0123456789*#ABCD")
_UINT32_MAX = 2**32 - 1  # a sequence number may jump by more (uint64): the count is capped
_CATCH_UP_FRAMES = 25  # at most half a second of 20 ms frames in one go


def _is_audio(item: object) -> bool:
    return isinstance(item, pb.CallInput) and item.HasField("audio")


class State(StrEnum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    ENDED = "ended"


@dataclass
class Supervise:
    """A supervisor's action on the call (the console), taken in turn with the caller's
    input: `whisper` (the agent says `text` as its next turn), `transfer`, `end`."""

    action: str
    who: str
    text: str = ""


@dataclass
class _End:
    """Queued behind the caller's input: the agent, the server or a limit ends the call
    (`goodbye`: with the shutdown phrase first)."""

    reason: int
    detail: str
    goodbye: bool = False


class CallSession:
    def __init__(self, runtime: Runtime, spec: CallSpec, inputs: Inbox[pb.CallInput],
                 out: Outbox[pb.CallOutput], continuity: Continuity | None = None,
                 resumed: CallState | None = None) -> None:
        """`inputs` holds the gateway's CallInput messages, then None when it closes its
        side (or the error reading it); events for the gateway go to `out`.
        `continuity` keeps the conversation in the store; `resumed`: the state of the
        broken stream this one continues."""
        self.rt = runtime
        self.spec = spec
        self.session_id = spec.session_id
        self.continuity = continuity
        self.resumed = resumed
        self._inputs = inputs
        cfg = runtime.settings
        kit = runtime.agent(spec.profile)  # loaded by the service before the call starts
        self.profile = kit.profile
        assert kit.chat is not None
        self.agent = Agent(kit, kit.chat, spec.metadata, cfg.faults.llm_timeout_s,
                           spec.call_id, cfg.faults.llm_queue_timeout_s)
        engines = {kind: m for kind, m in runtime.models.items() if ":" not in kind}
        for kind, name in (("llm", kit.profile.llm.model), ("tts", kit.profile.voice)):
            if name:
                engines[kind] = runtime.models[f"{kind}:{name}"]
        self.models = {kind: f"{m.name}@{m.instance_id}" for kind, m in engines.items()}
        self.watch = CallWatch(spec.audio)
        self.recorder = open_recorder(cfg, spec, self.watch)  # None: not recorded
        self._out = WatchedOutbox(out, self.watch)  # the console sees what the gateway gets
        self.ledger = CallLedger(runtime, spec, self.agent, self.models, self._emit,
                                 continuity)
        self.record = self.ledger.record
        if resumed is not None:
            self.ledger.restore(resumed)
        self.speaker = Speaker(runtime, spec, kit, self._out, self.ledger)
        self.listener = Listener(runtime.vad_scheduler, runtime.stt_scheduler, cfg.turn,
                                 spec.end_of_turn_ms, self._on_partial,
                                 kit.profile.stt_prompt, runtime.turn_model,
                                 cfg.faults.vad_timeout_s)
        self.control = TurnControl(runtime, self.agent, self.listener, self.speaker,
                                   self.ledger, self._agent_ends, resumed is not None)
        self._inbound = InboundAudio(spec.audio)
        self._last_seq: int | None = None
        self.dtmf_digits = 0
        self.ended: tuple[str, str] | None = None  # (CallEnded reason, detail)

    @property
    def state(self) -> State:
        """What the call is doing now, for a supervisor."""
        if self.ended is not None:
            return State.ENDED
        if self.control.replying:
            return State.SPEAKING if self.speaker.playing else State.THINKING
        return State.LISTENING

    def _emit(self, **payload: object) -> None:
        self._out.put(pb.CallOutput(**payload))

    def shutdown(self, detail: str) -> None:
        """End the call with a spoken goodbye (the server is draining)."""
        self._inputs.inject(_End(pb.CallEnded.SERVER_SHUTDOWN, detail, goodbye=True))

    def supervise(self, action: Supervise) -> None:
        self._inputs.inject(action)

    def _agent_ends(self, reason: int, detail: str) -> None:
        self._inputs.inject(_End(reason, detail))

    @property
    def inbound_peak(self) -> int:
        """The most messages that waited to be processed (bounded by the inbox)."""
        return self._inputs.high_water

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Serve the call until it ends. Raises ServiceError for a bad stream."""
        with self.ledger.span("call", **{"voxline.session_id": self.session_id,
                                         "voxline.profile": self.profile.name,
                                         "voxline.tenant": self.spec.tenant}):
            limits = self.rt.settings.limits
            deadline = asyncio.get_running_loop().call_later(
                limits.max_call_s, self._inputs.inject,
                _End(pb.CallEnded.MAX_DURATION,
                     f"call reached the {limits.max_call_s:.0f} s limit"))
            try:
                await self._run()
            finally:
                deadline.cancel()
                self.watch.close()
                if self.recorder is not None:  # the record says what the file holds
                    self.watch.detach(self.recorder)
                    rec = await self.recorder.close()
                    self.record.recording, self.record.recording_s = rec.file, rec.seconds
                await self.control.close()
                await self.listener.close()
                self.agent.close()

    async def _run(self) -> None:
        spec = self.spec
        self._emit(accepted=pb.CallAccepted(
            call_id=spec.call_id, session_id=self.session_id, agent_profile=self.profile.name,
            end_of_turn_silence_ms=spec.end_of_turn_ms, models=self.models,
            resumed=self.resumed is not None,
            resume_token=self.continuity.token if self.continuity else "",
        ))
        log.info("call %s %s (%s %d Hz, profile %s)", spec.call_id,
                 "resumed" if self.resumed else "accepted", spec.audio.encoding,
                 spec.audio.sample_rate, self.profile.name)
        self.ledger.persist()  # resumable from the first moment
        self.ledger.save_record()  # and on record: a crash from here on loses no turn
        self.control.greet()
        idle_s = self.rt.settings.limits.idle_timeout_s
        while True:
            try:
                msg, arrived = await self._inputs.get()
            except TimeoutError:
                return self._end(pb.CallEnded.IDLE_TIMEOUT,
                                 f"no message from the gateway for {idle_s:g} s")
            if msg is None:
                return self._end(pb.CallEnded.CALLER_HANGUP, "gateway closed the stream")
            if isinstance(msg, BaseException):  # reading the stream: unparsable, too big
                raise msg
            if isinstance(msg, Supervise):
                await self._supervised(msg)
                continue
            if isinstance(msg, _End):
                if msg.goodbye:
                    await self.control.goodbye()
                return self._end(msg.reason, msg.detail)
            assert isinstance(msg, pb.CallInput)
            kind = msg.WhichOneof("payload")
            if kind == "audio":
                # Frames that queued up while the server was busy go through together:
                # one VAD request for all their windows, not one each.
                behind = self._inputs.take_ready(_is_audio, _CATCH_UP_FRAMES)
                if behind:
                    arrived = behind[-1][1]
                chunks = [msg.audio, *(m.audio for m, _ in behind)]  # type: ignore[attr-defined]
                await self._on_audio(chunks, self._inputs.lag_s(arrived))
            elif kind == "dtmf":
                await self._on_dtmf(msg.dtmf)
            elif kind == "hangup":
                return self._end(pb.CallEnded.CALLER_HANGUP, msg.hangup.reason or "hang-up")
            elif kind == "mark":
                self.control.played(msg.mark)
            elif kind == "start":
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   "the call has already started; send CallStart only once")
            else:
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "empty CallInput: set one of start, audio, dtmf, hangup, "
                                   "mark")

    def _end(self, reason: int, detail: str) -> None:
        self.ended = (pb.CallEnded.Reason.Name(reason), detail)
        self.control.over = True
        log.info("call %s ended: %s (%s)", self.spec.call_id,
                 pb.CallEnded.Reason.Name(reason), detail)
        ledger = self.ledger
        self._emit(ended=pb.CallEnded(reason=reason, detail=detail,
                                      caller_turns=ledger.caller_turns,
                                      agent_turns=ledger.agent_turns,
                                      audio_received_ms=int(ledger.audio_in_ms),
                                      frames_lost=min(ledger.frames_lost, _UINT32_MAX),
                                      routed_turns=self.agent.routed_turns,
                                      llm_turns=self.agent.llm_turns))

    async def _supervised(self, action: Supervise) -> None:
        self.ledger.supervised(action.action, action.who, action.text)
        self.watch.event("supervisor", action=action.action, who=action.who, text=action.text)
        log.info("call %s: supervisor %s: %s", self.spec.call_id, action.who, action.action)
        if action.action == "whisper":
            self.control.whisper(action.text, action.who)
        elif action.action == "transfer":
            await self.control.hand_over("transfer_to_human",
                                         f"transferred by supervisor {action.who}")
        else:
            await self.control.hand_over("end_call", f"ended by supervisor {action.who}")

    # ------------------------------------------------------------------ caller input

    async def _on_audio(self, chunks: list[pb.AudioChunk], lag_s: float) -> None:
        """Frames in order; `lag_s`: how long the last waited in the server."""
        fmt, max_frame_ms = self.spec.audio, self.rt.settings.limits.max_frame_ms
        for chunk in chunks:
            try:
                fmt.check_frame(len(chunk.audio), max_frame_ms)
            except AudioFormatError as exc:
                raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"audio chunk {chunk.sequence_number}: {exc}") from exc
            seq = chunk.sequence_number
            if self._last_seq is not None and seq > self._last_seq + 1:
                self.ledger.frames_lost += seq - self._last_seq - 1
            self._last_seq = seq
            self.ledger.audio_in(fmt.duration_ms(len(chunk.audio)), lag_s)
        # One decode and resampling step for all of them (the frames are contiguous).
        payload = chunks[0].audio if len(chunks) == 1 else b"".join(c.audio for c in chunks)
        self.watch.caller(payload)
        for event in await self.listener.feed(self._inbound(payload)):
            if isinstance(event, SpeechStarted):
                self._emit(speech=pb.SpeechEvent(kind=pb.SpeechEvent.SPEECH_STARTED,
                                                 audio_ms=event.audio_ms))
                await self.control.speech_started()
            elif isinstance(event, SpeechStopped):
                self._emit(speech=pb.SpeechEvent(kind=pb.SpeechEvent.SPEECH_STOPPED,
                                                 audio_ms=event.audio_ms))
                self.control.speech_stopped(event)
            elif isinstance(event, TurnEnded):
                await self.control.turn_ended(event, lag_s)
        self.control.say_whisper()  # one waiting for the caller to finish

    async def _on_dtmf(self, dtmf: pb.DtmfDigit) -> None:
        if len(dtmf.digit) != 1 or dtmf.digit not in _DIGITS:
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT,
                               "DTMF digit must be one of 0-9, *, #, A-D")
        self.watch.dtmf(dtmf.duration_ms)
        self.dtmf_digits += 1  # counted, never logged: digits may be card numbers
        log.info("call %s: DTMF digit received (#%d)", self.spec.call_id, self.dtmf_digits)
        transfer = self.profile.transfer
        if transfer and dtmf.digit == transfer.dtmf:
            await self.control.hand_over("transfer_to_human", "caller asked for a human (DTMF)")

    def _on_partial(self, p: Partial) -> None:
        self.control.partial(p.text, p.stable, p.start_ms, p.end_ms)
