"""A batch runner for stateless per-call model work (semantic end of turn): what calls
submit within a tick goes to the model as one batch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from voxline.scheduling.stats import BatchStats

T = TypeVar("T")
R = TypeVar("R")


class BatchRunner(Generic[T, R]):
    def __init__(self, fn: Callable[[list[T]], Sequence[R]], executor: Executor,
                 max_batch: int = 64, tick_ms: float = 8.0) -> None:
        self._fn = fn
        self._executor = executor
        self.max_batch = max(1, max_batch)
        self.tick = tick_ms / 1000
        self.stats = BatchStats()
        self._queue: list[tuple[T, asyncio.Future, float]] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def run(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, time.perf_counter()))
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._loop())
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            wait = self._queue[0][2] + self.tick - time.perf_counter()
            if wait > 0 and len(self._queue) < self.max_batch:
                await asyncio.sleep(wait)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            batch = [b for b in batch if not b[1].done()]
            if not batch:
                continue
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._fn,
                                                     [item for item, _, _ in batch])
            except Exception as exc:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.stats.record(len(batch), [(start - t) * 1000 for _, _, t in batch],
                              (time.perf_counter() - start) * 1000)
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
