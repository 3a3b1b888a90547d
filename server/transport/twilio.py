"""Twilio Media Streams (bidirectional `<Connect><Stream>`) and Telnyx media streaming
(`stream_bidirectional_mode=rtp`) on one WebSocket listener. Which platform a stream
comes from is read from its first messages' spelling (twilio_wire.detect); both run as
transport "twilio", the listener's name, so the listener's call count, the metrics and
the records agree (the log line of each call names the platform).

Who may connect is settled on the upgrade request, before any call exists
(twilio_wire.upgrade_tenant): `X-Twilio-Signature` must match one configured account's
auth token (403 otherwise) and that account names the tenant; a project API key names
its tenant (streams that cannot be signed); without accounts, the listener's tenant
and allowlist do; with accounts and neither credential: 401. After the
upgrade, a refusal is a close with a reason: 1013 when there is no room (with the
retry time), 1008 otherwise; input that breaks the protocol ends that call with a
close code for what was wrong (1003, 1007, 1008, 1009).

A socket reader of its own feeds the call: it answers the platform's mark echoes at
once, even while the call is ending and no longer reads its input, so a transfer can
wait until the caller has heard the last of the agent's audio before it closes the
stream (the platform then runs what follows `</Connect>`)."""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from voxline.audio.formats import Encoding
from voxline.config import LimitsSection, TwilioSection
from voxline.errors import ServiceError
from voxline.transport import twilio_wire as tw
from voxline.transport.gate import Rejected
from voxline.transport.pacing import Reorder
from voxline.transport.start import consented
from voxline.transport.wire import Begin, Listening, WireCall, bad_input, serve_wire
from voxline.v1 import voice_agent_pb2 as pb

if TYPE_CHECKING:
    from voxline.transport.service import VoiceAgentService

log = logging.getLogger(__name__)

NAME = "twilio"
_PLAYED_MARGIN_S = 2.0  # beyond the audio still to play, for its last mark to come back
_PLAYED_MOST_S = 10.0
_PIECE_MS = 100  # the largest media payload sent back (agent chunks are ~100 ms)
_QUEUE = 50  # caller messages read ahead of the call (a second of 20 ms frames)
_END = object()
_MARK = re.compile(r"t([0-9]{1,9}):([0-9]{1,9})")  # "t<turn>:<ms played>"


async def listen(service: VoiceAgentService, section: TwilioSection, host: str) -> Listening:
    accounts = tw.read_accounts(service.gate, section)
    tenants: weakref.WeakKeyDictionary[ServerConnection, str] = weakref.WeakKeyDictionary()
    limits = service.rt.settings.limits

    def check(connection: ServerConnection, request: Request) -> Response | None:
        peer = str(connection.remote_address[0]) if connection.remote_address else ""
        try:
            tenants[connection] = tw.upgrade_tenant(service.gate, section, accounts,
                                                    request, peer)
        except Rejected as exc:
            service.admission.count(exc, "call", NAME)
            status = (http.HTTPStatus.UNAUTHORIZED if exc.code == grpc.StatusCode.UNAUTHENTICATED
                      else http.HTTPStatus.FORBIDDEN)
            return connection.respond(status, exc.message + "\n")
        return None

    async def handler(connection: ServerConnection) -> None:
        call = TwilioCall(service, section, connection, tenants.pop(connection, ""))
        await serve_wire(service, call)

    server = await serve(handler, host, section.port, process_request=check,
                         compression=None, max_size=limits.max_message_bytes,
                         # The call's idle timeout watches the stream, not pings.
                         ping_interval=None)
    port = server.sockets[0].getsockname()[1]

    async def close() -> None:
        server.close()
        await server.wait_closed()

    return Listening(NAME, port, close)


