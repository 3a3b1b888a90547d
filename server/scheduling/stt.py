"""One STT scheduler for every call in the process.

Calls submit the final transcript of a turn when it ends, and partial transcripts of
the growing utterance while the caller speaks. One worker gathers what is ready into
a batch (up to `max_batch`, waiting at most `max_wait_ms` for it to fill), runs one
batched engine call on a worker thread and hands each call its result.

Finals go first. Partials fill what room is left up to `partial_max_batch` items in
all: on a GPU a batch of 32 costs little more than one, so partials ride along; on a
CPU each item costs the same in a batch as alone, so a partial in a final's batch only
delays the final, and the CPU default keeps partials out of it. Under load partials are
thinned: a call's newer partial replaces its older one, and a partial that waited
longer than `partial_max_wait_ms` is dropped (its text would be stale by the time it is
shown). Finals are never dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from voxline.engines.base import STTEngine, STTResult
from voxline.scheduling.base import Scheduler


@dataclass(eq=False)  # compared by identity: they hold arrays
class _Job:
    audio: np.ndarray
    final: bool
    key: tuple[int, str]  # encoder window and vocabulary prompt: what a batch shares
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


class STTScheduler(Scheduler):
    def __init__(self, engine: STTEngine, executor: Executor, max_batch: int = 8,
                 max_wait_ms: float = 10.0, partial_max_wait_ms: float = 1000.0,
                 partial_max_batch: int = 1) -> None:
        super().__init__(executor)
        self.engine = engine
        self.max_batch = max(1, max_batch)
        self.partial_max_batch = max(1, min(partial_max_batch, self.max_batch))
        self.max_wait = max_wait_ms / 1000
        self.partial_max_wait = partial_max_wait_ms / 1000
        self._finals: deque[_Job] = deque()
        self._partials: dict[object, _Job] = {}  # one pending partial per stream

    async def transcribe(self, audio: np.ndarray, *, final: bool = True,
                         stream: object = None, prompt: str = "") -> STTResult | None:
        """The transcript of `audio`; None when a partial was dropped under load."""
        job = _Job(audio, final, (self.engine.batch_key(len(audio)), prompt),
                   self._track(asyncio.get_running_loop().create_future()))
        if final:
            self._finals.append(job)
        else:
            older = self._partials.pop(stream, None)
            if older is not None:
                self._drop(older)
            self._partials[stream] = job
        self._kick()
        return await job.future

    @property
    def pending(self) -> int:
        return len(self._finals) + len(self._partials)

    def _drop(self, job: _Job) -> None:
        if not job.future.done():
            job.future.set_result(None)
            self.stats.dropped += 1

    def _take_batch(self) -> list[_Job]:
        now = time.perf_counter()
        for stream, job in list(self._partials.items()):
            if job.future.done() or now - job.submitted > self.partial_max_wait:
                del self._partials[stream]
                self._drop(job)
        while self._finals and self._finals[0].future.done():  # caller gave up (barge-in)
            self._finals.popleft()
        partials = sorted(self._partials.values(), key=lambda j: j.submitted)
        head = self._finals[0] if self._finals else (partials[0] if partials else None)
        if head is None:
            return []
        batch = [j for j in self._finals if j.key == head.key and not j.future.done()]
        batch = batch[: self.max_batch]
        room = max(0, self.partial_max_batch - len(batch))
        batch += [j for j in partials if j.key == head.key][:room]
        for job in batch:
            if job.final:
                self._finals.remove(job)
        self._partials = {s: j for s, j in self._partials.items() if j not in batch}
        return batch

    def _crashed(self) -> None:
        self._finals.clear()
        self._partials.clear()

    async def _run(self) -> None:
        while True:
            await self._idle(bool(self.pending))
            # Give a batch that is not full a moment to fill, counted from its oldest job.
            if self.max_batch > 1 and self.pending < self.max_batch:
                oldest = min(j.submitted for j in [*self._finals, *self._partials.values()])
                wait = oldest + self.max_wait - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            batch = self._take_batch()
            if batch:
                await self._dispatch([j.future for j in batch], [j.submitted for j in batch],
                                     self.engine.transcribe_batch, [j.audio for j in batch],
                                     batch[0].key[1])
