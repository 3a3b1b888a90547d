"""What runs inside Triton: Python-backend models that serve Voxline's own engines.

scripts/triton_export.py writes, per model, a `config.pbtxt` (from the functions below)
and a `1/model.py` that loads STTModel or TTSModel, beside a copy of the model's
manifest. The engine is built from that manifest by the same code `voxline serve` uses
(ModelRepository's ENGINES), so a transcript over Triton is the one Voxline would make
in-process. The wire contract of each kind (tensor names and types) is defined here;
the client engines (triton_stt.py, triton_tts.py) use it.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from voxline.engines.base import Engine, STTEngine, STTResult, TTSEngine
from voxline.engines.repository import ENGINES, ModelError, read_manifest, resolve_weights

log = logging.getLogger(__name__)

# The Python backend stub that pytriton ships was built against numpy 1: under numpy 2,
# which Voxline runs, its numpy conversions (as_numpy, Tensor(name, array)) read and
# write garbage. Tensors therefore cross by DLPack, a plain C struct: inputs with
# np.from_dlpack, outputs from torch tensors (torch's capsules, unlike numpy's, accept
# the name the stub gives a used capsule). Text travels as UTF-8 in UINT8 tensors with
# a closing NUL byte, and audio with at least one sample: an empty output tensor is
# refused by the stub ("not contiguous").
# STT: one utterance (16 kHz float32) and its vocabulary prompt per request.
STT_AUDIO, STT_PROMPT = "AUDIO", "PROMPT"
STT_TEXT, STT_LOGPROB = "TEXT", "AVG_LOGPROB"  # AVG_LOGPROB is NaN when there is none
# TTS: one text per request; its audio, and the sample counts of the engine's chunks
# (so the client streams the same chunks the engine made).
TTS_TEXT, TTS_AUDIO, TTS_CHUNKS = "TEXT", "AUDIO", "CHUNK_SAMPLES"


def stt_config(name: str, max_batch: int, queue_delay_us: int, instances: int = 1) -> str:
    # allow_ragged_batch: requests of different lengths are batched all the same (the
    # Python backend hands over each request's own tensors); the model groups the
    # utterances by encoder window itself.
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "{STT_AUDIO}" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true }},
  {{ name: "{STT_PROMPT}" data_type: TYPE_UINT8 dims: [ -1 ] allow_ragged_batch: true }}
]
output [
  {{ name: "{STT_TEXT}" data_type: TYPE_UINT8 dims: [ -1 ] }},
  {{ name: "{STT_LOGPROB}" data_type: TYPE_FP32 dims: [ 1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
"""


