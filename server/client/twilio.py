"""Plays Twilio's part of a bidirectional Media Stream (`<Connect><Stream>`), or Telnyx's
(`flavour="telnyx"`: the same protocol spelled snake_case), written from the platforms'
published message formats: `connected`, `start` with the custom parameters, caller
audio as base64 `media` every 20 ms, `dtmf`, and `stop` for a hang-up.

Like the platform, it keeps a playback buffer: agent `media` plays one payload after
the other, and each `mark` it receives is sent back when the audio before it has
played; `clear` drops what has not played and sends the pending marks back at once.
Everything received is kept in `received` (event, mark name, time), so a test can tell
which of the agent's turns each audio belongs to from the marks after it."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from voxline.audio.convert import decode, encode
from voxline.audio.formats import Encoding
from voxline.client.gateway import CallOptions
from voxline.client.wire import WireClient, pcm16_of

# What each flavour calls its codecs in `start`, and the call's encoding for each.
_CODECS = {
    "twilio": {"audio/x-mulaw": Encoding.MULAW},
    "telnyx": {"PCMU": Encoding.MULAW, "PCMA": Encoding.ALAW, "L16": Encoding.PCM16},
}


def twilio_signature(auth_token: str, url: str) -> str:
    """X-Twilio-Signature of a GET request to `url` (base64 HMAC-SHA1, no parameters)."""
    mac = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode()


class TwilioClient(WireClient):
    transport = "twilio"

    def __init__(self, address: str, opts: CallOptions,
                 on_event: Callable[[dict], None] | None = None,
                 reply_quiet_ms: float = 1000.0, *, flavour: str = "twilio",
                 path: str = "/", codec: str = "", rate: int = 8000,
                 auth_token: str = "", public_url: str = "", api_key: str = "",
                 swap_every: int = 0) -> None:
        """`codec`: Telnyx's PCMU (default), PCMA or L16 (with `rate` 8000 or 16000);
        Twilio's is always 8 kHz mu-law. `auth_token` signs the upgrade request over
        `public_url` + `path` (default: the ws:// URL dialled). `swap_every` N > 0
        sends every Nth pair of caller frames the wrong way round, as Telnyx may."""
        super().__init__(address, opts, on_event, reply_quiet_ms)
        if flavour not in _CODECS:
            raise ValueError(f"flavour must be twilio or telnyx, not {flavour!r}")
        self.flavour = flavour
        self.codec = codec or ("audio/x-mulaw" if flavour == "twilio" else "PCMU")
        if self.codec not in _CODECS[flavour]:
            raise ValueError(f"{flavour} streams carry {', '.join(_CODECS[flavour])}")
        self.encoding = _CODECS[flavour][self.codec]
        self.rate = rate if self.encoding is Encoding.PCM16 else 8000
        self.path, self.auth_token, self.public_url = path, auth_token, public_url
        self.api_key, self.swap_every = api_key, swap_every
        self.stream_id = ("MZ" if flavour == "twilio" else "") + uuid.uuid4().hex
        self.call_sid = self.opts.call_id or (
            ("CA" + uuid.uuid4().hex) if flavour == "twilio" else f"v3:{uuid.uuid4().hex}")
        self.call_id = self.call_sid  # what the server's record is filed under
        self.ws: ClientConnection | None = None
        self.received: list[tuple[str, str, float]] = []  # (event, mark name, time)
        self.echoed: list[str] = []  # marks sent back, in order
        self.echo_at: dict[str, float] = {}  # and when (perf_counter)
        self.close_code: int | None = None
        self.close_reason = ""
        self._seq = 0
        self._chunk = 0
        self._held: dict | None = None  # a frame held back to be sent out of order
        self._marks: collections.deque[tuple[float, str]] = collections.deque()
        self._mark_added = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------ the platform's messages

    def _key(self, twilio: str, telnyx: str) -> str:
        return twilio if self.flavour == "twilio" else telnyx

    async def _send(self, event: str, **body: object) -> None:
        self._seq += 1
        msg = {"event": event, self._key("sequenceNumber", "sequence_number"): str(self._seq),
               self._key("streamSid", "stream_id"): self.stream_id, **body}
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):  # the receiver reports the close
            await self.ws.send(json.dumps(msg))

    async def connect(self) -> None:
        url = f"ws://{self.host}:{self.port}{self.path}"
        headers = {}
        if self.auth_token:
            signed = (self.public_url.rstrip("/") + self.path) if self.public_url else url
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, signed)
        if self.api_key:
            headers["x-api-key"] = self.api_key
        try:
            self.ws = await connect(url, additional_headers=headers, compression=None,
                                    proxy=None, ping_interval=None)
        except InvalidStatus as exc:
            body = exc.response.body.decode(errors="replace").strip()
            raise ConnectionError(f"HTTP {exc.response.status_code}: {body}") from exc
        except InvalidHandshake as exc:
            raise ConnectionError(f"WebSocket upgrade failed: {exc}") from exc
        if self.flavour == "twilio":
            await self.ws.send(json.dumps({"event": "connected", "protocol": "Call",
                                           "version": "1.0.0"}))
        else:
            await self.ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        params = dict(self.opts.metadata)
        if self.opts.profile:
            params["profile"] = self.opts.profile
        if self.opts.record:
            params["record"] = "true"
        if self.flavour == "twilio":
            start = {"accountSid": "AC" + "0" * 32, "streamSid": self.stream_id,
                     "callSid": self.call_sid, "tracks": ["inbound"],
                     "mediaFormat": {"encoding": self.codec, "sampleRate": 8000,
                                     "channels": 1},
                     "customParameters": params}
        else:
            start = {"user_id": str(uuid.uuid4()), "call_control_id": self.call_sid,
                     "client_state": "", "custom_parameters": params,
                     "media_format": {"encoding": self.codec, "sample_rate": self.rate,
                                      "channels": 1}}
        await self._send("start", start=start)
        self._tasks = [asyncio.create_task(self._receive(), name="twilio-client-receive"),
                       asyncio.create_task(self._play_marks(), name="twilio-client-marks")]

    async def send_frame(self, pcm16: bytes) -> None:
        self._chunk += 1
        media = self._media(pcm16, self._chunk)
        if self.swap_every and self._held is None and self._chunk % (2 * self.swap_every) == 1:
            self._held = media  # sent after the next frame
            return
        await self._send("media", media=media)
        if self._held is not None:
            held, self._held = self._held, None
            await self._send("media", media=held)

    def _media(self, pcm16: bytes, chunk: int) -> dict:
        """A frame as the wire carries it (numbered when it is made, sent maybe later)."""
        if self.encoding is Encoding.PCM16:
            data = np.frombuffer(pcm16, dtype="<i2").astype(">i2").tobytes()  # L16
        else:
            data = encode(decode(pcm16, Encoding.PCM16), self.encoding)
        return {"track": "inbound", "chunk": str(chunk), "timestamp": str((chunk - 1) * 20),
                "payload": base64.b64encode(data).decode()}

    async def send_dtmf(self, digit: str) -> None:
        if self.flavour == "twilio":
            await self._send("dtmf", dtmf={"track": "inbound_track", "digit": digit})
        else:
            await self._send("dtmf", occurred_at=time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                             dtmf={"digit": digit})

    async def hang_up(self) -> None:
        if self.flavour == "twilio":
            await self._send("stop", stop={"accountSid": "AC" + "0" * 32,
                                           "callSid": self.call_sid})
        else:
            await self._send("stop", stop={"call_control_id": self.call_sid})
        self.ended("CALLER_HANGUP", "the caller hung up")
        if self.ws is not None:
            await self.ws.close()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------ what Voxline sends

    async def _receive(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                event = msg.get("event", "")
                now = time.perf_counter()
                if event == "media":
                    data = base64.b64decode(msg["media"]["payload"])
                    if self.encoding is Encoding.PCM16:
                        data = np.frombuffer(data, dtype=">i2").astype("<i2").tobytes()
                    self.received.append(("media", "", now))
                    self.heard(pcm16_of(data, self.encoding))
                elif event == "mark":
                    name = msg["mark"]["name"]
                    self.received.append(("mark", name, now))
                    # echoed once the audio sent before it has played
                    self._marks.append((self._play_end, name))
                    self._mark_added.set()
                elif event == "clear":
                    self.received.append(("clear", "", now))
                    pending = [name for _, name in self._marks]
                    self._marks.clear()
                    self.cleared()
                    for name in pending:  # as Twilio does: dropped marks come back now
                        await self._echo(name)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            if self.close_code in (1008, 1013) and not self.result.agent_audio \
                    and self.result.error is None:
                self.result.error = ("REFUSED", f"{self.close_code} {self.close_reason}")
            self.ended("CLOSED", f"{self.close_code} {self.close_reason}".strip())

    async def _play_marks(self) -> None:
        while True:
            while not self._marks:
                self._mark_added.clear()
                await self._mark_added.wait()
            due, name = self._marks[0]
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(min(wait, 0.02))  # a clear may empty the queue
                continue
            self._marks.popleft()
            await self._echo(name)

    async def _echo(self, name: str) -> None:
        self.echoed.append(name)
        self.echo_at[name] = time.perf_counter()
        await self._send("mark", mark={"name": name})

    # ------------------------------------------------------------ for tests

    def mark_turns(self) -> list[int]:
        """The agent turn of each audio mark received, in order."""
        return [int(name[1:].split(":")[0]) for event, name, _ in self.received
                if event == "mark" and name.startswith("t")]
