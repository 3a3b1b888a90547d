"""Whisper through faster-whisper (CTranslate2)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from faster_whisper import WhisperModel

from voxline.engines.base import STTEngine, STTResult


class FasterWhisperSTT(STTEngine):
    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 2,
        language: str | None = "en",
        beam_size: int = 1,
        workers: int = 1,
    ) -> None:
        self._model = WhisperModel(
            str(model_dir),
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=workers,
        )
        self._language = language
        self._beam_size = beam_size
        # CTranslate2 runs `workers` transcriptions in parallel; more callers queue here.
        self._slots = threading.Semaphore(workers)

    def transcribe(self, audio: np.ndarray) -> STTResult:
        with self._slots:
            segments, _info = self._model.transcribe(
                audio.astype(np.float32),
                language=self._language,
                beam_size=self._beam_size,
                vad_filter=False,
                condition_on_previous_text=False,
                without_timestamps=True,
            )
            segments = list(segments)
        text = " ".join(s.text.strip() for s in segments).strip()
        logprob = float(np.mean([s.avg_logprob for s in segments])) if segments else None
        return STTResult(text=text, avg_logprob=logprob)
