"""Vonage Voice API WebSockets: calls that an NCCO `connect` action with a `websocket`
endpoint streams to Voxline.

Vonage opens the WebSocket and sends one text message first, `websocket:connected`,
with the audio's content type (`audio/l16;rate=16000` or 8000) and whatever `headers`
the NCCO set (here: `profile` picks the agent, `call_id` or `uuid` names the call,
`record` (yes, true or 1) says the caller consented to recording, the rest is the
caller's metadata). Then binary frames of 16-bit little-endian PCM, 20 ms
each, flow both ways, with text events: `websocket:dtmf` in; `{"action": "clear"}` out
on a barge-in (Vonage drops what it has buffered and answers `websocket:cleared`), and
`{"action": "notify"}` after each chunk of agent audio, which Vonage echoes as
`websocket:notify` when its playback reaches it: the call's playback marks. Vonage
buffers what it is sent, so agent audio goes out as it comes (the call session keeps it
about a second ahead), cut into whole 20 ms frames.

A refusal closes the socket with a reason: 1013 when there is no room or the server is
draining, 1008 for credentials, 1003/1007 for a start it cannot take. Input that breaks
the protocol ends that call: 1007 for what is not valid (not JSON, not a known event,
not whole samples), 1008 for audio before `websocket:connected`, 1009 for a frame over
the size limit. A call that ends closes with 1000 and its reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from voxline.client.connect import API_KEY_HEADER
from voxline.config import VonageSection
from voxline.errors import ServiceError
from voxline.transport.gate import Rejected
from voxline.transport.start import consented
from voxline.transport.wire import (
    Begin,
    Listening,
    WireCall,
    allowed,
    bad_input,
    listener_tenant,
    serve_wire,
)
from voxline.v1 import voice_agent_pb2 as pb

if TYPE_CHECKING:
    from voxline.transport.service import VoiceAgentService

log = logging.getLogger(__name__)

NORMAL, UNSUPPORTED, INVALID, POLICY, TOO_BIG, INTERNAL, TRY_LATER = (
    1000, 1003, 1007, 1008, 1009, 1011, 1013)
_CONTENT_TYPE = re.compile(r"^\s*audio/l16\s*;\s*rate\s*=\s*(\d+)\s*$", re.IGNORECASE)
CALL_RATES = (8000, 16000)  # what a call session takes (Vonage also offers 24000)
DIGITS = frozenset("0123456789*#ABCD")
# Headers of websocket:connected that are not caller metadata.
_RESERVED = {"event", "content-type", "profile", "call_id", "uuid", "record"}


def _reason(text: str) -> str:
    """A close reason within the 123 bytes a close frame allows."""
    data = text.encode()[:123]
    return data.decode(errors="ignore")


class VonageCall(WireCall):
    transport = "vonage"

    def __init__(self, service: VoiceAgentService, section: VonageSection,
                 ws: ServerConnection) -> None:
        self.service = service
        self.section = section
        self.ws = ws
        peer = ws.remote_address
        self.peer = peer[0] if isinstance(peer, tuple) else str(peer or "")
        self.call_id = ""
        self.rate = 16000
        self.frame_bytes = 640
        self._code = INVALID  # the close code of the bad input that ended the call
        self._seq = 0
        self._closed = False

    def _bad(self, code: int, message: str) -> ServiceError:
        self._code = code
        return bad_input(message)

    # ------------------------------------------------------------ WireCall

    async def begin(self) -> Begin:
        try:
            first = await _recv(self.ws, self.section.connect_timeout_s)
        except TimeoutError:
            self._code = POLICY
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no websocket:connected within "
                               f"{self.section.connect_timeout_s:g} s") from None
        # Credentials after the first message: a refusal then meets a platform that has
        # said its part, not one still writing it.
        tenant = self._tenant()
        if isinstance(first, bytes):
            raise self._bad(POLICY, "audio before websocket:connected: the first message "
                                    "must be the websocket:connected event")
        event = self._json(first)
        if event.get("event") != "websocket:connected":
            raise self._bad(POLICY, "the first message must be websocket:connected, got "
                                    f"{str(event.get('event'))[:40]!r}")
        content_type = str(event.get("content-type", ""))
        m = _CONTENT_TYPE.match(content_type)
        if m is None or int(m.group(1)) not in CALL_RATES:
            raise self._bad(UNSUPPORTED, f"content-type {content_type[:40]!r} is not taken: "
                                         "use audio/l16;rate=16000 or audio/l16;rate=8000")
        self.rate = int(m.group(1))
        self.frame_bytes = self.rate * 2 // 50
        self.call_id = str(event.get("call_id") or event.get("uuid")
                           or f"vonage-{uuid.uuid4().hex[:12]}")
        metadata = {str(k): v if isinstance(v, str) else json.dumps(v)
                    for k, v in event.items() if k not in _RESERVED}
        profile = event.get("profile") or self.section.profile
        start = pb.CallStart(
            call_id=self.call_id,
            audio_format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16,
                                        sample_rate_hz=self.rate),
            agent_profile=str(profile), metadata=metadata, record=consented(event.get("record")))
        self._code = POLICY  # a start the call refuses (metadata over a bound, a profile)
        log.info("vonage call %s from %s at %d Hz", self.call_id, self.peer, self.rate)
        return Begin(tenant, start)

    def _tenant(self) -> str:
        """An API key in the upgrade's headers names the tenant; else the listener's."""
        request = self.ws.request
        creds = [(k.lower(), v) for k, v in (request.headers.raw_items() if request else ())
                 if k.lower() in (API_KEY_HEADER, "authorization")]
        if not creds:
            return listener_tenant(self.transport, self.section, self.service.gate, self.peer)
        if not allowed(self.peer, self.section.allow):
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                           f"{self.peer} is not in telephony.vonage.allow", "forbidden")
        return self.service.gate.authenticate(creds)

    def _json(self, text: str) -> dict:
        try:
            event = json.loads(text)
        except ValueError:
            raise self._bad(INVALID, "a text message that is not JSON") from None
        if not isinstance(event, dict):
            raise self._bad(INVALID, "a text message that is not a JSON object")
        return event

    def _limit(self) -> int:
        limits = self.service.rt.settings.limits
        return min(self.rate * 2 * limits.max_frame_ms // 1000, limits.max_message_bytes)

    async def inputs(self) -> AsyncIterator[pb.CallInput]:
        try:
            async for message in self.ws:
                if (msg := self._input(message)) is not None:
                    yield msg
        except ConnectionClosedError as exc:  # no close frame: the platform vanished
            raise ConnectionError("the WebSocket's connection broke (no close frame)") \
                from exc
        # Vonage ends a call by closing the socket: that is the caller hanging up.
        yield pb.CallInput(hangup=pb.Hangup(reason="Vonage closed the WebSocket"))

    def _input(self, message: str | bytes) -> pb.CallInput | None:
        if isinstance(message, bytes):
            if len(message) % 2:
                raise self._bad(INVALID, f"an audio frame of {len(message)} bytes is not "
                                         "whole 16-bit samples")
            if len(message) > self._limit():
                raise self._bad(TOO_BIG, f"an audio frame of {len(message)} bytes is over the "
                                         f"limit of {self._limit()} bytes (limits.max_frame_ms)")
            if not message:
                return None
            self._seq += 1
            return pb.CallInput(audio=pb.AudioChunk(audio=message, sequence_number=self._seq))
        event = self._json(message)
        kind = event.get("event")
        if kind == "websocket:dtmf":
            digit, duration = event.get("digit"), event.get("duration", 0)
            if not isinstance(digit, str) or digit not in DIGITS:
                raise self._bad(INVALID, "websocket:dtmf needs a digit (0-9, *, #, A-D)")
            if not isinstance(duration, int) or isinstance(duration, bool):
                duration = 0
            return pb.CallInput(dtmf=pb.DtmfDigit(digit=digit,
                                                  duration_ms=max(0, min(duration, 60000))))
        if kind == "websocket:notify":
            payload = event.get("payload")
            if isinstance(payload, dict) and _uint(payload.get("turn_id")) is not None \
                    and _uint(payload.get("played_ms")) is not None:
                return pb.CallInput(mark=pb.PlaybackMark(turn_id=payload["turn_id"],
                                                         played_ms=payload["played_ms"]))
            return None  # a notify the NCCO's author sent, not one of ours
        if kind == "websocket:cleared":
            return None  # Vonage dropped its buffer, as asked
        if kind == "websocket:connected":
            raise self._bad(INVALID, "a second websocket:connected")
        raise self._bad(INVALID, f"unknown event {str(kind)[:40]!r}: Vonage sends "
                                 "websocket:dtmf, websocket:notify and websocket:cleared")

    async def send(self, out: pb.CallOutput) -> None:
        if self._closed:
            return
        # Vonage closed the socket: the reading brings the hang-up in its turn.
        with contextlib.suppress(ConnectionClosed):
            await self._send(out)

    async def _send(self, out: pb.CallOutput) -> None:
        kind = out.WhichOneof("payload")
        if kind == "audio":
            audio = out.audio
            data = audio.audio
            if len(data) % self.frame_bytes:  # Vonage plays whole 20 ms frames only
                data += b"\x00" * (self.frame_bytes - len(data) % self.frame_bytes)
            for i in range(0, len(data), self.frame_bytes):
                await self.ws.send(data[i:i + self.frame_bytes])
            # Echoed when Vonage's playback reaches it: how much of the turn was heard.
            played = audio.offset_ms + len(audio.audio) * 1000 // (self.rate * 2)
            await self.ws.send(json.dumps({"action": "notify", "payload": {
                "turn_id": audio.turn_id, "played_ms": played}}))
        elif kind == "clear_playback":
            await self.ws.send(json.dumps({"action": "clear"}))
        elif kind == "transfer":
            log.info("vonage call %s: TRANSFERRED to %s; the socket closes and the NCCO's "
                     "event webhook carries the call on", self.call_id, out.transfer.target)
        elif kind == "ended":
            reason = pb.CallEnded.Reason.Name(out.ended.reason)
            await self._close(NORMAL, f"{reason}: {out.ended.detail}")

    async def refuse(self, exc: Rejected) -> None:
        code = TRY_LATER if exc.reason in ("server_limit", "tenant_limit", "draining") \
            else POLICY if exc.reason in ("unauthenticated", "forbidden") else self._code
        log.info("vonage call %s from %s refused (%d): %s", self.call_id or "?", self.peer,
                 code, exc.message)
        await self._close(code, exc.message)

    async def hang_up(self, ended: pb.CallEnded | None, error: ServiceError | None) -> None:
        if error is not None:
            code = self._code if error.code == grpc.StatusCode.INVALID_ARGUMENT else INTERNAL
            log.info("vonage call %s ended (%d): %s", self.call_id, code, error.message)
            await self._close(code, error.message)
        elif ended is not None:
            await self._close(NORMAL, pb.CallEnded.Reason.Name(ended.reason))
        else:
            await self._close(NORMAL, "the call is over")

    async def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, _reason(reason))


def _uint(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32
    return value if ok else None  # type: ignore[return-value]


async def _recv(ws: ServerConnection, timeout_s: float) -> str | bytes:
    async with asyncio.timeout(timeout_s):
        return await ws.recv()


async def listen(service: VoiceAgentService, section: VonageSection, host: str
                 ) -> Listening:
    async def handler(ws: ServerConnection) -> None:
        await serve_wire(service, VonageCall(service, section, ws))

    limits = service.rt.settings.limits
    server = await serve(handler, host or None, section.port, compression=None,
                         max_size=limits.max_message_bytes, close_timeout=2,
                         ping_interval=None)
    port = next(iter(server.sockets)).getsockname()[1]

    async def close() -> None:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()

    return Listening("vonage", port, close)