def tts_config(name: str, max_batch: int, queue_delay_us: int, sample_rate: int,
               instances: int = 1) -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "{TTS_TEXT}" data_type: TYPE_UINT8 dims: [ -1 ] allow_ragged_batch: true }}
]
output [
  {{ name: "{TTS_AUDIO}" data_type: TYPE_FP32 dims: [ -1 ] }},
  {{ name: "{TTS_CHUNKS}" data_type: TYPE_INT32 dims: [ -1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters: {{ key: "sample_rate" value: {{ string_value: "{sample_rate}" }} }}
"""


def encode_text(text: str) -> np.ndarray:
    """A text as one UINT8 tensor row: UTF-8 and a NUL byte."""
    return np.frombuffer(text.encode() + b"\0", dtype=np.uint8).reshape(1, -1)


def decode_text(row: np.ndarray) -> str:
    data = np.ascontiguousarray(row, dtype=np.uint8).tobytes()
    return data.removesuffix(b"\0").decode("utf-8", "replace")


def load_engine(folder: Path, kind: str) -> Engine:
    """The engine of the manifest in `folder`, built as ModelRepository builds it."""
    manifest = read_manifest(folder)
    if manifest.kind != kind:
        raise ModelError(f"{folder}: a {manifest.kind} model, not {kind}")
    if manifest.engine not in ENGINES or manifest.engine == "triton":
        raise ModelError(f"{folder}: engine '{manifest.engine}' cannot run inside Triton")
    from voxline.config import ThreadsSection

    return ENGINES[manifest.engine](manifest, resolve_weights(folder, manifest.source),
                                    ThreadsSection().model_dump())


def _pb() -> Any:
    # Only importable inside Triton's Python backend stub.
    import triton_python_backend_utils as pb_utils

    return pb_utils


class _EngineModel:
    """Triton's TritonPythonModel interface around one Voxline engine."""

    kind = ""

    def initialize(self, args: dict[str, str]) -> None:
        folder = Path(args["model_repository"]) / args["model_version"]
        self.engine = load_engine(folder, self.kind)
        self.name = args["model_name"]

    def finalize(self) -> None:
        self.engine.close()

    def _send(self, request: Any, outputs: Callable[[], list[Any]] | None,
              error: str = "") -> None:
        """Answer one request: the tensors `outputs()` makes, or `error`. Each response
        goes out as soon as it is ready, not when the whole batch is done (the response
        sender works for non-decoupled models too; execute then returns None). Never
        raises: an exception out of execute after responses went out crashed Triton."""
        pb = _pb()
        try:
            response = (pb.InferenceResponse(error=pb.TritonError(error))
                        if error or outputs is None
                        else pb.InferenceResponse(output_tensors=outputs()))
        except Exception as exc:
            log.exception("%s: response failed", self.name)
            response = pb.InferenceResponse(error=pb.TritonError(f"{self.name}: {exc!r}"))
        try:
            request.get_response_sender().send(
                response, flags=pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception:  # the request was cancelled or its client is gone
            log.exception("%s: could not send a response", self.name)


class STTModel(_EngineModel):
    kind = "stt"
    engine: STTEngine

    def execute(self, requests: list[Any]) -> None:
        # Utterances of one encoder window and prompt share one transcribe_batch: the
        # engine's batch_key is what makes a batched result equal the one-at-a-time one.
        groups: dict[tuple[int, str], list[tuple[Any, np.ndarray]]] = defaultdict(list)
        for request in requests:
            try:
                audio = _row(request, STT_AUDIO).astype(np.float32, copy=False)
                prompt = decode_text(_row(request, STT_PROMPT))
            except Exception as exc:
                self._send(request, None, f"{self.name}: {exc}")
                continue
            groups[(self.engine.batch_key(len(audio)), prompt)].append((request, audio))
        for (_key, prompt), members in groups.items():
            try:
                results = self.engine.transcribe_batch([a for _r, a in members], prompt)
            except Exception as exc:  # one bad group fails its requests, not the batch
                log.exception("%s: transcribe_batch failed", self.name)
                for request, _a in members:
                    self._send(request, None, f"{self.name}: {exc!r}")
                continue
            for (request, _a), result in zip(members, results, strict=True):
                self._send(request, partial(_stt_outputs, result))


class TTSModel(_EngineModel):
    kind = "tts"
    engine: TTSEngine

    def execute(self, requests: list[Any]) -> None:
        for request in requests:  # one voice synthesises one text at a time anyway
            try:
                text = decode_text(_row(request, TTS_TEXT))
                chunks = list(self.engine.synthesize(text))
            except Exception as exc:
                log.exception("%s: synthesize failed", self.name)
                self._send(request, None, f"{self.name}: {exc!r}")
                continue
            self._send(request, partial(_tts_outputs, chunks))


def _stt_outputs(result: STTResult) -> list[Any]:
    logprob = math.nan if result.avg_logprob is None else result.avg_logprob
    return [_tensor(STT_TEXT, encode_text(result.text)),
            _tensor(STT_LOGPROB, np.array([[logprob]], dtype=np.float32))]


def _tts_outputs(chunks: list[np.ndarray]) -> list[Any]:
    sizes = np.array([len(c) for c in chunks] or [0], dtype=np.int32)
    # the chunks' samples, then padding up to one sample (see the top of the file)
    audio = np.concatenate([*chunks, np.zeros(int(sizes.sum() == 0), np.float32)])
    return [_tensor(TTS_AUDIO, audio.astype(np.float32).reshape(1, -1)),
            _tensor(TTS_CHUNKS, sizes.reshape(1, -1))]


def _row(request: Any, name: str) -> np.ndarray:
    """The one batch row of a request's input (each request carries one utterance or
    text: their lengths differ, so rows cannot share a request)."""
    array = np.from_dlpack(_pb().get_input_tensor_by_name(request, name))
    if array.shape[0] != 1:
        raise ValueError(f"send one row per request, got {array.shape[0]} in {name}")
    return np.array(array[0])  # a copy: the input's memory is Triton's


def _tensor(name: str, array: np.ndarray) -> Any:
    import torch  # in .venv with Voxline's CPU engines; see the top of the file

    return _pb().Tensor.from_dlpack(name, torch.from_numpy(np.array(array, order="C")))
