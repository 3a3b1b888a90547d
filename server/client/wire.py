"""Plays a telephony platform's part of a call over one of the telephony protocols (SIP,
Twilio, AudioSocket, Vonage), written from each protocol's published message formats:
what `voxline call --transport` and `voxline bench --transport` use, and the tests.

A platform sees only audio, so a reply is judged from it: the agent's audio plays from
when it arrives, each chunk after the one before (as the platform's playback buffer
does), and a reply is over once that playback has been quiet for `reply_quiet_ms`.
Voice-to-voice is from the end of the caller's speech to the first agent audio."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np

from voxline.audio.convert import decode, encode
from voxline.audio.formats import Encoding
from voxline.client.gateway import CallOptions, CallResult

FRAME_MS = 20


class WireClient(ABC):
    transport: ClassVar[str]
    rate: int = 8000  # the wire's sample rate (a subclass may set 16000)

    def __init__(self, address: str, opts: CallOptions,
                 on_event: Callable[[dict], None] | None = None,
                 reply_quiet_ms: float = 1000.0) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.opts = opts
        self.call_id = opts.call_id or f"{self.transport}-{uuid.uuid4().hex[:8]}"
        self.on_event = on_event or (lambda e: None)
        self.quiet_s = reply_quiet_ms / 1000
        self.result = CallResult()
        self._reply = 0  # which reply agent audio belongs to: 0 the greeting, n turn n
        self._heard_any = asyncio.Event()
        self._closed = asyncio.Event()
        self._play_end = 0.0  # when what the agent sent so far will have played
        self._last_heard = 0.0  # when agent audio last arrived
        self._speech_end: float | None = None
        self._barge_start: float | None = None
        self._sent = 0  # caller samples sent: the call's clock
        self._t0: float | None = None  # when the first caller frame went out
        # When each caller turn's speech began and ended (perf_counter), for timing
        # what the agent did meanwhile (barge-in).
        self.spoken: list[tuple[float, float]] = []

    # ------------------------------------------------------------ what a protocol writes

    @abstractmethod
    async def connect(self) -> None:
        """Open the wire and start the call (profile and metadata from `opts`).
        Raise ConnectionError with the far end's words when it refuses."""

    @abstractmethod
    async def send_frame(self, pcm16: bytes) -> None:
        """One 20 ms frame of caller audio: 16-bit little-endian PCM at `rate`."""

    @abstractmethod
    async def send_dtmf(self, digit: str) -> None: ...

    @abstractmethod
    async def hang_up(self) -> None:
        """End the call from the caller's side, the protocol's way."""

    @abstractmethod
    async def close(self) -> None:
        """Release the wire (after the call, whoever ended it)."""

    # ------------------------------------------------------------ what a protocol calls

    def heard(self, pcm16: bytes) -> None:
        """Agent audio arrived (16-bit PCM at `rate`)."""
        now = time.perf_counter()
        if not pcm16:
            return
        reply = self._reply
        if reply not in self.result.agent_audio:
            self.result.agent_audio[reply] = bytearray()
            if reply and self._speech_end is not None:
                ms = round((now - self._speech_end) * 1000, 1)
                self.result.turns[reply - 1].setdefault("voice_to_voice_ms", ms)
                self.event("turn", turn=reply, agent_turn=reply, voice_to_voice_ms=ms,
                           wire=self.transport)
        self.result.agent_audio[reply].extend(pcm16)
        if self.opts.keep_audio:
            self.result.playback.append(("audio", self._sent, pcm16))
        self._play_end = max(self._play_end, now) + len(pcm16) / 2 / self.rate
        self._last_heard = now
        self._heard_any.set()

    def cleared(self) -> None:
        """The far end dropped what it had not played (barge-in)."""
        self._play_end = time.perf_counter()
        if self.opts.keep_audio:
            self.result.playback.append(("clear", self._sent, b""))
        if self._barge_start is not None and self._reply:
            ms = round((time.perf_counter() - self._barge_start) * 1000, 1)
            self.result.turns[self._reply - 1].setdefault("barge_in_ms", ms)
            self._barge_start = None
        self.event("clear_playback", turn=self._reply)

    def ended(self, reason: str, detail: str = "") -> None:
        """The far end ended the call (hang-up, transfer, closed, refused)."""
        if not self._closed.is_set():
            self.result.ended = reason
            self.event("ended", reason=reason, detail=detail)
            self._closed.set()

    def event(self, kind: str, **fields: object) -> None:
        event = {"type": kind, **fields}
        self.result.events.append(event)
        self.on_event(event)

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    # ------------------------------------------------------------ the call

    async def run(self, turns: list[np.ndarray | str]) -> CallResult:
        """Place the call and take `turns` one by one: audio (float32 at `rate`) is
        spoken in real time, a string is pressed as DTMF keys."""
        opts = self.opts
        try:
            await asyncio.wait_for(self.connect(), opts.reply_timeout_s)
        except (ConnectionError, OSError, TimeoutError) as exc:
            self.result.error = ("REFUSED", str(exc) or type(exc).__name__)
            self.event("error", code="REFUSED", message=self.result.error[1])
            await self.close()
            return self.result
        self.event("accepted", call_id=self.call_id, resumed=False,
                   profile=self.opts.profile or "(the listener's)",
                   session_id=f"{self.transport} {self.call_id}")
        try:
            if opts.wait_greeting:
                await self._until_reply_done()
            for n, audio in enumerate(turns, start=1):
                if self.is_closed:
                    break
                self._reply = n
                self.result.turns.append({"turn": n})
                self._speech_end = None
                if isinstance(audio, str):
                    for digit in audio:
                        await self.send_dtmf(digit)
                else:
                    await self._speak(audio)
                self._speech_end = time.perf_counter()
                last = n == len(turns)
                if (opts.barge_in_after_ms is not None and not last
                        and (opts.barge_in_turns is None or n in opts.barge_in_turns)):
                    if await self._silence_until(lambda n=n: n in self.result.agent_audio):
                        await self._silence_for(opts.barge_in_after_ms / 1000)
                        self._barge_start = time.perf_counter()
                    continue
                if not await self._until_reply_done():
                    if self.is_closed:  # the far end ended the call (transfer, hang-up)
                        break
                    self.event("error", code="DEADLINE_EXCEEDED",
                               message=f"no reply to turn {n} within {opts.reply_timeout_s:g} s")
                    break
            if opts.stay_on_line_s:
                await self._silence_for(opts.stay_on_line_s)
            if opts.hangup_at_end and not self.is_closed:
                await self.hang_up()
                self.ended("CALLER_HANGUP", "the caller hung up")
        except (ConnectionError, OSError) as exc:
            self.ended("LOST", str(exc))
        finally:
            await self.close()
        return self.result

    async def _speak(self, audio: np.ndarray) -> None:
        frame, start = self.rate * FRAME_MS // 1000, time.perf_counter()
        for i in range(0, len(audio), frame):
            if self.is_closed:
                break
            await self._frame(audio[i:i + frame])
        self.spoken.append((start, time.perf_counter()))

    async def _frame(self, samples: np.ndarray) -> None:
        """Send one frame and wait for its time (the caller's clock runs in real time)."""
        if len(samples) < self.rate * FRAME_MS // 1000:
            samples = np.pad(samples, (0, self.rate * FRAME_MS // 1000 - len(samples)))
        if self.opts.keep_audio:
            self.result.caller_frames.append(samples)
        self._sent += len(samples)
        self.result.audio_sent_ms += FRAME_MS
        if self._t0 is None:
            self._t0 = time.perf_counter() - FRAME_MS / 1000
        await self.send_frame(encode(samples.astype(np.float32), Encoding.PCM16))
        await asyncio.sleep(max(0.0, self._t0 + self._sent / self.rate - time.perf_counter()))

    async def _silence_until(self, done: Callable[[], bool]) -> bool:
        """Real-time silence until `done()` (False: the reply timeout or the end)."""
        silence = np.zeros(self.rate * FRAME_MS // 1000, np.float32)
        deadline = time.perf_counter() + self.opts.reply_timeout_s
        while not done():
            if self.is_closed or time.perf_counter() > deadline:
                return False
            await self._frame(silence)
        return True

    async def _silence_for(self, seconds: float) -> None:
        wake = time.perf_counter() + seconds
        await self._silence_until(lambda: time.perf_counter() >= wake)

    async def _until_reply_done(self) -> bool:
        """Silence until the agent has spoken since the caller stopped and its playback
        has gone quiet. Audio that came while the caller was still speaking (a reply to
        the words before a pause, cut by the words after it) is not the reply."""
        reply, since = self._reply, self._speech_end or 0.0
        return await self._silence_until(
            lambda: reply in self.result.agent_audio and self._last_heard >= since
            and time.perf_counter() > self._play_end + self.quiet_s)


def pcm16_of(payload: bytes, encoding: Encoding) -> bytes:
    """Agent audio from the wire as 16-bit PCM (for `heard`)."""
    if encoding is Encoding.PCM16:
        return payload
    return encode(decode(payload, encoding), Encoding.PCM16)


CLIENTS = {  # transport -> "module:class"
    "sip": "voxline.client.sip:SipClient",
    "twilio": "voxline.client.twilio:TwilioClient",
    "audiosocket": "voxline.client.audiosocket:AudioSocketClient",
    "vonage": "voxline.client.vonage:VonageClient",
}


def client_class(transport: str) -> type[WireClient]:
    if transport not in CLIENTS:
        raise ValueError(f"no client for transport {transport!r}: one of {', '.join(CLIENTS)}")
    module, _, name = CLIENTS[transport].partition(":")
    return getattr(importlib.import_module(module), name)


def wire_rate(transport: str) -> int:
    """The sample rate a transport's client speaks at."""
    return client_class(transport).rate


async def place_wire_call(transport: str, address: str, turns: list[np.ndarray | str],
                          opts: CallOptions, on_event: Callable[[dict], None] | None = None,
                          api_key: str = "", **kwargs: object) -> CallResult:
    """One call over a telephony transport to Voxline's listener at HOST:PORT. An API
    key goes to the protocols that can carry one (the WebSockets' upgrade header)."""
    cls = client_class(transport)
    if api_key and "api_key" in inspect.signature(cls).parameters:
        kwargs["api_key"] = api_key
    return await cls(address, opts, on_event, **kwargs).run(turns)

