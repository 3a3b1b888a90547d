"""Plays the part of a telephony gateway: places a call over gRPC, streams recordings as
caller turns in real 20 ms frames (silence in between, as a phone line does), and
collects what the agent does."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import soundfile as sf
import soxr

from voxline.audio.convert import decode, encode
from voxline.audio.formats import CallAudioFormat, Encoding
from voxline.client.connect import Connection
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

PB_ENCODING = {
    Encoding.PCM16: pb.AUDIO_ENCODING_PCM16,
    Encoding.MULAW: pb.AUDIO_ENCODING_MULAW,
    Encoding.ALAW: pb.AUDIO_ENCODING_ALAW,
}


def load_recording(path: Path | str, rate: int) -> np.ndarray:
    """A recording as float32 mono at `rate` (first channel of a multi-channel file)."""
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio[:, 0]
    return soxr.resample(audio, sr, rate).astype(np.float32) if sr != rate else audio


@dataclass
class CallOptions:
    encoding: Encoding = Encoding.PCM16
    rate: int = 16000
    profile: str = ""
    call_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    frame_ms: int = 20
    fast: bool = False  # send caller audio as fast as possible instead of in real time
    # Caller audio at this many times real time (a gateway catching up after jitter
    # sends a burst); `fast` sends it as fast as possible.
    speed: float = 1.0
    wait_greeting: bool = True
    reply_timeout_s: float = 60.0
    # Speak turn i+1 this long after the first agent audio of reply i arrives, instead of
    # waiting for the reply to finish (barge-in). None: wait.
    barge_in_after_ms: float | None = None
    # Only the replies to these caller turns (1-based) are barged into; None: all.
    barge_in_turns: set[int] | None = None
    hangup_at_end: bool = True
    # False: hang up the moment the last turn is spoken, before the turn can end (a
    # caller who hangs up mid-sentence).
    await_last_reply: bool = True
    # After the last turn, stay on the line (silent) up to this long or until the agent
    # ends the call, before hanging up.
    stay_on_line_s: float = 0.0
    # Silence that ends a caller turn, sent in CallStart (0: the server's default).
    end_of_turn_ms: int = 0
    # Continue a call whose stream broke (CallAccepted.resume_token of that call).
    resume_token: str = ""
    # After the last turn, break the stream as a lost connection would (no hang-up).
    cut_at_end: bool = False
    # Keep both sides' audio for CallResult.stereo (a call's recording).
    keep_audio: bool = False
    # The caller consented to the server recording the call (CallStart.record; each
    # telephony client says so its protocol's way).
    record: bool = False


@dataclass
class CallResult:
    events: list[dict] = field(default_factory=list)  # everything but audio chunks
    # turn, chunk, bytes, and position: the number of `events` received before it
    audio_events: list[dict] = field(default_factory=list)
    # One record per caller turn: final transcript and its latency, voice-to-voice,
    # barge-in reaction, the server's figures.
    turns: list[dict] = field(default_factory=list)
    agent_audio: dict[int, bytearray] = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (status code name, details)
    ended: str = ""
    # Caller audio sent, and what the server says it received (from CallEnded).
    audio_sent_ms: float = 0.0
    audio_received_ms: int = 0
    frames_lost: int = 0
    # With CallOptions.keep_audio: every caller frame sent (silence too), and what came
    # back, in order: ("audio", samples sent by then, agent chunk) or ("clear", ...).
    caller_frames: list[np.ndarray] = field(default_factory=list)
    playback: list[tuple[str, int, bytes]] = field(default_factory=list)

    @property
    def audio_lost_ms(self) -> float:
        """Caller audio the server did not process (rounding of odd frames aside)."""
        return max(0.0, self.audio_sent_ms - self.audio_received_ms - 1)

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    def finals(self) -> dict[int, str]:
        """The caller's final transcripts by turn, as the stream says to take them: a
        final that a later one supersedes is left out."""
        return live_finals(self.of_type("transcript"))

    def stereo(self, fmt: CallAudioFormat) -> np.ndarray:
        """The call as the two ends heard it (needs CallOptions.keep_audio): caller left,
        agent right, float32 (samples, 2) at the call's rate. Agent audio plays from
        when it arrived, each chunk after the one before; a barge-in's clear drops
        what had not played yet."""
        caller = np.concatenate([np.zeros(0, np.float32), *self.caller_frames])
        placed: list[tuple[int, np.ndarray]] = []
        play_end = 0
        for kind, at, data in self.playback:
            if kind == "clear":
                placed = [(start, a[:max(0, at - start)]) for start, a in placed]
                play_end = min(play_end, at)
                continue
            samples = decode(data, fmt.encoding)
            start = max(at, play_end)
            placed.append((start, samples))
            play_end = start + len(samples)
        out = np.zeros((max(len(caller), play_end), 2), np.float32)
        out[:len(caller), 0] = caller
        for start, a in placed:
            out[start:start + len(a), 1] = a
        return out


def _event(msg: pb.CallOutput) -> dict:
    kind = msg.WhichOneof("payload")
    p = getattr(msg, kind)
    if kind == "transcript":
        event = {"type": "transcript", "text": p.text, "final": p.is_final,
                 "turn": p.turn_id, "start_ms": p.start_ms, "end_ms": p.end_ms}
        if p.supersedes_turn_id:
            event["supersedes"] = p.supersedes_turn_id
        return event
    if kind == "agent_text":
        return {"type": "agent_text", "text": p.text, "turn": p.turn_id, "final": p.is_final}
    if kind == "tool_call":
        return {"type": "tool_call", "name": p.name, "arguments": p.arguments_json,
                "outcome": pb.ToolCall.Outcome.Name(p.outcome).removeprefix("OUTCOME_").lower(),
                "result": p.result_json, "duration_ms": p.duration_ms, "turn": p.turn_id}
    if kind == "audio":
        return {"type": "audio", "turn": p.turn_id, "chunk": p.chunk_index, "bytes": len(p.audio)}
    if kind == "speech":
        return {"type": "speech", "kind": pb.SpeechEvent.Kind.Name(p.kind).lower(),
                "audio_ms": p.audio_ms}
    if kind == "turn_metrics":
        return {"type": "server_turn", "turn": p.turn_id, "endpoint_ms": p.endpoint_ms,
                "stt_ms": p.stt_ms, "llm_first_token_ms": p.llm_first_token_ms,
                "tts_first_chunk_ms": p.tts_first_chunk_ms,
                "voice_to_voice_ms": p.voice_to_voice_ms, "tool_ms": p.tool_ms,
                "interrupted": p.interrupted, "audio_ms": p.audio_ms, "route": p.route,
                "llm_last_token_ms": p.llm_last_token_ms, "llm_queue_ms": p.llm_queue_ms,
                "llm_prompt_tokens_evaluated": p.llm_prompt_tokens_evaluated,
                "llm_prompt_tokens_reused": p.llm_prompt_tokens_reused,
                "speculative": p.speculative}
    if kind == "clear_playback":
        return {"type": "clear_playback", "turn": p.turn_id}
    if kind == "accepted":
        return {"type": "accepted", "call_id": p.call_id, "session_id": p.session_id,
                "profile": p.agent_profile, "models": dict(p.models),
                "resume_token": p.resume_token, "resumed": p.resumed}
    if kind == "ended":
        return {"type": "ended", "reason": pb.CallEnded.Reason.Name(p.reason), "detail": p.detail,
                "audio_received_ms": p.audio_received_ms, "frames_lost": p.frames_lost,
                "routed_turns": p.routed_turns, "llm_turns": p.llm_turns}
    if kind == "error":
        return {"type": "error", "code": p.code, "message": p.message}
    if kind == "transfer":
        return {"type": "transfer", "target": p.target, "reason": p.reason}
    if kind == "hangup":
        return {"type": "hangup", "reason": p.reason}
    return {"type": kind}


def live_finals(transcripts: list[dict]) -> dict[int, str]:
    """Final transcripts by turn, without those a later final supersedes."""
    finals: dict[int, str] = {}
    for e in transcripts:
        if e["final"]:
            finals.pop(e.get("supersedes", 0), None)
            finals[e["turn"]] = e["text"]
    return finals


class GatewayCall:
    """One call. `on_event` sees every event as it arrives (the CLI prints them)."""

    def __init__(self, channel: grpc.aio.Channel, opts: CallOptions,
                 on_event: Callable[[dict], None] | None = None,
                 metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.stub = pb_grpc.VoiceAgentStub(channel)
        self.metadata = metadata
        self.opts = opts
        self.fmt = CallAudioFormat(opts.encoding, opts.rate)
        self.on_event = on_event or (lambda e: None)
        self.result = CallResult()
        self._outbox: asyncio.Queue[pb.CallInput | None] = asyncio.Queue()
        self._seq = 0
        self._greeting_done = asyncio.Event()
        # Set when an agent reply to the caller finishes (not interrupted) / starts playing.
        self._reply_done = asyncio.Event()
        self._reply_audio = asyncio.Event()
        self._turns_heard: set[int] = set()
        self._accepted = asyncio.Event()
        self._closed = asyncio.Event()
        self._speech_end: float | None = None  # when this turn's caller audio was all sent
        self._barge_start: float | None = None  # when speech over the agent began
        self._caller_turn = 0
        self._sent = 0  # caller samples sent: the call's clock, as the gateway hears it
        self._cut = False  # the stream was cancelled on purpose (CallOptions.cut_at_end)

    def _turn_record(self) -> dict:
        return self.result.turns[self._caller_turn - 1]

    def _record(self, event: dict) -> None:
        self.result.events.append(event)
        self.on_event(event)

    async def _requests(self):  # type: ignore[no-untyped-def]
        while (msg := await self._outbox.get()) is not None:
            yield msg

    async def _receive(self, responses) -> None:  # type: ignore[no-untyped-def]
        try:
            async for msg in responses:
                event = _event(msg)
                kind = event["type"]
                if kind == "audio":
                    turn = event["turn"]
                    self.result.agent_audio.setdefault(turn, bytearray()).extend(msg.audio.audio)
                    if turn and turn not in self._turns_heard:
                        self._turns_heard.add(turn)
                        rec = self._turn_record() if self._caller_turn else {}
                        if self._speech_end is not None and "voice_to_voice_ms" not in rec:
                            ms = (time.perf_counter() - self._speech_end) * 1000
                            rec["voice_to_voice_ms"] = round(ms, 1)
                            self._record({"type": "turn", "turn": self._caller_turn,
                                          "agent_turn": turn, "voice_to_voice_ms": round(ms, 1)})
                        self._reply_audio.set()
                    if self.opts.keep_audio:
                        self.result.playback.append(("audio", self._sent, msg.audio.audio))
                    # where it fell among the other events, for ordering checks
                    event["position"] = len(self.result.events)
                    self.result.audio_events.append(event)
                    self.on_event(event)
                    continue
                self._record(event)
                if kind == "accepted":
                    self._accepted.set()
                elif kind == "server_turn" and event["turn"] == 0:
                    self._greeting_done.set()
                elif kind == "server_turn" and not event["interrupted"]:
                    if self._caller_turn:  # else the agent spoke first (a whisper)
                        self._turn_record()["server"] = event
                    self._reply_done.set()
                elif kind == "speech" and event["kind"] == "speech_started":
                    self._reply_done.clear()  # the caller goes on: wait for what comes next
                elif kind == "transcript" and event["final"] and self._caller_turn:
                    rec = self._turn_record()
                    # A turn split by a pause has several finals, or one that replaces
                    # those before it: its words are the finals still standing.
                    rec.setdefault("final_turns", []).append(event["turn"])
                    standing = self.result.finals()
                    for r in self.result.turns:
                        if "final_turns" in r:
                            r["transcript"] = " ".join(standing[t] for t in r["final_turns"]
                                                       if t in standing)
                    if self._speech_end is not None:
                        ms = (time.perf_counter() - self._speech_end) * 1000
                        rec["transcript_ms"] = round(ms, 1)
                elif kind == "clear_playback":
                    if self.opts.keep_audio:
                        self.result.playback.append(("clear", self._sent, b""))
                    if self._barge_start is not None and self._caller_turn:
                        ms = (time.perf_counter() - self._barge_start) * 1000
                        self._turn_record()["barge_in_ms"] = round(ms, 1)
                        self._barge_start = None
                elif kind == "ended":
                    # The call is over: stop writing at once, as a gateway would, so no
                    # frame races the server's closing status.
                    self.result.ended = event["reason"]
                    self.result.audio_received_ms = event["audio_received_ms"]
                    self.result.frames_lost = event["frames_lost"]
                    self._closed.set()
                    self._outbox.put_nowait(None)
        except grpc.aio.AioRpcError as exc:
            self.result.error = (exc.code().name, exc.details() or "")
            self._record({"type": "error", "code": exc.code().name, "message": exc.details()})
        except asyncio.CancelledError:
            if not self._cut:
                raise
            self.result.error = ("CANCELLED", "the stream was cut on purpose (cut_at_end)")
        finally:
            self._closed.set()
            for ev in (self._greeting_done, self._reply_done, self._reply_audio, self._accepted):
                ev.set()  # nothing more will come: release every waiter

    def send(self, msg: pb.CallInput | None) -> None:
        if not self._closed.is_set():
            self._outbox.put_nowait(msg)

    def send_audio(self, samples: np.ndarray) -> None:
        self._seq += 1
        if not self._closed.is_set():
            self.result.audio_sent_ms += len(samples) * 1000 / self.opts.rate
            self._sent += len(samples)
            if self.opts.keep_audio:
                self.result.caller_frames.append(samples)
        self.send(pb.CallInput(audio=pb.AudioChunk(audio=encode(samples, self.fmt.encoding),
                                                   sequence_number=self._seq)))

    async def _stream(self, audio: np.ndarray, paced: bool) -> None:
        frame = self.opts.rate * self.opts.frame_ms // 1000
        t0 = time.perf_counter()
        for i in range(0, len(audio), frame):
            if self._closed.is_set():
                return
            self.send_audio(audio[i:i + frame])
            if paced:
                await asyncio.sleep(max(0.0, t0 + (i + frame) / self.opts.rate
                                        / self.opts.speed - time.perf_counter()))
            elif i % (frame * 25) == 0:
                await asyncio.sleep(0)

    async def _silence_until(self, event: asyncio.Event, timeout: float) -> bool:
        """Keep the line alive with real-time silence until `event` is set."""
        frame = np.zeros(self.opts.rate * self.opts.frame_ms // 1000, np.float32)
        deadline = time.perf_counter() + timeout
        next_t = time.perf_counter()
        while not event.is_set() and not self._closed.is_set():
            if time.perf_counter() > deadline:
                return False
            self.send_audio(frame)
            next_t += self.opts.frame_ms / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(0.0, next_t - time.perf_counter()))
        return event.is_set()

    async def run(self, turns: list[np.ndarray | str]) -> CallResult:
        """Place the call and take `turns` one by one: audio (float32 at the call's
        rate) is spoken, a string is pressed as DTMF keys."""
        opts = self.opts
        responses = self.stub.Converse(self._requests(), metadata=self.metadata)
        receiver = asyncio.create_task(self._receive(responses))
        self.send(pb.CallInput(start=pb.CallStart(
            call_id=opts.call_id or f"cli-{uuid.uuid4().hex[:8]}",
            audio_format=pb.AudioFormat(encoding=PB_ENCODING[opts.encoding],
                                        sample_rate_hz=opts.rate),
            agent_profile=opts.profile, metadata=opts.metadata,
            end_of_turn_silence_ms=opts.end_of_turn_ms, resume_token=opts.resume_token,
            record=opts.record,
        )))
        try:
            try:
                await asyncio.wait_for(self._accepted.wait(), opts.reply_timeout_s)
            except TimeoutError:
                self._record({"type": "error", "code": "DEADLINE_EXCEEDED",
                              "message": f"call not accepted within {opts.reply_timeout_s:g} s"})
                return self.result
            if opts.wait_greeting:
                await self._silence_until(self._greeting_done, opts.reply_timeout_s)
            for n, audio in enumerate(turns, start=1):
                if self._closed.is_set():
                    break
                self._caller_turn = n
                self.result.turns.append({"turn": n})
                self._speech_end = None
                # A reply counts when no caller speech started after it: the server may
                # answer a recording's words during its trailing silence (that counts),
                # or the first half of a turn split by a pause (the second half's
                # SPEECH_STARTED clears it).
                self._reply_done.clear()
                if isinstance(audio, str):
                    for digit in audio:
                        self.send(pb.CallInput(dtmf=pb.DtmfDigit(digit=digit, duration_ms=100)))
                else:
                    await self._stream(audio, paced=not opts.fast)
                self._reply_audio.clear()
                self._speech_end = time.perf_counter()
                last = n == len(turns)
                if (opts.barge_in_after_ms is not None and not last
                        and (opts.barge_in_turns is None or n in opts.barge_in_turns)):
                    if await self._silence_until(self._reply_audio, opts.reply_timeout_s):
                        wait = asyncio.Event()
                        asyncio.get_running_loop().call_later(
                            opts.barge_in_after_ms / 1000, wait.set)
                        await self._silence_until(wait, opts.reply_timeout_s)
                        self._barge_start = time.perf_counter()
                    continue
                if last and not opts.await_last_reply:
                    break
                if not await self._silence_until(self._reply_done, opts.reply_timeout_s):
                    self._record({"type": "error", "code": "DEADLINE_EXCEEDED",
                                  "message": f"no reply to turn {n} "
                                             f"within {opts.reply_timeout_s:g} s"})
                    break
            if opts.stay_on_line_s:  # the caller stays, silent, until the agent ends it
                await self._silence_until(self._closed, opts.stay_on_line_s)
            if opts.cut_at_end:
                self._cut = True
                responses.cancel()  # what the server sees when the connection breaks
            elif opts.hangup_at_end and not self._closed.is_set():
                self.send(pb.CallInput(hangup=pb.Hangup(reason="caller hung up")))
        finally:
            self._outbox.put_nowait(None)  # end of the request stream
            await receiver
        return self.result


async def place_call(target: str | Connection, turns: list[np.ndarray | str],
                     opts: CallOptions,
                     on_event: Callable[[dict], None] | None = None) -> CallResult:
    conn = Connection.of(target)
    async with conn.channel() as channel:
        return await GatewayCall(channel, opts, on_event, conn.metadata).run(turns)
