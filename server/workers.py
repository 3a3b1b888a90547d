"""Bridges between the asyncio event loop and blocking model code on worker threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


async def iterate_in_thread(
    make: Callable[[], Iterator[T]], executor: Executor | None = None
) -> AsyncIterator[T]:
    """Run a blocking iterator on a worker thread and yield its items here.

    When the consumer stops early (cancellation, barge-in), the worker stops at the next
    item and closes the iterator, so model work in flight ends promptly.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def put(item: object) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        iterator = make()
        try:
            for item in iterator:
                if stop.is_set():
                    break
                put(item)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            put(_DONE)

    future = loop.run_in_executor(executor, work)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # The worker finishes its current step; do not wait for it while cancelled.
        if future.done():
            future.result()
