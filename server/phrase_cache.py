"""Fixed phrases (greetings, fallbacks, router replies) rendered to audio once per voice
and kept on disk beside the knowledge index, so a restart reads them instead of running
TTS again (a few seconds per profile on a CPU)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from voxline.disk_cache import CACHE_ROOT, write_atomically
from voxline.engines.base import TTSEngine

log = logging.getLogger(__name__)

CACHE_DIR = CACHE_ROOT / "phrases"


def voice_id(name: str, weights: Path, manifest_text: str) -> str:
    """A voice's identity for the cache: its name, its manifest (speed, speaker...) and
    its weights as they are on disk."""
    manifest = hashlib.sha256(manifest_text.encode()).hexdigest()[:16]
    try:
        st = weights.stat()
        return f"{name}|{manifest}|{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{name}|{manifest}|{weights}"


class PhraseCache:
    def __init__(self, cache_dir: Path = CACHE_DIR) -> None:
        self._dir = cache_dir
        self._memory: dict[str, np.ndarray] = {}

    def render(self, tts: TTSEngine, voice: str, text: str) -> np.ndarray:
        """`text` spoken by `tts` (float32 at its rate), from memory, disk, or TTS."""
        key = hashlib.sha256(f"{voice}|{tts.sample_rate}|{text}".encode()).hexdigest()[:32]
        if key in self._memory:
            return self._memory[key]
        path = self._dir / f"{key}.npy"
        try:
            audio = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # not cached yet, or a torn file: render it again
            audio = np.concatenate([np.zeros(0, np.float32), *tts.synthesize(text)]).astype(
                np.float32, copy=False)
            self._store(path, audio)
        self._memory[key] = audio
        return audio

    def _store(self, path: Path, audio: np.ndarray) -> None:
        try:
            write_atomically(path, lambda f: np.save(f, audio, allow_pickle=False))
        except OSError as exc:  # a read-only home still serves, from memory
            log.warning("cannot cache a rendered phrase in %s: %s", self._dir, exc)
