"""SIP user agent: answers INVITEs over UDP and TCP (one port number for both) and
carries each call's audio over RTP (transport/sip_media.py), served by the same
`serve_wire` as every telephony protocol.

aiosipua does the SIP: parsing, dialogs, 100 Trying, 2xx retransmission until the ACK,
BYE, CANCEL, REFER/NOTIFY, re-INVITE and UPDATE dispatch. This module decides, per
INVITE: who calls (the account's digest or allowlist names the tenant), which profile
(the Request-URI's user part, else a header, else the listener's), the SIP answer to a
refusal (403, 404, 486/503 with Retry-After, 488), and at the end a BYE, a REFER to the
transfer target or a BYE with a Reason naming it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from collections.abc import Awaitable
from urllib.parse import unquote

import grpc
from aiortp import PortAllocator
from aiosipua import (
    IncomingCall,
    SipRequest,
    parse_sdp,
    parse_uri,
)
from aiosipua.dialog import DialogState
from aiosipua.utils import format_addr

from voxline import __version__
from voxline.agent.profile import list_profiles
from voxline.config import SipSection, profile_dirs
from voxline.errors import ServiceError
from voxline.transport.gate import ConfigError, Rejected
from voxline.transport.sip_auth import (
    Account,
    Digest,
    SipRefusal,
    quoted,
    read_accounts,
    sip_answer,
)
from voxline.transport.sip_media import Media, NoCodec
from voxline.transport.sip_names import call_id_of, call_metadata, refer_uri
from voxline.transport.sip_stack import UAC, UAS, TcpTransport, UdpTransport
from voxline.transport.start import consented
from voxline.transport.wire import (
    Begin,
    Listening,
    WireCall,
    allowed,
    listener_tenant,
    serve_wire,
)
from voxline.v1 import voice_agent_pb2 as pb

log = logging.getLogger(__name__)

USER_AGENT = f"voxline/{__version__}"
_PORT_TRIES = 20  # port 0: UDP's free port may be taken for TCP; take another
_INBOX_FRAMES = 250  # caller frames waiting for the call (5 s); more are dropped as lost
_KEEPALIVE_MS = 100  # on hold: silence the call hears in place of the caller
_DRAIN_MAX_S = 10.0  # the last words (a goodbye, the transfer phrase) play out first
_REFER_WAIT_S = 2.0  # for the REFER's answer and the NOTIFY of its outcome
RECORD_HEADER = "X-Voxline-Record"  # yes/true/1: the caller consented to recording
_PROFILE_NAMED = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,127}")  # not a number or extension
# ---------------------------------------------------------------- the listener


async def listen(service, section: SipSection, host: str) -> Listening:
    server = SipServer(service, section, host)
    port = await server.start()
    return Listening("sip", port, server.close)


class SipServer:
    def __init__(self, service, section: SipSection, host: str) -> None:
        if section.rtp_port_max - section.rtp_port_min < 1:
            raise ConfigError("telephony.sip: rtp_port_max must be above rtp_port_min")
        self.service = service
        self.section = section
        self.host = host or "0.0.0.0"
        self.accounts = read_accounts(section, service.gate.tenants)
        self.digest = Digest(section.realm)
        self.ports = PortAllocator((section.rtp_port_min, section.rtp_port_max))
        self.port = 0
        self.calls: dict[str, SipCall] = {}  # by Call-ID
        self._uases: list[UAS] = []
        self._tasks: set[asyncio.Task] = set()

    # ------------------------------------------------------------------ start, stop

    async def start(self) -> int:
        for _ in range(_PORT_TRIES):
            udp = self._uas(UdpTransport(local_addr=(self.host, self.section.port)))
            await udp.start()
            self.port = udp.transport._udp_transport.get_extra_info("sockname")[1]
            udp.transport.local_addr = (self.host, self.port)
            if not self.section.tcp:
                self._uases = [udp]
                return self.port
            tcp = self._uas(TcpTransport(local_addr=(self.host, self.port)))
            try:
                await tcp.start()
            except OSError:
                await udp.stop()
                if self.section.port:
                    raise
                continue
            self._uases = [udp, tcp]
            return self.port
        raise OSError("telephony.sip: found no port free for both UDP and TCP")

    def _uas(self, transport) -> UAS:
        uas = UAS(transport, self._bad_request, user_agent=USER_AGENT, uac=UAC(transport))
        uas.on_invite = self._invite
        uas.on_reinvite = self._reinvite
        uas.on_update = self._update
        uas.on_bye = lambda call, request: self._left(call.call_id, "the caller sent BYE")
        uas.on_cancel = lambda request, addr: self._left(request.call_id or "",
                                                         "the caller cancelled")
        uas.on_ack_timeout = lambda call: self._left(call.call_id, "no ACK for the 200 OK")
        uas.on_transfer_progress = self._transfer_progress
        return uas

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for wire in list(self.calls.values()):
            with contextlib.suppress(Exception):
                await wire.close()
        for uas in self._uases:
            with contextlib.suppress(Exception):
                await uas.stop()

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ requests

    def _invite(self, call: IncomingCall) -> None:
        uas = self.owner(call)
        old = self.calls.get(call.call_id)
        if old is not None and not old.over:
            # A retransmitted INVITE (aiosipua read it as a new one): keep the first.
            uas._calls[call.call_id] = old.call
            return
        ip = self.advertised_ip(call.source_addr[0])
        call.advertised_addr = (ip, self.port)
        who = self.authorize(call)
        if who is None:  # challenged: no call yet, nothing refused
            self.forget_invite(call)
            return
        wire = SipCall(self, call, who, ip, "TCP" if uas.transport.reliable else "UDP")
        self.calls[call.call_id] = wire
        self.spawn(serve_wire(self.service, wire))

    def owner(self, call: IncomingCall) -> UAS:
        return next(u for u in self._uases if u.transport is call.transport)

    def _left(self, call_id: str, why: str) -> None:
        if (wire := self.calls.get(call_id)) is not None:
            wire.caller_left(why)

    def _reinvite(self, call: IncomingCall) -> None:
        wire = self.calls.get(call.call_id)
        has_offer = bool(call.invite.body) and call.invite.content_type == "application/sdp"
        if wire is None or wire.media is None or not has_offer:
            why = "no call to update" if wire is None else "a re-INVITE must carry an offer"
            call._send_response(488, "Not Acceptable Here",
                                extra_headers={"Warning": f'399 voxline "{why}"'})
            return
        try:
            sdp = wire.media.reoffer(call.sdp_offer)
        except NoCodec as exc:
            call._send_response(488, "Not Acceptable Here",
                                extra_headers={"Warning": f'399 voxline "{quoted(str(exc))}"'})
            return
        log.info("call %s: %s", wire.call_id, "on hold" if wire.media.held else "off hold")
        call.accept(sdp)

    def _update(self, call: IncomingCall, request: SipRequest):
        wire = self.calls.get(call.call_id)
        if wire is None or wire.media is None or not request.body:
            return None  # a bare refresh: 200; an offer with no call: 488
        try:
            return wire.media.reoffer(parse_sdp(request.text))
        except NoCodec:
            return None

    def _transfer_progress(self, call_id: str, status: int, reason: str) -> None:
        if (wire := self.calls.get(call_id)) is not None:
            wire.transfer_status(status)

    def _bad_request(self, why: str) -> None:
        self.service.admission.metrics.calls_rejected.labels("invalid", "sip").inc()
        log.info("SIP INVITE refused: %s", why)

    # ------------------------------------------------------------------ per call

    def authorize(self, call: IncomingCall) -> str | Rejected | None:
        """The tenant the call counts against, or why it is refused; None when it was
        challenged for digest credentials (a 401 sent)."""
        peer, gate = call.source_addr[0], self.service.gate
        if not self.accounts:
            try:
                return listener_tenant("sip", self.section, gate, peer)
            except Rejected as exc:
                return exc
        candidates = [a for a in self.accounts if allowed(peer, a.allow)]
        if not candidates:
            return Rejected(grpc.StatusCode.PERMISSION_DENIED,
                            f"{peer} is not in the allow list of any telephony.sip account",
                            "forbidden")
        header = call.invite.get_header("authorization")
        if header:
            found = self.digest.check(header, call.invite.method,
                                      [a for a in candidates if a.username])
            if isinstance(found, Account):
                return found.tenant
            if found in ("stale", "challenge"):
                self.challenge(call, stale=found == "stale")
                return None
            return Rejected(grpc.StatusCode.UNAUTHENTICATED,
                            "digest credentials not accepted", "unauthenticated")
        open_account = next((a for a in candidates if not a.username), None)
        if open_account is not None:
            return open_account.tenant
        self.challenge(call)
        return None

    def challenge(self, call: IncomingCall, stale: bool = False) -> None:
        call._send_response(401, "Unauthorized",
                            extra_headers={"WWW-Authenticate": self.digest.challenge(stale)})
        call.dialog.terminate()

    def forget_invite(self, call: IncomingCall) -> None:
        """Drop a refused INVITE's state (its ACK, if any, then finds nothing)."""
        with contextlib.suppress(StopIteration):
            uas = self.owner(call)
            if uas._calls.get(call.call_id) is call:
                uas._calls.pop(call.call_id, None)
            uas._remove_invite_transaction(call.invite)

    def profile_for(self, call: IncomingCall) -> str:
        """The Request-URI's user part when it names a profile, else the profile
        header, else a user part that reads as a profile's name (unknown: 404), else
        the listener's profile."""
        try:
            user = unquote(parse_uri(call.invite.uri).user or "")
        except Exception:
            user = ""
        settings = self.service.rt.settings
        if user and user in list_profiles(profile_dirs(settings)):
            return user
        header = (call.invite.get_header(self.section.profile_header) or "").strip()
        if header:
            return header[:128]
        if _PROFILE_NAMED.fullmatch(user):
            return user
        return self.section.profile

    def advertised_ip(self, peer: str) -> str:
        """The address put in SDP and Contact for a peer."""
        if self.section.public_ip:
            return self.section.public_ip
        if self.host not in ("", "0.0.0.0", "::"):
            return self.host
        family = socket.AF_INET6 if ":" in peer else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((peer, 9))  # no packet is sent: it only picks the route
                return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"

    def finished(self, wire: SipCall) -> None:
        if self.calls.get(wire.call_id) is wire:
            del self.calls[wire.call_id]
        with contextlib.suppress(StopIteration):
            uas = self.owner(wire.call)
            if uas._calls.get(wire.call_id) is wire.call:
                wire.call._stop_retransmissions()
                uas._calls.pop(wire.call_id, None)


