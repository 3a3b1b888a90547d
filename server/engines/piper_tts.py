"""Piper TTS (ONNX voices), streamed a sentence at a time."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
from piper import PiperConfig, PiperVoice, SynthesisConfig

from voxline.engines.base import TTSEngine


class PiperTTS(TTSEngine):
    def __init__(self, model_path: Path, config_path: Path, length_scale: float = 1.0,
                 threads: int = 1) -> None:
        # PiperVoice.load gives ONNX Runtime no thread limit (every core): our own session.
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        self._voice = PiperVoice(
            config=PiperConfig.from_dict(json.loads(Path(config_path).read_text("utf-8"))),
            session=onnxruntime.InferenceSession(str(model_path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"]))
        self.sample_rate = int(self._voice.config.sample_rate)
        self._syn = SynthesisConfig(length_scale=length_scale)
        # Piper's phonemizer keeps global state; one synthesis at a time per voice.
        self._lock = threading.Lock()

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        # Hold the lock per chunk, not per text, so calls interleave sentence by sentence.
        chunks = self._voice.synthesize(text, syn_config=self._syn)
        while True:
            with self._lock:
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk.audio_float_array.astype(np.float32)
