"""Plays Vonage's part of a Voice API WebSocket call, from Vonage's published protocol:
it opens the WebSocket, sends `websocket:connected` with the audio's content type
(`audio/l16;rate=16000`, or 8000) and the NCCO endpoint's headers (`profile`,
`call_id`, the caller's metadata), then 20 ms binary frames of 16-bit little-endian PCM
and `websocket:dtmf` events. What comes back plays from a buffer, as Vonage's does:
binary frames queue behind each other, `{"action": "clear"}` drops the queue and is
answered with `websocket:cleared`, and each `{"action": "notify"}` is echoed as
`websocket:notify` when playback reaches it. Vonage hangs up by closing the socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from voxline.client.connect import API_KEY_HEADER
from voxline.client.gateway import CallOptions
from voxline.client.wire import WireClient

_REFUSAL_WAIT_S = 1.0  # after websocket:connected, for a refusal's close to arrive


class VonageClient(WireClient):
    transport = "vonage"
    rate = 16000

    def __init__(self, address: str, opts: CallOptions,
                 on_event: Callable[[dict], None] | None = None,
                 reply_quiet_ms: float = 1000.0, rate: int = 16000,
                 api_key: str | None = None, headers: dict[str, object] | None = None,
                 path: str = "/") -> None:
        super().__init__(address, opts, on_event, reply_quiet_ms)
        if rate not in (8000, 16000):
            raise ValueError(f"Vonage client rate {rate}: use 8000 or 16000")
        self.rate = rate
        self.frame_bytes = rate * 2 // 50
        self.api_key = api_key
        self.headers = headers  # the NCCO's headers; None: profile, call_id and metadata
        self.path = path
        self.ws: ClientConnection | None = None
        self.arrivals: list[tuple[float, int]] = []  # (perf_counter, bytes) of agent audio
        self.clears: list[float] = []  # when each clear arrived
        self.notified: list[dict] = []  # notify payloads echoed, in order
        self.odd_frames: list[int] = []  # agent frames that were not exactly 20 ms
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader: asyncio.Task | None = None
        self._notifies: set[asyncio.Task] = set()
        self._answered = asyncio.Event()  # the server said something, or closed
        self._hung_up = False  # the close is ours

    async def connect(self) -> None:
        extra = {API_KEY_HEADER: self.api_key} if self.api_key else None
        self.ws = await connect(f"ws://{self.host}:{self.port}{self.path}",
                                additional_headers=extra, compression=None,
                                close_timeout=2, ping_interval=None)
        headers = self.headers
        if headers is None:
            headers = {**self.opts.metadata, "call_id": self.call_id}
            if self.opts.profile:
                headers["profile"] = self.opts.profile
            if self.opts.record:
                headers["record"] = "true"
        self._reader = asyncio.create_task(self._read(), name="vonage-client")
        with contextlib.suppress(ConnectionClosed):  # refused at once: the close says why
            await self.ws.send(json.dumps({"event": "websocket:connected",
                                           "content-type": f"audio/l16;rate={self.rate}",
                                           **headers}))
        # Nothing answers websocket:connected; a refusal is a close right after it.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._answered.wait(), _REFUSAL_WAIT_S)
        if self.close_code is not None:
            raise ConnectionError(f"closed {self.close_code}: {self.close_reason}")

    async def send_raw(self, message: str | bytes) -> None:
        """A message as it is (the tests' malformed ones too)."""
        assert self.ws is not None
        try:
            await self.ws.send(message)
        except ConnectionClosed:
            # Voxline closed the call: the reader tells why (run() sees the end).
            if self._reader is not None:
                await asyncio.wait({self._reader}, timeout=2)
            if not self.is_closed:
                raise ConnectionError("the WebSocket closed") from None

    async def send_frame(self, pcm16: bytes) -> None:
        await self.send_raw(pcm16)

    async def send_dtmf(self, digit: str) -> None:
        await self.send_raw(json.dumps({"event": "websocket:dtmf", "digit": digit,
                                        "duration": 260}))

    async def hang_up(self) -> None:
        self._hung_up = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close(1000, "caller hung up")

    async def close(self) -> None:
        await self.hang_up()
        for task in [*self._notifies, *([self._reader] if self._reader else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                self._answered.set()
                if isinstance(message, bytes):
                    if len(message) != self.frame_bytes:
                        self.odd_frames.append(len(message))
                    self.arrivals.append((time.perf_counter(), len(message)))
                    self.heard(message)
                    continue
                command = json.loads(message)
                if command.get("action") == "clear":
                    for task in self._notifies:  # what had not played never will
                        task.cancel()
                    self.clears.append(time.perf_counter())
                    self.cleared()
                    await self.ws.send(json.dumps({"event": "websocket:cleared"}))
                elif command.get("action") == "notify":
                    self._notify_when_played(command.get("payload", {}))
        except ConnectionClosed:
            pass
        finally:
            self._answered.set()
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
            if not self._hung_up:
                self.ended("CLOSED", f"{self.close_code} {self.close_reason}")

    def _notify_when_played(self, payload: dict) -> None:
        due = max(0.0, self._play_end - time.perf_counter())

        async def echo() -> None:
            await asyncio.sleep(due)
            assert self.ws is not None
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps({"event": "websocket:notify",
                                               "payload": payload}))
                self.notified.append(payload)

        task = asyncio.create_task(echo())
        self._notifies.add(task)
        task.add_done_callback(self._notifies.discard)
