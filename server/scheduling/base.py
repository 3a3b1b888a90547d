"""What every scheduler shares: one asyncio worker, started on first use, that hands
batches to a model on a worker thread and each caller its result. A worker that
crashes is logged, every request it held fails with the error (none is left waiting),
and the next request starts a new worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from voxline.scheduling.stats import BatchStats

log = logging.getLogger(__name__)


class Scheduler(ABC):
    def __init__(self, executor: Executor) -> None:
        self.stats = BatchStats()
        self._executor = executor
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._pending: set[asyncio.Future] = set()  # every request not yet answered
        self.crashes = 0

    def _track(self, future: asyncio.Future) -> asyncio.Future:
        """Note a request's future, so a crash can fail it."""
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        return future

    def _kick(self) -> None:
        """New work is queued: wake the worker, starting it if need be."""
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._supervised(), name=type(self).__name__)

    async def _supervised(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            self.crashes += 1
            log.exception("%s worker crashed; failing its %d requests", type(self).__name__,
                          len(self._pending))
            for future in list(self._pending):
                if not future.done():
                    future.set_exception(RuntimeError(f"{type(self).__name__} failed: {exc}"))
            self._crashed()

    @abstractmethod
    def _crashed(self) -> None:
        """Forget the queue of a crashed worker (its requests have failed)."""

    async def _idle(self, has_work: bool) -> None:
        if not has_work:
            self._wake.clear()
            await self._wake.wait()

    async def _dispatch(self, futures: list[asyncio.Future], submitted: list[float],
                        fn: Callable[..., Sequence[Any]], *args: Any) -> None:
        """Run one batch on the executor; each future gets its result, or the error
        (every caller in the batch hears of a failure)."""
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, fn,
                                                                       *args)
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        self.stats.record(len(futures), [(start - t) * 1000 for t in submitted],
                          (time.perf_counter() - start) * 1000)
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop the worker (work still queued is abandoned)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    @abstractmethod
    async def _run(self) -> None: ...
