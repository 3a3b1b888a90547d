"""Whisper served by a Triton Inference Server (see scripts/triton_export.py), reached
over gRPC. Each utterance of a batch is its own request, all sent at once: Triton's
dynamic batcher joins them, with the requests of every other Voxline process, into
batched runs of the same engine code Voxline runs in-process."""

from __future__ import annotations

import math

import numpy as np

from voxline.engines.base import STTEngine, STTResult
from voxline.engines.repository import ModelError
from voxline.engines.triton_backend import (
    STT_AUDIO,
    STT_LOGPROB,
    STT_PROMPT,
    STT_TEXT,
    decode_text,
    encode_text,
)
from voxline.engines.triton_client import TritonModel, tensor


class TritonSTT(STTEngine):
    def __init__(self, model: str, url: str = "127.0.0.1:8001",
                 url_env: str | None = "VOXLINE_TRITON_URL", timeout_s: float = 10.0,
                 connect_timeout_s: float = 3.0) -> None:
        """`model`: its name on Triton; `url_env`: an environment variable that, when set,
        replaces url. Fails at once when Triton or the model is not there."""
        self.triton = TritonModel(url, model, url_env, timeout_s, connect_timeout_s)
        names = {t["name"] for t in self.triton.config.get("input", [])}
        if names != {STT_AUDIO, STT_PROMPT}:
            raise ModelError(f"Triton model '{model}' at {self.triton.url} takes "
                              f"{sorted(names)}, not a Voxline STT export "
                              "(scripts/triton_export.py)")

    def batch_key(self, samples: int) -> int:
        # Any utterances can go out together: the model on Triton groups them by its own
        # encoder window (and Triton batches across calls and processes anyway).
        return 0

    def transcribe(self, audio: np.ndarray, prompt: str = "") -> STTResult:
        return self.transcribe_batch([audio], prompt)[0]

    def transcribe_batch(self, audios: list[np.ndarray], prompt: str = "") -> list[STTResult]:
        hint = encode_text(prompt)
        requests = [[tensor(STT_AUDIO, np.asarray(a, np.float32).reshape(1, -1), "FP32"),
                     tensor(STT_PROMPT, hint, "UINT8")] for a in audios]
        results = []
        for r in self.triton.infer_many(requests):
            logprob = float(r.as_numpy(STT_LOGPROB).reshape(-1)[0])
            results.append(STTResult(decode_text(r.as_numpy(STT_TEXT)),
                                     None if math.isnan(logprob) else logprob))
        return results

    def close(self) -> None:
        self.triton.close()
