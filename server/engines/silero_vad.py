"""Silero VAD v6 on ONNX Runtime, batched across streams (one run for many calls)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from voxline.engines.base import VADEngine, VADState

_CONTEXT = 64  # samples of the previous window the model expects in front (16 kHz)


class SileroState(VADState):
    def __init__(self) -> None:
        self.rnn = np.zeros((2, 1, 128), dtype=np.float32)
        self.context = np.zeros(_CONTEXT, dtype=np.float32)


class SileroVAD(VADEngine):
    def __init__(self, model_path: Path, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(self.sample_rate, dtype=np.int64)

    def new_state(self) -> SileroState:
        return SileroState()

    def speech_probs(self, windows: np.ndarray, states: list[VADState]) -> np.ndarray:
        assert windows.shape == (len(states), self.window)
        sts: list[SileroState] = states  # type: ignore[assignment]
        x = np.concatenate([np.stack([s.context for s in sts]), windows], axis=1)
        rnn = np.concatenate([s.rnn for s in sts], axis=1)
        out, rnn_next = self._session.run(
            None, {"input": x.astype(np.float32), "state": rnn, "sr": self._sr}
        )
        for i, s in enumerate(sts):
            s.rnn = rnn_next[:, i:i + 1, :].copy()
            s.context = windows[i, -_CONTEXT:].astype(np.float32)
        return out[:, 0]