class TwilioCall(WireCall):
    transport = NAME

    def __init__(self, service: VoiceAgentService, section: TwilioSection,
                 ws: ServerConnection, tenant: str) -> None:
        self.service, self.section, self.ws, self.tenant = service, section, ws, tenant
        self.limits: LimitsSection = service.rt.settings.limits
        self.start: tw.StreamStart | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue(_QUEUE)
        self._reader: asyncio.Task | None = None
        self._reorder: Reorder[pb.CallInput] = Reorder()
        self._seq = 0  # frames counted here when the wire numbers none
        self._ending = False  # the call said it is over: caller input is dropped
        self._close: tuple[int, str] | None = None  # why this side closes the socket
        self._closed = False
        # Playback, as the platform reports it: the last mark sent, and whether it came
        # back; the estimated end of what was sent; the turns whose audio was cleared.
        self._last_mark = ""
        self._played = asyncio.Event()
        self._played.set()
        self._play_end = 0.0
        self._cleared: set[int] = set()

    # ------------------------------------------------------------ the call's start

    async def begin(self) -> Begin:
        hint: tw.Dialect | None = None
        try:
            async with asyncio.timeout(self.limits.idle_timeout_s):
                while True:
                    msg = self._parse(await self.ws.recv())
                    if msg["event"] == "start":
                        break
                    if msg["event"] != "connected":
                        raise self._bad(tw.WireError(
                            tw.POLICY, f"`{msg['event'][:32]}` before `start`"))
                    hint = tw.detect(msg)
        except TimeoutError:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no `start` message within {self.limits.idle_timeout_s:g} s"
                               ) from None
        dialect = tw.detect(msg) or hint or tw.TWILIO
        try:
            self.start = start = tw.parse_start(msg, dialect)
        except tw.WireError as exc:
            raise self._bad(exc) from None
        params = dict(start.params)
        profile = params.pop(tw.PROFILE_PARAMETER, "") or self.section.profile
        record = consented(params.pop(tw.RECORD_PARAMETER, ""))  # not caller metadata
        log.info("%s stream %s: call %s", dialect.name, start.stream_id[:64], start.call_id)
        return Begin(self.tenant, pb.CallStart(
            call_id=start.call_id, agent_profile=profile, metadata=params, record=record,
            audio_format=pb.AudioFormat(encoding=_PB[start.audio.encoding],
                                        sample_rate_hz=start.audio.sample_rate)))

    def _parse(self, raw: str | bytes) -> dict:
        try:
            return tw.parse(raw, self.limits.max_message_bytes)
        except tw.WireError as exc:
            raise self._bad(exc) from None

    def _bad(self, exc: tw.WireError) -> ServiceError:
        self._close = (exc.close_code, exc.message)
        return bad_input(exc.message)

    # ------------------------------------------------------------ caller -> call

    async def inputs(self) -> AsyncIterator[pb.CallInput]:
        self._reader = asyncio.create_task(self._read(), name="twilio-reader")
        while (item := await self._queue.get()) is not _END:
            if isinstance(item, (ServiceError, ConnectionError)):
                raise item
            assert isinstance(item, pb.CallInput)
            yield item

    async def _read(self) -> None:
        """Every message from the platform, in order, to the queue; marks at once."""
        try:
            async for raw in self.ws:
                if not await self._take(self._parse(raw)):
                    break
            else:
                await self._caller_left("the platform closed the stream")
        except ServiceError as exc:
            await self._put(exc)
        except ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == tw.TOO_BIG:
                await self._put(self._bad(tw.WireError(
                    tw.TOO_BIG, f"{exc.sent.reason} (limits.max_message_bytes)")))
            elif exc.rcvd is None:  # no close frame: the platform vanished (gateway_lost)
                await self._put(ConnectionError("the stream's connection broke"))
            else:
                await self._caller_left("the platform closed the stream")
        except Exception as exc:  # a bug here must end this call, not hang it
            log.exception("twilio stream reader failed")
            await self._put(ServiceError(grpc.StatusCode.INTERNAL, f"stream reader: {exc}"))
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await self._queue.put(_END)

    async def _take(self, msg: dict) -> bool:
        """Handle one message; False once the stream is over."""
        assert self.start is not None
        event = msg["event"]
        try:
            if event == "media":
                audio = tw.payload(msg, self.start, self.limits.max_frame_ms)
                if audio is not None:
                    seq = tw.sequence(msg, self.start.dialect)
                    if seq is None:  # a platform that numbers nothing: in arrival order
                        self._seq += 1
                    # The wire's chunk numbers: a gap the reordering gave up on counts
                    # as lost frames in the call.
                    chunk = pb.CallInput(audio=pb.AudioChunk(audio=audio,
                                                             sequence_number=seq or self._seq))
                    ready = [chunk] if seq is None else self._reorder.push(seq, chunk)
                    for item in ready:
                        await self._put(item)
            elif event == "dtmf":
                await self._put(pb.CallInput(dtmf=pb.DtmfDigit(digit=tw.digit(msg))))
            elif event == "mark":
                await self._echoed(tw.mark_name(msg))
            elif event == "stop":
                await self._caller_left("the stream stopped")
                return False
            elif event == "error":  # Telnyx reports its own trouble; the call goes on
                log.info("%s stream %s reported an error: %.200s", self.start.dialect.name,
                         self.start.stream_id[:64], msg.get("payload") or msg.get("error"))
            elif event == "start":
                raise tw.WireError(tw.POLICY, "a second `start` on the stream")
            elif event != "connected":
                raise tw.WireError(tw.POLICY, f"unknown event {event[:32]!r}")
        except tw.WireError as exc:
            raise self._bad(exc) from None
        return True

    async def _caller_left(self, reason: str) -> None:
        """The caller's side is over: frames still held for reordering, then Hangup."""
        for item in self._reorder.flush():
            await self._put(item)
        await self._put(pb.CallInput(hangup=pb.Hangup(reason=reason)))

    async def _put(self, item: object) -> None:
        if self._ending and isinstance(item, pb.CallInput):
            return  # nobody reads it any more
        await self._queue.put(item)

    async def _echoed(self, name: str) -> None:
        """The platform played up to a mark (or dropped the audio before it)."""
        if name == self._last_mark:
            self._played.set()
        # Only names of the form this side sends; a cleared turn's marks come back at
        # once, played or not, so they say nothing.
        if (m := _MARK.fullmatch(name)) and int(m[1]) not in self._cleared:
            await self._put(pb.CallInput(mark=pb.PlaybackMark(turn_id=int(m[1]),
                                                              played_ms=int(m[2]))))

    # ------------------------------------------------------------ call -> platform

    async def send(self, out: pb.CallOutput) -> None:
        assert self.start is not None
        kind = out.WhichOneof("payload")
        try:
            if kind == "audio":
                await self._audio(out.audio)
            elif kind == "clear_playback":
                self._cleared.add(out.clear_playback.turn_id)
                self._play_end = time.monotonic()
                self._played.set()
                await self.ws.send(tw.clear_message(self.start))
            elif kind == "transfer":
                # No stream message transfers: the stream closes once this mark is
                # played, and the platform's script after the stream dials the target.
                await self._mark(f"transfer:{out.transfer.target}"[:128])
            elif kind == "ended":
                await self._end(out.ended)
        except ConnectionClosed:
            pass  # the platform went away: the reader tells the call

    async def _audio(self, audio: pb.AgentAudio) -> None:
        assert self.start is not None
        fmt = self.start.audio
        piece = fmt.bytes_for_ms(_PIECE_MS)
        for i in range(0, len(audio.audio), piece):
            await self.ws.send(tw.media_message(self.start, audio.audio[i:i + piece]))
        ms = fmt.duration_ms(len(audio.audio))
        self._play_end = max(self._play_end, time.monotonic()) + ms / 1000
        await self._mark(f"t{audio.turn_id}:{round(audio.offset_ms + ms)}")

    async def _mark(self, name: str) -> None:
        assert self.start is not None
        self._last_mark = name
        self._played.clear()
        await self.ws.send(tw.mark_message(self.start, name))

    async def _end(self, ended: pb.CallEnded) -> None:
        """The call is over: let what was sent play (unless the caller left), then
        close the stream with the reason."""
        self._ending = True
        while not self._queue.empty():  # a reader waiting for room goes on at once
            self._queue.get_nowait()
        if ended.reason not in (pb.CallEnded.CALLER_HANGUP, pb.CallEnded.IDLE_TIMEOUT):
            wait = max(0.0, self._play_end - time.monotonic()) + _PLAYED_MARGIN_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._played.wait(), min(wait, _PLAYED_MOST_S))
        reason = pb.CallEnded.Reason.Name(ended.reason)
        await self._close_ws(1000, f"{reason}: {ended.detail}" if ended.detail else reason)

    async def refuse(self, exc: Rejected) -> None:
        if self._close is not None:
            code, reason = self._close
        elif exc.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            code, reason = tw.TRY_LATER, exc.message
            if exc.retry_after_s is not None and "retry" not in reason:
                reason += f"; retry in {exc.retry_after_s:g} s"
        else:
            code, reason = tw.POLICY, exc.message
        await self._close_ws(code, reason)

    async def hang_up(self, ended: pb.CallEnded | None, error: ServiceError | None) -> None:
        if self._close is not None:
            code, reason = self._close
        elif error is not None:
            code = tw.POLICY if error.code == grpc.StatusCode.INVALID_ARGUMENT else 1011
            reason = error.message
        else:
            code, reason = 1000, "the call is over"
        await self._close_ws(code, reason)

    async def _close_ws(self, code: int, reason: str) -> None:
        """Close once (a close reason is at most 123 bytes of UTF-8)."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self.ws.close(code, reason.encode()[:123].decode(errors="ignore"))
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


_PB = {Encoding.MULAW: pb.AUDIO_ENCODING_MULAW, Encoding.ALAW: pb.AUDIO_ENCODING_ALAW,
       Encoding.PCM16: pb.AUDIO_ENCODING_PCM16}
