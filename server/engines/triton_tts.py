"""A TTS voice served by a Triton Inference Server (see scripts/triton_export.py),
reached over gRPC. One request per text (the agent sends a clause at a time); the audio
comes back in the chunks the engine made on Triton, and is handed on chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from voxline.engines.base import TTSEngine
from voxline.engines.repository import ModelError
from voxline.engines.triton_backend import TTS_AUDIO, TTS_CHUNKS, TTS_TEXT, encode_text
from voxline.engines.triton_client import TritonModel, tensor


class TritonTTS(TTSEngine):
    def __init__(self, model: str, url: str = "127.0.0.1:8001",
                 url_env: str | None = "VOXLINE_TRITON_URL", timeout_s: float = 10.0,
                 connect_timeout_s: float = 3.0) -> None:
        """`model`: its name on Triton; `url_env`: an environment variable that, when set,
        replaces url. Fails at once when Triton or the model is not there."""
        self.triton = TritonModel(url, model, url_env, timeout_s, connect_timeout_s)
        rate = self.triton.parameter("sample_rate")
        if not rate.isdigit():
            raise ModelError(f"Triton model '{model}' at {self.triton.url} has no "
                              "sample_rate parameter: not a Voxline TTS export "
                              "(scripts/triton_export.py)")
        self.sample_rate = int(rate)

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        if not text.strip():
            return
        request = [tensor(TTS_TEXT, encode_text(text), "UINT8")]
        [result] = self.triton.infer_many([request])
        sizes = result.as_numpy(TTS_CHUNKS).reshape(-1)
        audio = result.as_numpy(TTS_AUDIO).reshape(-1)[: sizes.sum()].astype(np.float32)
        yield from (c for c in np.split(audio, np.cumsum(sizes)[:-1]) if len(c))

    def close(self) -> None:
        self.triton.close()
