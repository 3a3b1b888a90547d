"""Bounded queues between a client's stream and the code that serves it.

`Inbox`: what a client sends, read by one task (the only reader of the stream) into a
bounded queue. While the queue is full the reader stops reading, so the transport's
flow control holds the sender back (backpressure) instead of messages piling up in
memory; each item keeps when it arrived, so the consumer can tell how far behind it
runs. The stream has one idle deadline, a timer re-armed lazily on expiry rather than
one per message: `get` raises TimeoutError once nothing has arrived for `idle_s`. Only
the client's silence counts: not the time the reader is held back by a full queue (the
client has sent; the server has not read), nor a stretch in which the event loop could
not run at all (what arrived then is still unread). A timeout never cancels the
stream's read; closing the inbox does.

`Outbox`: what goes back to the client. Small events always go; audio, paced in real
time, waits for room, so a client that stops reading stalls its own call and no more.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")

# A deadline timer this late means the loop itself could not run: what the client sent
# meanwhile gets this long to be read before the stream counts as idle.
_STALL_S = 1.0


class Inbox(Generic[T]):
    def __init__(self, maxsize: int, idle_s: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._items: collections.deque[tuple[object, float, bool]] = collections.deque()
        self.maxsize = maxsize
        self._room = asyncio.Event()
        self._room.set()
        self._discarding = False
        self._ready = asyncio.Event()
        self._idle_s = idle_s
        self._idle = False
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._held = False  # the reader waits for room: the client is not idle
        if idle_s:
            self._arm(self._last + idle_s)
        self._reader: asyncio.Task | None = None
        self._end: object = None
        self.queued = 0  # stream items waiting now
        self.high_water = 0  # the most that ever waited

    def _arm(self, at: float) -> None:
        self._armed_for = at
        self._timer = self._loop.call_at(at, self._check)

    def _check(self) -> None:
        assert self._idle_s is not None
        now = self._loop.time()
        due = self._last + self._idle_s
        if self._held:
            due = now + self._idle_s
        elif now - self._armed_for > _STALL_S:
            due = max(due, now + _STALL_S)  # the reader's turn to deliver what came
        if now >= due:
            self._idle, self._timer = True, None
            self._ready.set()
        else:
            self._arm(due)

    def _push(self, item: object, counted: bool) -> None:
        self._last = self._loop.time()
        self._items.append((item, self._last, counted))
        self._idle = False
        if self._timer is None and self._idle_s:
            self._arm(self._last + self._idle_s)
        self._ready.set()

    async def put(self, item: T) -> None:
        """Queue a stream item, waiting while the queue is full."""
        while self.queued >= self.maxsize and not self._discarding:
            self._room.clear()
            self._held = True
            try:
                await self._room.wait()
            finally:
                self._held = False
        if self._discarding:
            return
        self.queued += 1
        self.high_water = max(self.high_water, self.queued)
        self._push(item, True)

    def inject(self, item: object) -> None:
        """Queue a control item (the end of the stream, a shutdown): never waits."""
        self._push(item, False)

    def start(self, source: AsyncIterator[T], end: object = None) -> None:
        """Read `source` on a task: its items, then `end`. An exception reading it is
        queued in its place (the consumer raises it)."""

        self._end = end

        async def read() -> None:
            try:
                async for item in source:
                    await self.put(item)
            except Exception as exc:
                self.inject(exc)
            finally:
                self.inject(end)

        self._reader = self._loop.create_task(read(), name="inbox-reader")

    async def get(self) -> tuple[object, float]:
        """The next item and when it arrived (loop time); TimeoutError when idle."""
        while not self._items:
            if self._idle:
                raise TimeoutError(f"nothing arrived for {self._idle_s:g} s")
            self._ready.clear()
            await self._ready.wait()
        item, arrived, counted = self._items.popleft()
        if counted:
            self.queued -= 1
            self._room.set()
        return item, arrived

    async def next(self) -> T:
        """The next stream item: StopAsyncIteration at the end of the stream, the
        error that ended the reading, or TimeoutError when idle."""
        item, _ = await self.get()
        if item is self._end:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def take_ready(self, accept: Callable[[object], bool], limit: int
                   ) -> list[tuple[object, float]]:
        """The stream items already queued behind the last one taken, while `accept`
        takes them (at most `limit`): work that fell behind catches up in one go."""
        taken: list[tuple[object, float]] = []
        while self._items and len(taken) < limit:
            item, arrived, counted = self._items[0]
            if not counted or not accept(item):
                break
            self._items.popleft()
            self.queued -= 1
            taken.append((item, arrived))
        if taken:
            self._room.set()
        return taken

    def lag_s(self, arrived: float) -> float:
        return self._loop.time() - arrived

    async def finish(self, timeout_s: float) -> None:
        """The consumer is done: drop what still comes, and wait up to `timeout_s` for
        the client to close its side."""
        self._discarding = True
        self._room.set()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader


class Outbox(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[T | None] = asyncio.Queue()
        self.maxsize = maxsize
        self._room = asyncio.Event()
        self._room.set()

    def put(self, item: T | None) -> None:
        """Queue an item (None: the end), whatever the queue holds."""
        self._queue.put_nowait(item)
        if self._queue.qsize() >= self.maxsize:
            self._room.clear()

    async def room(self) -> None:
        """Until the client has read enough for more audio."""
        await self._room.wait()

    async def get(self) -> T | None:
        item = await self._queue.get()
        if self._queue.qsize() < self.maxsize:
            self._room.set()
        return item

    def __aiter__(self) -> AsyncIterator[T]:
        return self._items()

    async def _items(self) -> AsyncIterator[T]:
        while (item := await self.get()) is not None:
            yield item


class Feed(Generic[T]):
    """A watcher's copy of a stream (the console, listen-in): bounded and lossy, so a
    slow watcher drops items (counted in `dropped`) and the call it watches never
    waits. Iterating ends once the feed is closed and emptied."""

    def __init__(self, limit: int, backlog: Iterable[T] = ()) -> None:
        self._items: collections.deque[T] = collections.deque(backlog)
        self.limit = limit
        self._ready = asyncio.Event()
        self._ready.set()
        self.closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        if self.closed:
            return
        if len(self._items) >= self.limit:
            self.dropped += 1
            return
        self._items.append(item)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()
