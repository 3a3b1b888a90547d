"""Bridges between the asyncio event loop and blocking model code on worker threads."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Executor
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

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


async def timed(source: AsyncIterator[T], timeout_s: float,
                first_timeout_s: float | None = None) -> AsyncIterator[T]:
    """The items of `source`, each within `timeout_s` of the one before (the first
    within `first_timeout_s`, e.g. a queue wait): TimeoutError otherwise. A timeout
    context per item, not a task (asyncio.wait_for makes one each time). Closing this
    closes `source`."""
    timeout = timeout_s if first_timeout_s is None else first_timeout_s
    try:
        while True:
            try:
                async with asyncio.timeout(timeout):
                    item = await anext(source)
            except StopAsyncIteration:
                return
            timeout = timeout_s
            yield item
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()


class Background:
    """Tasks that run on their own (a release, a reload): each is kept until it ends,
    so none is garbage-collected mid-way, and its failure is logged, not lost."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    async def wait(self) -> None:
        """Until every task spawned so far has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
