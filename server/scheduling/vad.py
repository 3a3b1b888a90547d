"""One VAD scheduler for every call: the windows that calls submit within a tick go to
the model in one batched run (Silero keeps a recurrent state per stream; the engine
takes a batch of windows with their streams' states)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from voxline.engines.base import VADEngine, VADState
from voxline.scheduling.base import Scheduler


@dataclass(eq=False)  # compared by identity: they hold arrays
class _Request:
    state: VADState
    windows: np.ndarray  # [k, window]
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


class VADScheduler(Scheduler):
    def __init__(self, engine: VADEngine, executor: Executor, max_batch: int = 64,
                 tick_ms: float = 8.0) -> None:
        super().__init__(executor)
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.tick = tick_ms / 1000
        self._queue: list[_Request] = []

    async def speech_probs(self, state: VADState, windows: np.ndarray) -> np.ndarray:
        """Speech probability of each window [k, window] of one stream, in order."""
        if len(windows) == 0:
            return np.zeros(0, np.float32)
        req = _Request(state, windows, self._track(asyncio.get_running_loop().create_future()))
        self._queue.append(req)
        self._kick()
        return await req.future

    async def _run(self) -> None:
        while True:
            await self._idle(bool(self._queue))
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
            await self._dispatch([r.future for r in batch], [r.submitted for r in batch],
                                 self._compute, batch)

    def _crashed(self) -> None:
        self._queue = []

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
