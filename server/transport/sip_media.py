"""The RTP side of a SIP call: the SDP answer and an aiortp session.

aiosipua negotiates the offer (RFC 3264: the offerer's first codec we take, the
direction answered); aiortp carries the audio: its jitter buffer puts packets back in
order and conceals the lost ones, RFC 4733 telephone-events arrive as digits, and its
paced sender puts one 20 ms frame on the wire per media-clock tick (silence as a
timestamp jump). This module only connects them to the call: caller audio out as
16-bit PCM frames, agent audio in as PCM to encode and queue, and the queue dropped
on barge-in or hold."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiortp import PortAllocator, RTPSession, get_codec
from aiosipua import SdpMessage, SdpNegotiationError, negotiate_sdp

log = logging.getLogger(__name__)

# Payload types answered, in no order of ours (the offer's order decides): G.711 at
# 8 kHz. aiortp 0.8.0 steps G.722's RTP timestamp by 320 per 20 ms frame where RFC 3551
# says 160 (its clock is 8000 Hz), so G.722 stays off.
CODECS = (0, 8)
FRAME_MS = 20
_DIGITS = set("0123456789*#ABCD")
_BIND_TRIES = 8  # another process may take a port between the allocator's probe and ours


class NoCodec(Exception):
    """The offer has no audio stream we can take (488 Not Acceptable Here)."""


def telephone_event_pt(offer: SdpMessage) -> int:
    """The payload type the offer gives RFC 4733 events (0: it offers none)."""
    audio = offer.audio
    for codec in audio.codecs if audio is not None else ():
        if codec.encoding_name.lower() == "telephone-event":
            return codec.payload_type
    return 0


def answer(offer: SdpMessage | None, sdp_ip: str, port: int, codecs: tuple[int, ...],
           session_id: str | None = None) -> tuple[SdpMessage, int, int]:
    """(answer, chosen payload type, telephone-event payload type) for an offer;
    NoCodec when it cannot be answered."""
    if offer is None:
        raise NoCodec("the INVITE carries no SDP offer; send one (RTP/AVP audio, PCMU or "
                      "PCMA)")
    audio = offer.audio
    if audio is None or audio.port == 0 or "RTP/AVP" not in audio.proto.upper():
        raise NoCodec("the offer has no RTP/AVP audio stream")
    te = telephone_event_pt(offer)
    try:
        sdp, pt = negotiate_sdp(offer, sdp_ip, port, supported_codecs=list(codecs),
                                dtmf_payload_type=te, ptime=FRAME_MS, session_id=session_id)
    except SdpNegotiationError as exc:
        raise NoCodec(f"no codec in common: {exc}") from exc
    if offer.rtp_address is None:
        raise NoCodec("the offer has no connection address (c=)")
    return sdp, pt, te


class Media:
    """One call's RTP session. `on_frame(pcm16)` gets the caller's audio in order, at
    most 20 ms at a time; `on_dtmf(digit, ms)` each key press."""

    def __init__(self, rtp: RTPSession, sdp: SdpMessage, pt: int, te: int, port: int,
                 sdp_ip: str, allocator: PortAllocator) -> None:
        self.rtp = rtp
        self.sdp_answer = sdp
        self.payload_type = pt
        self.te = te
        self.port = port
        self.sdp_ip = sdp_ip
        self.codec = rtp.codec
        assert self.codec is not None
        self.rate = self.codec.sample_rate
        self._frame_bytes = self.rate * FRAME_MS // 1000 * 2
        self._allocator = allocator
        self._version = int(sdp.origin.session_version or 0) if sdp.origin else 0
        self.held = False  # the caller put the call on hold: nothing is sent
        # The caller sends speech (not on hold, nor muted by a recvonly offer); while it
        # does not, what arrives (music on hold) is not the caller's.
        self.caller_speaks = True
        self.on_frame: Callable[[bytes], None] = lambda pcm: None
        self.on_dtmf: Callable[[str, int], None] = lambda digit, ms: None
        rtp.on_audio = self._audio
        rtp.on_dtmf = self._dtmf
        self._closed = False

    @classmethod
    async def open(cls, offer: SdpMessage | None, bind_ip: str, sdp_ip: str,
                   allocator: PortAllocator, jitter_frames: int, symmetric_rtp: bool
                   ) -> Media:
        """Bind an RTP port pair for the offer (NoCodec, or OSError when no port is
        free)."""
        answer(offer, sdp_ip, 0, CODECS)  # refuse before taking a port
        assert offer is not None
        last: OSError | None = None
        for _ in range(_BIND_TRIES):
            try:
                port, _rtcp = await allocator.allocate()
            except RuntimeError as exc:
                raise OSError(f"no free RTP port pair: {exc}") from exc
            sdp, pt, te = answer(offer, sdp_ip, port, CODECS)
            try:
                rtp = await RTPSession.create(
                    local_addr=(bind_ip, port), remote_addr=offer.rtp_address, payload_type=pt,
                    codec=get_codec(pt), dtmf_payload_type=te or 101,
                    jitter_capacity=32, jitter_prefetch=jitter_frames, skip_audio_gaps=True,
                    plc=True, paced=True, symmetric_rtp=symmetric_rtp)
            except OSError as exc:  # taken since the probe: try the next pair
                last = exc
                await allocator.release(port)
                continue
            return cls(rtp, sdp, pt, te, port, sdp_ip, allocator)
        raise OSError(f"could not bind an RTP port: {last}")

    # ------------------------------------------------------------------ caller -> call

    def _audio(self, pcm: bytes, timestamp: int) -> None:
        # aiortp hands over one packet's audio, or the concealment of several lost
        # ones at once: the call takes frames of at most 20 ms.
        for i in range(0, len(pcm), self._frame_bytes):
            self.on_frame(pcm[i:i + self._frame_bytes])

    def _dtmf(self, digit: str, duration: int) -> None:
        if digit in _DIGITS:  # events 16+ (flash, tones) are not keys
            self.on_dtmf(digit, duration * 1000 // 8000)

    # ------------------------------------------------------------------ call -> caller

    def play(self, pcm16: bytes) -> None:
        """Queue agent audio (16-bit PCM at `rate`): 20 ms frames, the last padded."""
        if self.held or self._closed:
            return
        step = self._frame_bytes
        for i in range(0, len(pcm16), step):
            frame = pcm16[i:i + step]
            if len(frame) < step:
                frame += b"\x00" * (step - len(frame))
            self.rtp.send_audio_pcm_auto(frame)  # paced: encoded and queued

    def clear(self) -> None:
        """Drop the agent audio not yet sent (barge-in, hold)."""
        paced = getattr(self.rtp, "_paced_sender", None)  # aiortp has no public discard
        if paced is not None:
            paced.discard()

    @property
    def queued_ms(self) -> int:
        return int(self.rtp.stats.get("queue_depth", 0)) * FRAME_MS

    async def drained(self, timeout_s: float) -> None:
        """Until the queued agent audio has gone out (at most `timeout_s`)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.rtp.drain(), timeout_s)

    # ------------------------------------------------------------------ re-INVITE

    def reoffer(self, offer: SdpMessage | None) -> SdpMessage:
        """The answer to a new offer in the call (hold, resume, a new address): the same
        codec and port, the direction answered; NoCodec when it cannot be kept."""
        session_id = self.sdp_answer.origin.session_id if self.sdp_answer.origin else None
        sdp, _pt, te = answer(offer, self.sdp_ip, self.port, (self.payload_type,), session_id)
        assert offer is not None and offer.audio is not None
        if te and self.te and te != self.te:
            raise NoCodec("the offer moves telephone-event to another payload type")
        self._version += 1
        if sdp.origin is not None:
            sdp.origin.session_version = str(self._version)
        direction = offer.audio.direction
        self.held = direction in ("sendonly", "inactive")
        self.caller_speaks = direction == "sendrecv"
        if self.held:
            self.clear()
        if offer.rtp_address is not None and offer.rtp_address[0] not in ("0.0.0.0", "::"):
            self.rtp.update_remote(offer.rtp_address)
        self.sdp_answer = sdp
        return sdp

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.clear()
        try:
            await self.rtp.close()
        finally:
            await self._allocator.release(self.port)
