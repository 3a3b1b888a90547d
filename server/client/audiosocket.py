"""Plays Asterisk's part of an AudioSocket call, from the protocol's published frame
format: `[kind u8][length u16 big-endian][payload]`, the call UUID (0x01) first, then
20 ms of signed-linear audio per frame (0x10 at 8 kHz, 0x12 at 16 kHz), DTMF as 0x03 with
one ASCII digit, hang-up as 0x00. Audio that comes back is played as it arrives (Asterisk
keeps no buffer), so a barge-in shows only as the agent's audio stopping; a 0x00 or the
socket closing is the far end hanging up."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import uuid as uuidlib
from collections.abc import Callable

from voxline.client.gateway import CallOptions
from voxline.client.wire import WireClient

HANGUP, UUID, DTMF, ERROR = 0x00, 0x01, 0x03, 0xFF
AUDIO_KINDS = {8000: 0x10, 16000: 0x12}  # the protocol's kinds for slin and slin16


def frame(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack("!BH", kind, len(payload)) + payload


class AudioSocketClient(WireClient):
    transport = "audiosocket"

    def __init__(self, address: str, opts: CallOptions,
                 on_event: Callable[[dict], None] | None = None,
                 reply_quiet_ms: float = 1000.0, uuid: str | None = None,
                 rate: int = 8000) -> None:
        super().__init__(address, opts, on_event, reply_quiet_ms)
        if rate not in AUDIO_KINDS:
            raise ValueError(f"AudioSocket client rate {rate}: use 8000 or 16000")
        self.rate = rate
        self.kind = AUDIO_KINDS[rate]
        self.uuid = uuid or str(uuidlib.uuid4())
        self.call_id = self.uuid  # Voxline's call_id is the UUID
        self.arrivals: list[tuple[float, int]] = []  # (perf_counter, bytes) of agent audio
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        await self.send_raw(frame(UUID, uuidlib.UUID(self.uuid).bytes))
        self._task = asyncio.create_task(self._read(), name="audiosocket-client")

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are (the tests' malformed frames too)."""
        assert self._writer is not None
        self._writer.write(data)
        await self._writer.drain()

    async def send_frame(self, pcm16: bytes) -> None:
        await self.send_raw(frame(self.kind, pcm16))

    async def send_dtmf(self, digit: str) -> None:
        await self.send_raw(frame(DTMF, digit.encode("ascii")))

    async def hang_up(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.send_raw(frame(HANGUP))

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _read(self) -> None:
        assert self._reader is not None
        try:
            while True:
                kind, length = struct.unpack("!BH", await self._reader.readexactly(3))
                payload = await self._reader.readexactly(length)
                if kind == self.kind:
                    self.arrivals.append((time.perf_counter(), len(payload)))
                    self.heard(payload)
                elif kind == HANGUP:
                    self.ended("CLOSED", "Voxline hung up (0x00)")
                    return
                elif kind == ERROR:
                    self.ended("ERROR", f"error frame {payload.hex()}")
                    return
                else:
                    self.ended("ERROR", f"unexpected frame kind 0x{kind:02x}")
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self.ended("CLOSED", "Voxline closed the socket")

