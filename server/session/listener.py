"""What the server hears of one caller: VAD through the shared scheduler, turn-taking,
and partial transcripts with a stability policy. The call session and the STT
benchmark both listen through this."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxline.config import TurnSection
from voxline.engines.base import STTResult
from voxline.scheduling.batch import BatchRunner
from voxline.scheduling.stt import STTScheduler
from voxline.scheduling.vad import VADScheduler
from voxline.session.turns import Endpointer, PauseCheck, TurnEnded, TurnEvent
from voxline.wer import normalize

log = logging.getLogger(__name__)


@dataclass
class Partial:
    text: str
    stable: str  # leading part of `text` that later partials of the turn keep unchanged
    start_ms: int
    end_ms: int


class Stabilizer:
    """Local agreement: words on which two consecutive hypotheses agree become stable,
    and every later partial of the turn starts with them, so shown text never flips."""

    def __init__(self) -> None:
        self.stable: list[str] = []
        self._last: list[str] = []

    def update(self, text: str) -> tuple[str, str]:
        words = text.split()
        agreed = 0
        for a, b in zip(self._last, words, strict=False):
            if normalize(a) != normalize(b):
                break
            agreed += 1
        if agreed > len(self.stable):
            self.stable += words[len(self.stable):agreed]
        self._last = words
        n = len(self.stable)
        same_start = [normalize(w) for w in words[:n]] == [normalize(w) for w in self.stable]
        # A hypothesis that contradicts the stable words shows only them until the model
        # agrees with itself again: settled text never flips or repeats.
        shown = self.stable + (words[n:] if same_start else [])
        return " ".join(shown), " ".join(self.stable)


class Listener:
    def __init__(self, vad: VADScheduler, stt: STTScheduler, turn: TurnSection,
                 end_of_turn_ms: int, on_partial: Callable[[Partial], None],
                 stt_prompt: str = "",
                 turn_model: BatchRunner[np.ndarray, float] | None = None,
                 vad_timeout_s: float = 2.0) -> None:
        """`turn_model`: the semantic end-of-turn model's runner (None: silence only).
        A VAD answer later than `vad_timeout_s` counts its windows as silence (the
        call goes on hearing, rather than stalling behind a stuck scheduler)."""
        self.endpointer = Endpointer(turn, vad.engine.window, end_of_turn_ms,
                                     semantic=turn_model is not None)
        self._turn_model = turn_model
        self._threshold = turn.semantic_threshold
        self._vad = vad
        self._stt = stt
        self._state = vad.engine.new_state()
        self._interval = turn.partial_interval_ms
        self._on_partial = on_partial
        self._prompt = stt_prompt
        self._stabilizer = Stabilizer()
        self._turn = 0  # counts ended turns, so a late partial of an old turn is dropped
        self._last_partial_ms = 0
        self._tasks: set[asyncio.Task] = set()
        self._vad_timeout_s = vad_timeout_s
        self.partials_asked = 0
        self.partials_shown = 0
        self.in_turn_ms = 0.0  # caller audio heard inside turns (partials are due in it)

    async def feed(self, samples: np.ndarray) -> list[TurnEvent]:
        """Add 16 kHz audio; return the turn events it completes."""
        ep = self.endpointer
        windows = ep.push(samples)
        events: list[TurnEvent] = []
        if windows:
            try:
                async with asyncio.timeout(self._vad_timeout_s):
                    probs = await self._vad.speech_probs(self._state, np.stack(windows))
            except TimeoutError:
                log.warning("VAD gave no answer in %.1f s; %d windows taken as silence",
                            self._vad_timeout_s, len(windows))
                probs = np.zeros(len(windows), np.float32)
            for window, prob in zip(windows, probs, strict=True):
                events += ep.update(window, float(prob))
                self.in_turn_ms += ep.window_ms if ep.in_turn else 0.0
        for e in events:
            if isinstance(e, PauseCheck):
                self._spawn(self._check_pause(e))
        if any(isinstance(e, TurnEnded) for e in events):
            self._turn += 1
            self._stabilizer = Stabilizer()
            self._last_partial_ms = 0
            self.cancel_partials()
        # No partial in a pause: nothing new to hear, and the turn may be about to end,
        # when a partial running would hold up the final.
        if (self._interval and ep.talking
                and ep.utterance_ms - self._last_partial_ms >= self._interval):
            self._last_partial_ms = ep.utterance_ms
            self._spawn(self._partial(ep.utterance(), self._turn))
        return events

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check_pause(self, check: PauseCheck) -> None:
        assert self._turn_model is not None
        prob = await self._turn_model.run(check.audio)
        self.endpointer.set_verdict(prob >= self._threshold, check.pause)

    async def final(self, audio: np.ndarray) -> STTResult:
        result = await self._stt.transcribe(audio, final=True, prompt=self._prompt)
        assert result is not None  # finals are never dropped
        return result

    async def _partial(self, audio: np.ndarray, turn: int) -> None:
        self.partials_asked += 1
        ep = self.endpointer
        try:
            result = await self._stt.transcribe(audio, final=False, stream=self,
                                                prompt=self._prompt)
        except Exception as exc:  # best effort: the final transcript still comes
            log.warning("partial transcript failed: %r", exc)
            return
        if result is None or not result.text or turn != self._turn or not ep.in_turn:
            return  # dropped under load, silence, or the turn is already over
        text, stable = self._stabilizer.update(result.text)
        self.partials_shown += 1
        end_ms = ep.audio_ms
        self._on_partial(Partial(text, stable, end_ms - ep.utterance_ms, end_ms))

    async def settled(self) -> None:
        """Until the pause checks and partials asked for so far have answered (a
        benchmark or test that replays audio faster than real time waits on them)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def cancel_partials(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        self.cancel_partials()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
