"""A SIP phone for `voxline call/bench --transport sip` and the tests: aiosipua's UAC
places the call (INVITE with an SDP offer of PCMU, PCMA and telephone-event, ACK,
BYE), aiortp carries the audio (G.711 both ways, RFC 4733 DTMF). The agent profile
goes in the Request-URI's user part: sip:order_status@host:port.

The far end ending the call: a BYE (AGENT_HANGUP, or TRANSFERRED when its Reason says
cause=302), or a REFER (answered 202, then a NOTIFY 200: TRANSFERRED to its target).
A refusal (4xx-6xx) raises ConnectionError with the status line; the response stays in
`rejection`."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Callable
from typing import ClassVar
from urllib.parse import unquote

from aiortp import PortAllocator, RTPSession
from aiosipua import (
    IncomingCall,
    OutgoingCall,
    SdpMessage,
    SipDigestAuth,
    SipRequest,
    SipResponse,
    SipUAC,
    SipUAS,
    TcpSipTransport,
    parse_sdp,
)
from aiosipua.utils import format_addr

from voxline.client.gateway import CallOptions
from voxline.client.wire import WireClient
from voxline.transport.sip_stack import UdpTransport  # aiosipua's UDP, fixed for 3.11

_DTMF_MS = 160
_BYE_WAIT_S = 2.0
_G711 = {0: "PCMU", 8: "PCMA"}
_NAMES = {**_G711, 9: "G722", 18: "G729"}


class _Uac(SipUAC):
    """aiosipua's UAC, keeping the final answers to the client's requests: a refused
    INVITE's response (with its headers), a BYE's 200, and the answer to a re-INVITE
    (which aiosipua would take as the end of the call when it is a refusal)."""

    def __init__(self, transport) -> None:
        super().__init__(transport)
        self.answers: dict[tuple[int, str], asyncio.Future[SipResponse]] = {}
        self.reinvites: set[int] = set()  # CSeq numbers of our re-INVITEs

    def expect(self, cseq: int, method: str) -> asyncio.Future[SipResponse]:
        return self.answers.setdefault((cseq, method),
                                       asyncio.get_running_loop().create_future())

    def handle_response(self, response: SipResponse, addr: tuple[str, int]) -> None:
        cseq = response.cseq
        if cseq is not None and response.status_code >= 200:
            fut = self.expect(cseq.seq, cseq.method.upper())
            if not fut.done():
                fut.set_result(response)
            if cseq.method.upper() == "INVITE" and cseq.seq in self.reinvites \
                    and response.status_code >= 300:
                return  # a refused re-INVITE leaves the call as it was
        super().handle_response(response, addr)


class SipClient(WireClient):
    transport: ClassVar[str] = "sip"
    rate = 8000

    def __init__(self, address: str, opts: CallOptions,
                 on_event: Callable[[dict], None] | None = None,
                 reply_quiet_ms: float = 1000.0, transport: str = "udp",
                 username: str = "", password: str = "", caller: str = "voxline-client",
                 local_host: str = "127.0.0.1", headers: dict[str, str] | None = None,
                 codecs: tuple[int, ...] = (0, 8)) -> None:
        super().__init__(address, opts, on_event, reply_quiet_ms)
        if transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, not {transport!r}")
        self.sip_transport = transport
        self.auth = SipDigestAuth(username, password) if username else None
        self.caller = caller
        self.local_host = local_host
        self.headers = dict(headers or {})
        self.codecs = codecs
        self.rejection: SipResponse | None = None  # the answer that refused the call
        self.refer_to = ""  # the transfer target of a REFER
        self.bye: SipRequest | None = None  # the far end's BYE
        self.answer: SdpMessage | None = None  # the SDP answer (the last one)
        self._uas: SipUAS | None = None
        self._uac: _Uac | None = None
        self._call: OutgoingCall | None = None
        self._rtp: RTPSession | None = None
        self._port = 0
        self._ts = random.getrandbits(32)  # our RTP clock, in samples
        self._sdp_id = random.getrandbits(31)
        self._sdp_version = 0

    @property
    def sip_call_id(self) -> str:
        """The SIP Call-ID (the server's CallStart.call_id and so the record's)."""
        return self._call.call_id if self._call is not None else ""

    # ------------------------------------------------------------------ the call

    async def connect(self) -> None:
        remote = (self.host, self.port)
        if self.sip_transport == "tcp":
            sip = TcpSipTransport(local_addr=(self.local_host, 0))
        else:
            sip = UdpTransport(local_addr=(self.local_host, 0))
        self._uac = uac = _Uac(sip)
        self._uas = uas = SipUAS(sip, uac=uac, user_agent="voxline-sip-client")
        uas.on_bye = self._on_bye
        uas._handlers["REFER"] = self._on_refer
        await uas.start()
        if self.sip_transport == "tcp":
            _reader, writer = await sip.connect(remote)
            sip.local_addr = writer.get_extra_info("sockname")[:2]
        else:
            sip.local_addr = sip._udp_transport.get_extra_info("sockname")[:2]
        self._port = await self._rtp_port()
        # No profile: no user part, so the listener's own profile answers (a user part
        # that reads as a name would have to be a profile).
        user = f"{self.opts.profile}@" if self.opts.profile else ""
        suffix = ";transport=tcp" if self.sip_transport == "tcp" else ""
        to_uri = f"sip:{user}{format_addr(self.host, self.port)}{suffix}"
        extra = {"X-Voxline-Call-ID": self.call_id, **self.headers}
        if self.opts.record:
            extra.setdefault("X-Voxline-Record", "yes")
        call = uac.send_invite(f"sip:{self.caller}@{self.local_host}", to_uri, remote,
                               self.offer(), extra_headers=extra or None, auth=self.auth,
                               user_agent="voxline-sip-client")
        self._call = call
        try:
            await call.wait_answered(self.opts.reply_timeout_s)
        except RuntimeError:
            last = [f.result() for (_, m), f in uac.answers.items()
                    if m == "INVITE" and f.done()]
            self.rejection = last[-1] if last else None
            code, reason = call._reject_code, call._reject_reason
            raise ConnectionError(f"{code} {reason}".strip()) from None
        answer = call.sdp_answer
        if answer is None or answer.audio is None or answer.rtp_address is None:
            raise ConnectionError("the 200 OK carries no SDP answer")
        self.answer = answer
        pt = next((c.payload_type for c in answer.audio.codecs if c.payload_type in _G711), None)
        if pt is None:
            raise ConnectionError("the answer picked no G.711 codec")
        te = next((c.payload_type for c in answer.audio.codecs
                   if c.encoding_name.lower() == "telephone-event"), 101)
        self._rtp = await RTPSession.create(
            local_addr=(self.local_host, self._port), remote_addr=answer.rtp_address,
            payload_type=pt, dtmf_payload_type=te, jitter_prefetch=2, skip_audio_gaps=True)
        self._rtp.on_audio = lambda pcm, ts: self.heard(pcm)

    def offer(self, direction: str = "sendrecv", codecs: tuple[int, ...] | None = None
              ) -> SdpMessage:
        """Our SDP offer: the codecs, then telephone-event (101), at `direction`."""
        codecs = codecs or self.codecs
        self._sdp_version += 1
        ip, family = self.local_host, "IP6" if ":" in self.local_host else "IP4"
        lines = ["v=0", f"o=- {self._sdp_id} {self._sdp_version} IN {family} {ip}", "s=-",
                 f"c=IN {family} {ip}", "t=0 0",
                 f"m=audio {self._port} RTP/AVP {' '.join(str(c) for c in codecs)} 101",
                 *(f"a=rtpmap:{c} {_NAMES.get(c, 'unknown')}/8000" for c in codecs),
                 "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20",
                 f"a={direction}"]
        return parse_sdp("\r\n".join(lines) + "\r\n")

    async def _rtp_port(self) -> int:
        allocator = PortAllocator((40000 + random.randrange(0, 20000, 2), 65534))
        port, _ = await allocator.allocate()
        return port

    async def send_frame(self, pcm16: bytes) -> None:
        if self._rtp is not None:
            self._rtp.send_audio_pcm(pcm16, self._ts & 0xFFFFFFFF)
        self._ts += len(pcm16) // 2

    async def send_dtmf(self, digit: str) -> None:
        if self._rtp is not None:
            self._rtp.send_dtmf(digit, _DTMF_MS, timestamp=self._ts & 0xFFFFFFFF)
        self._ts += self.rate * _DTMF_MS // 1000
        await asyncio.sleep(_DTMF_MS / 1000)

    async def hang_up(self) -> None:
        call, uac = self._call, self._uac
        if call is None or uac is None or self.is_closed:
            return
        bye = call.hangup(uac)
        if bye is not None and bye.cseq is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(uac.expect(bye.cseq.seq, "BYE"), _BYE_WAIT_S)

    async def reinvite(self, direction: str = "sendrecv",
                       codecs: tuple[int, ...] | None = None,
                       timeout_s: float = 5.0) -> SipResponse:
        """Offer the session again (hold: sendonly or inactive; resume: sendrecv);
        the final answer."""
        call, uac = self._call, self._uac
        assert call is not None and uac is not None
        request = uac.send_reinvite(call.dialog, self.offer(direction, codecs),
                                    call.remote_addr)
        assert request.cseq is not None
        uac.reinvites.add(request.cseq.seq)
        response = await asyncio.wait_for(uac.expect(request.cseq.seq, "INVITE"), timeout_s)
        if 200 <= response.status_code < 300 and response.body:
            self.answer = parse_sdp(response.text)
        return response

    async def close(self) -> None:
        if self._rtp is not None:
            with contextlib.suppress(Exception):
                await self._rtp.close()
            self._rtp = None
        if self._uas is not None:
            with contextlib.suppress(Exception):
                await self._uas.stop()
            self._uas = None

    # ------------------------------------------------------------------ the far end

    def _on_bye(self, call: IncomingCall, request: SipRequest) -> None:
        self.bye = request
        reason = request.get_header("reason") or ""
        if "cause=302" in reason:
            m = re.search(r'text="(?:transfer to )?([^"]*)"', reason)
            self.ended("TRANSFERRED", m.group(1) if m else reason)
        else:
            self.ended("AGENT_HANGUP", reason or "the far end sent BYE")

    def _on_refer(self, request: SipRequest, addr: tuple[str, int]) -> None:
        """Take a REFER on the call's own dialog (aiosipua would answer it on a copy
        whose CSeq starts again): 202, then a NOTIFY that the transfer went through."""
        call, uac, uas = self._call, self._uac, self._uas
        assert uas is not None
        if call is None or uac is None or request.call_id != call.call_id:
            uas._send_error(request, 481, "Call/Transaction Does Not Exist")
            return
        target = request.get_header("refer-to") or ""
        response = call.dialog.create_response(request, 202, "Accepted")
        uas.transport.send_reply(response)
        uac._send_in_dialog(
            call.dialog, "NOTIFY", call.remote_addr, body="SIP/2.0 200 OK\r\n",
            content_type="message/sipfrag;version=2.0",
            extra_headers={"Event": "refer",
                           "Subscription-State": "terminated;reason=noresource"})
        self.refer_to = unquote(target.strip().strip("<>"))
        self.ended("TRANSFERRED", self.refer_to)
