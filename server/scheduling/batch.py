"""A batch runner for stateless per-call model work (semantic end of turn): what calls
submit within a tick goes to the model as one batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

from voxline.scheduling.base import Scheduler

T = TypeVar("T")
R = TypeVar("R")


class BatchRunner(Scheduler, Generic[T, R]):
    def __init__(self, fn: Callable[[list[T]], Sequence[R]], executor: Executor,
                 max_batch: int = 64, tick_ms: float = 8.0) -> None:
        super().__init__(executor)
        self._fn = fn
        self.max_batch = max(1, max_batch)
        self.tick = tick_ms / 1000
        self._queue: list[tuple[T, asyncio.Future, float]] = []

    async def run(self, item: T) -> R:
        future = self._track(asyncio.get_running_loop().create_future())
        self._queue.append((item, future, time.perf_counter()))
        self._kick()
        return await future

    def _crashed(self) -> None:
        self._queue = []

    async def _run(self) -> None:
        while True:
            await self._idle(bool(self._queue))
            wait = self._queue[0][2] + self.tick - time.perf_counter()
            if wait > 0 and len(self._queue) < self.max_batch:
                await asyncio.sleep(wait)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            batch = [b for b in batch if not b[1].done()]
            if batch:
                await self._dispatch([f for _, f, _ in batch], [t for _, _, t in batch],
                                     self._fn, [item for item, _, _ in batch])
