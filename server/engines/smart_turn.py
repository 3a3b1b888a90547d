"""Semantic end of turn: Smart Turn v3 on ONNX Runtime, a batch of calls per run.

Input, as the model was trained: the last 8 s of 16 kHz audio (zeros in front when
shorter), normalised to zero mean and unit variance, as Whisper log-mel features
(80 x 800) from the same torch kernel the STT uses. Output: the probability that the
speaker has finished.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from voxline.engines.base import TurnEngine
from voxline.kernels.logmel import HOP, LogMel

_WINDOW = 8 * 16000


class SmartTurnONNX(TurnEngine):
    def __init__(self, model_path: Path, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(model_path), sess_options=opts,
                                             providers=["CPUExecutionProvider"])
        self._mel = LogMel(80)

    def completion_probs(self, audios: list[np.ndarray]) -> np.ndarray:
        batch = torch.zeros(len(audios), _WINDOW)
        for i, a in enumerate(audios):
            tail = torch.from_numpy(np.ascontiguousarray(a[-_WINDOW:], dtype=np.float32))
            batch[i, _WINDOW - len(tail):] = tail
        batch = (batch - batch.mean(1, keepdim=True)) / torch.sqrt(
            batch.var(1, unbiased=False, keepdim=True) + 1e-7)
        feats = self._mel(batch)[..., : _WINDOW // HOP].contiguous().numpy()
        return self._session.run(None, {"input_features": feats})[0][:, 0]
