"""One VAD scheduler for every call: the windows that calls submit within a tick go to
the model in one batched run (Silero keeps a recurrent state per stream; the engine
takes a batch of windows with their streams' states)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from voxline.engines.base import VADEngine, VADState
from voxline.scheduling.stats import BatchStats


@dataclass(eq=False)  # compared by identity: they hold arrays
class _Request:
    state: VADState
    windows: np.ndarray  # [k, window]
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


class VADScheduler:
    def __init__(self, engine: VADEngine, executor: Executor, max_batch: int = 64,
                 tick_ms: float = 8.0) -> None:
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.tick = tick_ms / 1000
        self.stats = BatchStats()
        self._executor = executor
        self._queue: list[_Request] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def speech_probs(self, state: VADState, windows: np.ndarray) -> np.ndarray:
        """Speech probability of each window [k, window] of one stream, in order."""
        if len(windows) == 0:
            return np.zeros(0, np.float32)
        req = _Request(state, windows, asyncio.get_running_loop().create_future())
        self._queue.append(req)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="vad-scheduler")
        return await req.future

    async def close(self) -> None:
        """Stop the worker (work still queued is abandoned)."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            if self.max_batch > 1:
                wait = self._queue[0].submitted + self.tick - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            # One request per stream per round: a stream's windows must run in order.
            batch: list[_Request] = []
            seen: set[int] = set()
            for req in list(self._queue):
                if len(batch) < self.max_batch and id(req.state) not in seen:
                    seen.add(id(req.state))
                    batch.append(req)
                    self._queue.remove(req)
            start = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._executor, self._compute, batch)
            except Exception as exc:
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
                continue
            self.stats.record(len(batch), [(start - r.submitted) * 1000 for r in batch],
                              (time.perf_counter() - start) * 1000)
            for req, p in zip(batch, probs, strict=True):
                if not req.future.done():
                    req.future.set_result(p)

    def _compute(self, batch: list[_Request]) -> list[np.ndarray]:
        """Step through the streams' windows together: step j runs window j of every
        stream that has one, as one model call."""
        out = [np.zeros(len(r.windows), np.float32) for r in batch]
        for j in range(max(len(r.windows) for r in batch)):
            rows = [i for i, r in enumerate(batch) if len(r.windows) > j]
            probs = self.engine.speech_probs(np.stack([batch[i].windows[j] for i in rows]),
                                             [batch[i].state for i in rows])
            for i, p in zip(rows, probs, strict=True):
                out[i][j] = p
        return out
