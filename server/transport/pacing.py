"""Timing at the wire's edge, for the adapters that need it.

`Reorder` puts inbound frames back in sequence order: a transport that does not keep
order (Telnyx over several connections, a bursty network) delivers frames late, and the
call must hear them in the order they were spoken. It holds at most `depth` frames
waiting for a missing one, then gives that one up as lost.

`Pacer` sends agent audio in fixed frames on a steady clock, for the wires that play
what they receive at once and keep no buffer of their own (Asterisk AudioSocket): sent
faster, the far end would drop or rush it. The call's own playback lead bounds how far
ahead of real time audio reaches the pacer; a barge-in's clear drops what it holds. It
reports how much of each agent turn went out, so the adapter can tell the call what the
caller heard (PlaybackMark)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Reorder(Generic[T]):
    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self._next: int | None = None
        self._held: dict[int, T] = {}
        self.lost = 0  # frames given up on
        self.late = 0  # frames dropped because their place had already passed

    def push(self, seq: int, item: T) -> list[T]:
        """The frames now ready, in order (often just `item`)."""
        if self._next is None:
            self._next = seq
        if seq < self._next or seq in self._held:
            self.late += 1
            return []
        self._held[seq] = item
        ready: list[T] = []
        while self._held:
            if self._next in self._held:
                ready.append(self._held.pop(self._next))
                self._next += 1
            elif len(self._held) > self.depth:  # waited long enough for the gap
                first = min(self._held)
                self.lost += first - self._next
                self._next = first
            else:
                break
        return ready

    def flush(self) -> list[T]:
        """Whatever is held, in order (the stream ended)."""
        ready = [self._held[s] for s in sorted(self._held)]
        self._held.clear()
        return ready


class Pacer:
    def __init__(self, frame_bytes: int, frame_s: float,
                 send: Callable[[bytes], Awaitable[None]], pad: bytes = b"\x00") -> None:
        self.frame_bytes = frame_bytes
        self.frame_s = frame_s
        self._send = send
        self._pad = pad
        self._buffer = bytearray()
        self._turn = -1
        self.sent_ms: dict[int, float] = {}  # agent turn -> audio that went out
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pacer")

    def push(self, turn_id: int, audio: bytes) -> None:
        if turn_id != self._turn:  # a new turn: what is left of the old one goes first
            self._turn = turn_id
            self.sent_ms.setdefault(turn_id, 0.0)
        self._buffer.extend(audio)
        self._wake.set()

    def clear(self) -> None:
        """Drop everything not yet sent (barge-in)."""
        self._buffer.clear()

    @property
    def pending_s(self) -> float:
        return len(self._buffer) / self.frame_bytes * self.frame_s

    async def drained(self) -> None:
        """Until everything pushed has gone out."""
        while self._buffer and self._task is not None and not self._task.done():
            await asyncio.sleep(self.frame_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        due = time.perf_counter()
        while True:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
                due = max(due, time.perf_counter())  # the clock restarts after a pause
            frame = bytes(self._buffer[:self.frame_bytes])
            del self._buffer[:self.frame_bytes]
            if len(frame) < self.frame_bytes:  # the end of a turn: pad to a whole frame
                frame += self._pad * ((self.frame_bytes - len(frame)) // len(self._pad))
            await self._send(frame)
            self.sent_ms[self._turn] = self.sent_ms.get(self._turn, 0.0) + self.frame_s * 1000
            due += self.frame_s
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
