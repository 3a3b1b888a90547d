"""aiosipua, adjusted where Voxline needs it to behave otherwise: a UAS that answers
400 to a request it cannot handle and counts malformed INVITEs, a UAC that hands the
answers to the server's own in-dialog requests (REFER) to whoever waits, and UDP and
TCP transports that work on CPython 3.11 and answer on the connection a request came in
on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from aiosipua import (
    SipMessage,
    SipRequest,
    SipResponse,
    SipUAC,
    SipUAS,
    TcpSipTransport,
    UdpSipTransport,
    parse_via,
    stringify_via,
)
from aiosipua.message import missing_required_headers

log = logging.getLogger(__name__)


class UAS(SipUAS):
    """aiosipua's UAS, answering 400 to a request it cannot handle (instead of only
    logging it) and counting malformed INVITEs as refused calls."""

    def __init__(self, transport, on_bad, **kwargs) -> None:
        super().__init__(transport, **kwargs)
        self._on_bad = on_bad

    def _handle_request(self, request: SipRequest, addr: tuple[str, int]) -> None:
        method = request.method.upper()
        bad = ""
        if method == "INVITE":
            try:
                bad = _malformed(request)
            except Exception:  # a header aiosipua's parser refuses
                bad = "unparsable header"
            if bad:
                self._on_bad(f"{bad} from {addr[0]}")
                if bad != "missing required header":  # that one aiosipua answers
                    with contextlib.suppress(Exception):
                        self._send_error(request, 400, f"Bad Request ({bad})")
                    return
        try:
            super()._handle_request(request, addr)
        except Exception:
            log.info("SIP %s from %s could not be handled", method[:16], addr[0], exc_info=True)
            if method != "ACK" and request.headers.get("via"):
                with contextlib.suppress(Exception):
                    self._send_error(request, 400, "Bad Request")
            if method == "INVITE" and not bad:
                self._on_bad(f"malformed INVITE from {addr[0]}")


def _malformed(request: SipRequest) -> str:
    """What makes an INVITE unanswerable ("" when nothing does)."""
    if missing_required_headers(request):
        return "missing required header"  # aiosipua answers 400 (or drops it: no Via)
    cseq = request.cseq
    if cseq is None or cseq.seq <= 0 or cseq.method.upper() != "INVITE":
        return "bad CSeq"
    if not re.match(r"(?i)(sips?|tel):", request.uri):
        return "bad Request-URI"
    request.from_addr, request.to_addr, request.via  # noqa: B018  (they must parse)
    return ""


class UAC(SipUAC):
    """Hands the final answers to the server's own in-dialog requests (REFER) to
    whoever waits for them."""

    def __init__(self, transport) -> None:
        super().__init__(transport)
        self.waiting: dict[tuple[str, int, str], asyncio.Future[SipResponse]] = {}

    def handle_response(self, response: SipResponse, addr: tuple[str, int]) -> None:
        cseq = response.cseq
        if cseq is not None and response.status_code >= 200:
            fut = self.waiting.pop((response.call_id or "", cseq.seq, cseq.method.upper()), None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(response)
                return
        super().handle_response(response, addr)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpSipTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self._owner._dispatch(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP over UDP: %s", exc)


class UdpTransport(UdpSipTransport):
    """aiosipua's UDP transport, bound by a protocol that does not assert what
    CPython 3.11's datagram transport is not (an asyncio.DatagramTransport)."""

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=self.local_addr)


class TcpTransport(TcpSipTransport):
    """Answers go back on the connection the request came in on (RFC 3261 §18.2.2),
    whatever its Via says (a client that asks for no rport)."""

    def _dispatch(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            msg = SipMessage.parse(data)
            if isinstance(msg, SipRequest) and (vias := msg.headers.get("via")):
                via = parse_via(vias[0])
                via.params["received"], via.params["rport"] = addr[0], str(addr[1])
                msg.headers.remove("Via")
                for v in (stringify_via(via), *vias[1:]):
                    msg.headers.append("Via", v)
        except Exception:
            log.info("unparsable SIP message over TCP from %s", addr[0])
            return
        if self.on_message is not None:
            try:
                self.on_message(msg, addr)
            except Exception:
                log.exception("SIP message from %s", addr[0])
