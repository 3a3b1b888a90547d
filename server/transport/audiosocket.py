"""Asterisk AudioSocket: calls that Asterisk's `AudioSocket()` dialplan application (or
the `AudioSocket/` channel) streams to Voxline over TCP.

The wire is a run of frames `[kind u8][length u16 big-endian][payload]`: the call's
UUID first (0x01, 16 bytes), then signed-linear 16-bit little-endian mono audio (0x10 at
8 kHz; newer Asterisk builds send 0x11..0x18 for higher rates, of which Voxline takes
16 kHz, 0x12), DTMF (0x03, one ASCII digit), hang-up (0x00) and errors (0xff). Asterisk
takes only audio and hang-up back and plays audio the moment it arrives, keeping no
buffer: the agent's audio goes out through a Pacer in 20 ms frames of the caller's kind,
and a barge-in simply drops what the pacer holds. The protocol has no transfer and no
channel variables: a transfer ends the socket (the record says TRANSFERRED) and the
dialplan after AudioSocket() carries on, e.g. to a queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc

from voxline.config import AudioSocketSection
from voxline.errors import ServiceError
from voxline.transport.gate import Rejected
from voxline.transport.pacing import Pacer
from voxline.transport.wire import (
    Begin,
    Listening,
    WireCall,
    bad_input,
    listener_tenant,
    serve_wire,
)
from voxline.v1 import voice_agent_pb2 as pb

if TYPE_CHECKING:
    from voxline.transport.service import VoiceAgentService

log = logging.getLogger(__name__)

HANGUP, UUID, DTMF, ERROR = 0x00, 0x01, 0x03, 0xFF
SLIN = 0x10  # 8 kHz; the kinds above it are the higher rates
# Audio kinds and their sample rates, as the AudioSocket protocol documents them.
RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100,
         0x16: 48000, 0x17: 96000, 0x18: 192000}
CALL_RATES = (8000, 16000)  # what a call session takes
DIGITS = frozenset("0123456789*#ABCD")
FRAME_S = 0.02
# Asterisk's error codes (bit-packed, one byte).
ASTERISK_ERRORS = {0x01: "hangup of the calling party", 0x02: "frame forwarding error",
                   0x04: "memory allocation error"}
MARK_MS = 100  # how often the call hears how far the agent's audio has played
# What one connection may cost before it is a call: the payload each non-audio kind
# holds at most (refused from its header, before a byte of it is read), and the frames
# held until the first audio frame says the call's rate (DTMF pressed during set-up).
PAYLOAD_MAX = {HANGUP: 0, UUID: 16, DTMF: 1, ERROR: 1}
HELD_MAX = 32
_DRAIN_S = 1.0  # at the end, for the pacer to play out what it holds (the goodbye)
_LINGER_S = 1.0  # after the hang-up, for Asterisk to close its side


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BH", kind, len(payload)) + payload


class WireGone(ConnectionError):
    """The socket closed before the call began."""


class AudioSocketCall(WireCall):
    transport = "audiosocket"

    def __init__(self, service: VoiceAgentService, section: AudioSocketSection,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 pending: set[AudioSocketCall]) -> None:
        self.service = service
        self.section = section
        self._pending = pending  # the listener's connections that are not calls yet
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else str(peer or "")
        self.uuid = ""
        self.kind = SLIN
        self.rate = 8000
        self._held: list[tuple[int, bytes]] = []  # read by begin, before the call ran
        self._pacer: Pacer | None = None
        self._closed = False  # the hang-up went out (or the socket broke)
        self._released = False
        self._seq = 0
        # The agent turn the pacer plays, and how much of it the last mark reported.
        self._turn: int | None = None
        self._marked = 0

    # ------------------------------------------------------------ reading frames

    async def _frame(self) -> tuple[int, bytes] | None:
        """The next frame; None at a clean end of the stream (between frames)."""
        try:
            header = await self.reader.readexactly(3)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise bad_input("truncated AudioSocket frame header") from None
            return None
        kind, length = struct.unpack("!BH", header)
        if kind not in RATES and kind not in PAYLOAD_MAX:
            raise bad_input(f"unknown AudioSocket frame kind 0x{kind:02x}")
        if kind in PAYLOAD_MAX and length > PAYLOAD_MAX[kind]:
            raise bad_input(f"an AudioSocket frame of kind 0x{kind:02x} holds at most "
                            f"{PAYLOAD_MAX[kind]} bytes; this one announces {length}")
        if kind in RATES and length > self._audio_limit(RATES[kind]):
            # Refused before reading it: a frame longer than a call takes.
            raise bad_input(f"audio frame of {length} bytes is over the limit of "
                            f"{self._audio_limit(RATES[kind])} bytes "
                            f"(limits.max_frame_ms at {RATES[kind]} Hz)")
        try:
            payload = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise bad_input(f"truncated AudioSocket frame (kind 0x{kind:02x}: "
                            f"{length} bytes announced)") from None
        return kind, payload

    def _audio_limit(self, rate: int) -> int:
        limits = self.service.rt.settings.limits
        return min(rate * 2 * limits.max_frame_ms // 1000, limits.max_message_bytes)

    # ------------------------------------------------------------ WireCall

    async def begin(self) -> Begin:
        gate = self.service.gate
        tenant = listener_tenant(self.transport, self.section, gate, self.peer)
        if len(self._pending) >= self.section.max_pending:
            raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{len(self._pending)} AudioSocket connections are already waiting "
                           "to become calls (telephony.audiosocket.max_pending)",
                           "pending_limit")
        self._pending.add(self)
        try:
            return await self._begin(tenant)
        finally:
            self._pending.discard(self)

    async def _begin(self, tenant: str) -> Begin:
        try:
            async with asyncio.timeout(self.section.uuid_timeout_s):
                first = await self._frame()
                if first is None:
                    raise WireGone("closed before the call's UUID")
                kind, payload = first
                if kind != UUID:
                    raise bad_input(f"the first AudioSocket frame must be the call UUID "
                                    f"(0x01), got kind 0x{kind:02x}")
                if len(payload) != 16:
                    raise bad_input(f"call UUID of {len(payload)} bytes (16 expected)")
                self.uuid = str(uuid.UUID(bytes=payload))
                # The rate is in the audio frames' kind: wait for the first one (Asterisk
                # streams audio, silence too, from the start).
                while True:
                    got = await self._frame()
                    if got is None or got[0] in (HANGUP, ERROR):
                        raise WireGone(f"call {self.uuid} ended before its audio")
                    if got[0] in RATES:
                        self._start_audio(got[0])
                    elif got[0] != DTMF:
                        self._input(*got)  # raises: a second UUID, an unknown kind
                    if len(self._held) >= HELD_MAX:
                        raise bad_input(f"more than {HELD_MAX} frames before the first "
                                        "audio frame")
                    self._held.append(got)
                    if got[0] in RATES:
                        break
        except TimeoutError:
            what = "call UUID" if not self.uuid else "first audio frame"
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no {what} within {self.section.uuid_timeout_s:g} s") from None
        start = pb.CallStart(
            call_id=self.uuid,
            audio_format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16,
                                        sample_rate_hz=self.rate),
            agent_profile=self._profile(),  # the UUID is the call's id: no LLM metadata
            record=self.section.record)  # the dialplan's consent, for the whole port
        log.info("audiosocket call %s from %s at %d Hz", self.uuid, self.peer, self.rate)
        return Begin(tenant, start)

    def _start_audio(self, kind: int) -> None:
        rate = RATES[kind]
        if rate not in CALL_RATES:
            raise bad_input(f"AudioSocket kind 0x{kind:02x} is {rate} Hz audio; Voxline "
                            "takes 8 kHz (0x10) or 16 kHz (0x12): set the channel's "
                            "format to slin or slin16")
        self.kind, self.rate = kind, rate
        self._pacer = Pacer(rate * 2 // 50, FRAME_S, self._send_audio)
        self._pacer.start()

    def _profile(self) -> str:
        best = ""
        for prefix in self.section.uuid_profiles:
            if self.uuid.startswith(prefix.lower()) and len(prefix) > len(best):
                best = prefix
        return self.section.uuid_profiles[best] if best else self.section.profile

    async def inputs(self) -> AsyncIterator[pb.CallInput]:
        held, self._held = self._held, []
        for kind, payload in held:
            if (msg := self._input(kind, payload)) is not None:
                yield msg
                if msg.HasField("hangup"):
                    return
        while (got := await self._frame()) is not None:
            if (mark := self._progress()) is not None:
                yield mark
            if (msg := self._input(*got)) is not None:
                yield msg
                if msg.HasField("hangup"):
                    return
        # Closing the socket is a hang-up too, as the protocol says.
        yield pb.CallInput(hangup=pb.Hangup(reason="Asterisk closed the AudioSocket"))

    def _progress(self) -> pb.CallInput | None:
        """A mark of what the pacer has played of the agent's turn, every MARK_MS: what
        Asterisk got is what the caller heard, so a barge-in's history is exact."""
        if self._pacer is None or self._turn is None:
            return None
        played = int(self._pacer.sent_ms.get(self._turn, 0.0))
        if played - self._marked < MARK_MS:
            return None
        self._marked = played
        return pb.CallInput(mark=pb.PlaybackMark(turn_id=self._turn, played_ms=played))

    def _input(self, kind: int, payload: bytes) -> pb.CallInput | None:
        if kind in RATES:
            if kind != self.kind:
                raise bad_input(f"audio of kind 0x{kind:02x} in a call that began with "
                                f"0x{self.kind:02x} (the rate may not change)")
            if len(payload) % 2:
                raise bad_input(f"audio frame of {len(payload)} bytes is not whole "
                                "16-bit samples")
            if not payload:
                return None
            self._seq += 1
            return pb.CallInput(audio=pb.AudioChunk(audio=payload, sequence_number=self._seq))
        if kind == DTMF:
            digit = payload.decode("ascii", errors="replace")
            if len(payload) != 1 or digit not in DIGITS:
                raise bad_input("a DTMF frame must hold one digit (0-9, *, #, A-D)")
            return pb.CallInput(dtmf=pb.DtmfDigit(digit=digit))
        if kind == HANGUP:
            return pb.CallInput(hangup=pb.Hangup(reason="Asterisk hung up"))
        if kind == ERROR:
            code = payload[0] if payload else 0
            what = ", ".join(t for bit, t in ASTERISK_ERRORS.items() if code & bit)
            log.warning("audiosocket call %s: Asterisk reported error 0x%02x (%s)",
                        self.uuid, code, what or "application-specific")
            if code & 0x01:  # the caller hung up
                return pb.CallInput(hangup=pb.Hangup(reason="the calling party hung up"))
            raise ServiceError(grpc.StatusCode.ABORTED,
                               f"Asterisk reported error 0x{code:02x} "
                               f"({what or 'application-specific'})")
        # _frame refused every other kind from its header: this is a UUID.
        raise bad_input("a second call UUID in the middle of the call")

    async def send(self, out: pb.CallOutput) -> None:
        kind = out.WhichOneof("payload")
        if kind == "audio" and self._pacer is not None and not self._closed:
            if out.audio.turn_id != self._turn:
                self._turn, self._marked = out.audio.turn_id, 0
            self._pacer.push(out.audio.turn_id, out.audio.audio)
        elif kind == "clear_playback" and self._pacer is not None:
            self._pacer.clear()  # Asterisk keeps no buffer: what we hold is all there is
        elif kind == "transfer":
            log.info("audiosocket call %s: TRANSFERRED to %s; AudioSocket ends and the "
                     "dialplan goes on", self.uuid, out.transfer.target)
        elif kind == "ended":
            if self._pacer is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._pacer.drained(), _DRAIN_S)
            await self._end_wire()  # the reading ends when Asterisk closes its side

    async def refuse(self, exc: Rejected) -> None:
        log.info("audiosocket call %s from %s refused: %s", self.uuid or "?", self.peer,
                 exc.message)
        await self._close()  # AudioSocket has no status: a hang-up is all Asterisk hears

    async def hang_up(self, ended: pb.CallEnded | None, error: ServiceError | None) -> None:
        if error is not None:
            log.info("audiosocket call %s ended: %s", self.uuid, error.message)
        await self._close()

    async def _send_audio(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            self.writer.write(frame(self.kind, data))
            await self.writer.drain()
        except (ConnectionError, OSError):
            self._closed = True  # the socket went; the reader sees it too

    async def _end_wire(self) -> None:
        """Hang up: 0x00, then our half of the socket closes (once). Asterisk closes its
        half on the hang-up, which ends the reading."""
        if self._pacer is not None:
            await self._pacer.close()
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.writer.write(frame(HANGUP))
            await self.writer.drain()
            if self.writer.can_write_eof():
                self.writer.write_eof()

    async def _close(self) -> None:
        """Hang up and release the socket; idempotent. Only once nothing else reads it."""
        await self._end_wire()
        if self._released:
            return
        self._released = True
        # What Asterisk sends until it has read the hang-up is read and dropped: closing
        # on unread bytes would reset the connection, and the hang-up with it.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_LINGER_S):
                while await self.reader.read(1 << 16):
                    pass
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def listen(service: VoiceAgentService, section: AudioSocketSection, host: str
                 ) -> Listening:
    connections: set[asyncio.StreamWriter] = set()
    pending: set[AudioSocketCall] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(writer)
        try:
            await serve_wire(service, AudioSocketCall(service, section, reader, writer,
                                                      pending))
        finally:
            connections.discard(writer)
            writer.close()

    server = await asyncio.start_server(handle, host or None, section.port)
    port = server.sockets[0].getsockname()[1]

    async def close() -> None:
        server.close()
        for writer in list(connections):
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)

    return Listening("audiosocket", port, close)
