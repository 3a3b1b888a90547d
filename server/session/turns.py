"""Turn-taking from VAD: speech start/stop and end of the caller's turn.

The Endpointer cuts 16 kHz audio into VAD windows and turns the speech probability of
each window into events on the call's audio clock. It does not run the model itself:
the session runs the VAD on the windows (so many calls can be batched) and hands the
probabilities back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from voxline.config import TurnSection

RATE = 16000


@dataclass
class SpeechStarted:
    audio_ms: int


@dataclass
class SpeechStopped:
    audio_ms: int


@dataclass
class PauseCheck:
    """The caller paused: ask the semantic end-of-turn model about the utterance so
    far and give its verdict to `Endpointer.set_verdict(complete, pause)`."""

    audio: np.ndarray
    pause: int


@dataclass
class TurnEnded:
    start_ms: int
    end_ms: int  # end of speech (the trailing silence starts here)
    audio: np.ndarray  # the utterance, 16 kHz float32, pre-roll included
    forced: bool = False  # cut at max_turn_ms rather than by silence


TurnEvent = SpeechStarted | SpeechStopped | PauseCheck | TurnEnded


class Endpointer:
    def __init__(self, cfg: TurnSection, window: int, end_of_turn_ms: int,
                 semantic: bool = False) -> None:
        """`semantic`: a pause of `semantic_check_ms` asks the end-of-turn model
        (PauseCheck); "finished" ends the turn at once, "not finished" waits
        `semantic_incomplete_ms`; no verdict yet waits `end_of_turn_ms`."""
        self.cfg = cfg
        self.semantic = semantic
        self._pause = 0  # counts pauses, so a late verdict on an old pause is ignored
        self._verdict: bool | None = None
        self._checked = False
        self.window = window
        self.window_ms = window * 1000 / RATE
        self.end_of_turn_ms = end_of_turn_ms
        self._pending = np.zeros(0, dtype=np.float32)
        self._windows_done = 0
        self._pre_roll: deque[np.ndarray] = deque(
            maxlen=max(1, int(cfg.pre_roll_ms / self.window_ms))
        )
        self._utterance: list[np.ndarray] = []
        self.in_turn = False  # a caller turn has started and not ended
        self._talking = False  # inside a stretch of speech (not a pause)
        self._speech_run = 0.0
        self._silence_run = 0.0
        self._start_ms = 0
        self._last_speech_ms = 0

    @property
    def audio_ms(self) -> int:
        """Position on the call's audio clock (end of the last window processed)."""
        return int(self._windows_done * self.window_ms)

    @property
    def talking(self) -> bool:
        """Inside a stretch of speech (not in a pause or the trailing silence)."""
        return self._talking

    @property
    def utterance_ms(self) -> int:
        return int(len(self._utterance) * self.window_ms) if self.in_turn else 0

    def utterance(self) -> np.ndarray:
        return np.concatenate(self._utterance) if self._utterance else np.zeros(0, np.float32)

    def so_far(self, end_ms: int) -> TurnEnded:
        """The utterance as the turn would be if it ended now (speech up to `end_ms`)."""
        return TurnEnded(self._start_ms, end_ms, self.utterance())

    def push(self, audio: np.ndarray) -> list[np.ndarray]:
        """Add audio; return the complete windows now ready for the VAD, in order."""
        self._pending = np.concatenate([self._pending, audio.astype(np.float32)])
        n = len(self._pending) // self.window
        windows = [self._pending[i * self.window:(i + 1) * self.window] for i in range(n)]
        self._pending = self._pending[n * self.window:]
        return windows

    def update(self, window: np.ndarray, prob: float) -> list[TurnEvent]:
        """Advance by one window with its speech probability."""
        self._windows_done += 1
        now = self.audio_ms
        threshold = self.cfg.vad_threshold
        # Hysteresis: once talking, a lower probability still counts as speech.
        speech = prob >= (threshold - 0.15 if self._talking else threshold)
        events: list[TurnEvent] = []
        if speech:
            self._speech_run += self.window_ms
            if self._silence_run:
                self._pause += 1
                self._verdict, self._checked = None, False
            self._silence_run = 0.0
            self._last_speech_ms = now
        else:
            self._speech_run = 0.0
            self._silence_run += self.window_ms

        if not self.in_turn:
            self._pre_roll.append(window)
            if self._speech_run >= self.cfg.min_speech_ms:
                self.in_turn = self._talking = True
                self._start_ms = int(now - self._speech_run)
                self._utterance = list(self._pre_roll)
                events.append(SpeechStarted(self._start_ms))
            return events

        self._utterance.append(window)
        if speech and not self._talking and self._speech_run >= self.cfg.min_speech_ms:
            self._talking = True
            events.append(SpeechStarted(int(now - self._speech_run)))
        speech_end = int(now - self._silence_run)
        if self._talking and self._silence_run >= min(
            self.cfg.speech_stop_ms, self.end_of_turn_ms
        ):
            self._talking = False
            events.append(SpeechStopped(speech_end))
        if (self.semantic and not self._checked
                and self._silence_run >= self.cfg.semantic_check_ms):
            self._checked = True
            events.append(PauseCheck(self.utterance(), self._pause))
        if self._silence_run >= self._required_silence():
            events.append(self._end_turn(speech_end, forced=False))
        elif self.utterance_ms >= self.cfg.max_turn_ms:
            if self._talking:
                events.append(SpeechStopped(now))
            events.append(self._end_turn(now, forced=True))
        return events

    def set_verdict(self, complete: bool, pause: int) -> None:
        if pause == self._pause and self.in_turn:
            self._verdict = complete

    def _required_silence(self) -> float:
        if self._verdict is None:
            return self.end_of_turn_ms
        if self._verdict:
            return min(self.cfg.semantic_check_ms, self.end_of_turn_ms)
        return max(self.end_of_turn_ms, self.cfg.semantic_incomplete_ms)

    def _end_turn(self, end_ms: int, forced: bool) -> TurnEnded:
        turn = TurnEnded(self._start_ms, end_ms, self.utterance(), forced)
        self.in_turn = self._talking = False
        self._utterance = []
        self._pre_roll.clear()
        self._speech_run = self._silence_run = 0.0
        self._pause += 1
        self._verdict, self._checked = None, False
        return turn