class SipCall(WireCall):
    transport = "sip"

    def __init__(self, server: SipServer, call: IncomingCall, who: str | Rejected,
                 ip: str, via: str) -> None:
        self.server = server
        self.call = call
        self.call_id = call.call_id
        self._who = who
        self._ip = ip
        self._via = via
        self.media: Media | None = None
        self._inbox: asyncio.Queue[pb.CallInput | None] = asyncio.Queue()
        self._seq = 0
        self.dropped = 0  # caller frames the call was too far behind to take
        self.answered = False
        self.gone = ""  # why the caller's side is gone (BYE, CANCEL, no ACK)
        self.over = False
        self._target = ""  # the agent's transfer target
        self._notified = asyncio.Event()  # a NOTIFY with the transfer's outcome

    # ------------------------------------------------------------------ WireCall

    async def begin(self) -> Begin:
        if isinstance(self._who, Rejected):
            raise self._who
        try:
            return await self._begin()
        except BaseException:
            await self.close()  # the RTP port goes back whatever ends the call here
            raise

    async def _begin(self) -> Begin:
        server, section = self.server, self.server.section
        try:
            self.media = await Media.open(self.call.sdp_offer, server.host, self._ip,
                                          server.ports, section.jitter_frames,
                                          section.symmetric_rtp)
        except NoCodec as exc:
            raise SipRefusal(488, grpc.StatusCode.INVALID_ARGUMENT, str(exc), "invalid") from exc
        except OSError as exc:
            log.warning("SIP call %s: %s", self.call_id, exc)
            raise SipRefusal(503, grpc.StatusCode.UNAVAILABLE, "no RTP port free",
                             "server_limit") from exc
        self.media.on_frame = self._frame
        self.media.on_dtmf = self._dtmf
        self.call.ringing()
        settings = server.service.rt.settings
        profile = server.profile_for(self.call)
        start = pb.CallStart(
            call_id=call_id_of(self.call_id),
            audio_format=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16,
                                        sample_rate_hz=self.media.rate),
            agent_profile=profile,
            metadata=call_metadata(self.call, settings.limits, profile),
            record=consented(self.call.invite.get_header(RECORD_HEADER) or ""))
        if self.gone:  # cancelled while the port was bound
            raise ConnectionError(self.gone)
        assert isinstance(self._who, str)
        return Begin(self._who, start)

    async def inputs(self):
        keepalive = b""
        while True:
            try:  # woken now and then: a hold may have begun while it waited
                item = await asyncio.wait_for(self._inbox.get(), _KEEPALIVE_MS / 1000)
            except TimeoutError:
                media = self.media
                if media is None or media.caller_speaks or not self.answered:
                    continue
                # On hold (or muted) the line is silent, not gone: the call hears so.
                keepalive = keepalive or b"\x00" * (media.rate * _KEEPALIVE_MS // 1000 * 2)
                self._seq += 1
                item = pb.CallInput(audio=pb.AudioChunk(audio=keepalive,
                                                        sequence_number=self._seq))
            if item is None:
                return
            yield item

    async def send(self, out: pb.CallOutput) -> None:
        kind = out.WhichOneof("payload")
        media = self.media
        if media is None:
            return
        if kind == "accepted":
            if not self.gone:
                self.call.accept(media.sdp_answer)
                self.answered = True
        elif kind == "audio":
            if not self.gone:
                media.play(out.audio.audio)
        elif kind == "clear_playback":
            media.clear()
        elif kind == "transfer":
            self._target = out.transfer.target
        elif kind == "ended":
            self._inbox.put_nowait(None)  # the call needs no more input

    async def refuse(self, exc: Rejected) -> None:
        try:
            if not self.gone:
                status, phrase, headers = sip_answer(exc)
                self.call._send_response(status, phrase, extra_headers=headers)
                self.call.dialog.terminate()
        finally:
            await self.close()
            self.server.forget_invite(self.call)

    async def hang_up(self, ended: pb.CallEnded | None, error: ServiceError | None) -> None:
        try:
            if not self.answered:
                if not self.gone:  # cannot happen: answered on CallAccepted
                    self.call._send_response(500, "Server Internal Error")
                return
            assert self.media is not None
            if ended is not None and not self.gone:
                await self.media.drained(min(_DRAIN_MAX_S, self.media.queued_ms / 1000 + 1))
            if self.gone or self.call.dialog.state != DialogState.CONFIRMED:
                return
            target = self._target if ended is not None and \
                ended.reason == pb.CallEnded.TRANSFERRED else ""
            if target and self.server.section.transfer == "refer" \
                    and await self._refer(target):
                self._bye()
            elif target:
                self._bye(f'SIP;cause=302;text="transfer to {quoted(target)}"')
            elif error is not None:
                self._bye(f'SIP;cause=500;text="{quoted(error.message)}"')
            else:
                self._bye()
        finally:
            await self.close()

    # ------------------------------------------------------------------ events

    def _frame(self, pcm: bytes) -> None:
        self._seq += 1
        media = self.media
        if self.gone or media is None or not media.caller_speaks:
            return
        if self._inbox.qsize() >= _INBOX_FRAMES:
            self.dropped += 1  # counted by the call as lost (a gap in sequence numbers)
            return
        self._inbox.put_nowait(pb.CallInput(audio=pb.AudioChunk(audio=pcm,
                                                                sequence_number=self._seq)))

    def _dtmf(self, digit: str, duration_ms: int) -> None:
        if not self.gone:
            self._inbox.put_nowait(pb.CallInput(dtmf=pb.DtmfDigit(digit=digit,
                                                                  duration_ms=duration_ms)))

    def caller_left(self, why: str) -> None:
        if self.gone:
            return
        self.gone = why
        if self.media is not None:
            self.media.clear()
        self._inbox.put_nowait(pb.CallInput(hangup=pb.Hangup(reason=why)))
        self._inbox.put_nowait(None)

    def transfer_status(self, status: int) -> None:
        if status >= 200:
            self._notified.set()

    # ------------------------------------------------------------------ requests

    def _request(self, method: str, headers: dict[str, str]) -> SipRequest:
        port = self.server.port
        request = self.call.dialog.create_request(method, via_host=self._ip, via_port=port,
                                                  via_transport=self._via)
        request.headers.set_single("Contact", f"<sip:{format_addr(self._ip, port)}>")
        request.headers.set_single("User-Agent", USER_AGENT)
        for name, value in headers.items():
            request.headers.set_single(name, value)
        return request

    def _send(self, request: SipRequest) -> None:
        assert self.call.transport is not None
        try:
            self.call.transport.send(request, self.call.source_addr)
        except Exception as exc:  # a TCP caller whose connection is gone
            log.info("call %s: %s not sent: %s", self.call_id, request.method, exc)

    def _bye(self, reason: str = "") -> None:
        request = self._request("BYE", {"Reason": reason} if reason else {})
        self.call.dialog.terminate()
        self._send(request)

    async def _refer(self, target: str) -> bool:
        """REFER the caller to `target`; whether it took it (a 2xx) in time."""
        uri = refer_uri(target, self.call)
        request = self._request("REFER", {"Refer-To": f"<{uri}>",
                                          "Referred-By": f"<{self.call.dialog.local_uri}>"})
        uac = self.server.owner(self.call).uac
        assert isinstance(uac, UAC) and request.cseq is not None
        answer = asyncio.get_running_loop().create_future()
        uac.waiting[(self.call_id, request.cseq.seq, "REFER")] = answer
        self._send(request)
        deadline = time.monotonic() + _REFER_WAIT_S
        try:
            response = await asyncio.wait_for(answer, _REFER_WAIT_S)
        except TimeoutError:
            log.info("call %s: no answer to the REFER in %g s", self.call_id, _REFER_WAIT_S)
            return False
        finally:
            uac.waiting.pop((self.call_id, request.cseq.seq, "REFER"), None)
        if not 200 <= response.status_code < 300:
            log.info("call %s: REFER refused (%d %s)", self.call_id, response.status_code,
                     response.reason_phrase)
            return False
        with contextlib.suppress(TimeoutError):  # the transfer's outcome, briefly
            await asyncio.wait_for(self._notified.wait(),
                                   max(0.0, deadline - time.monotonic()))
        log.info("call %s referred to %s", self.call_id, uri)
        return True

    async def close(self) -> None:
        self.over = True
        try:
            if self.media is not None:
                await self.media.close()
        finally:
            self.server.finished(self)
