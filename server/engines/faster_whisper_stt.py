"""Whisper on CTranslate2 (the faster-whisper model format), batched across calls.

Every transcription, alone or in a batch, takes the same path: log-mel features from
the torch kernel, then one CTranslate2 `generate` over the batch. A batch holds
utterances of one encoder window, so each result is the same as running it alone.

Short turns get a shorter encoder window than Whisper's 30 s (10 s by default): the
encoder's cost falls with it. Shorter than about 10 s, Whisper starts to loop, so a
window under `min_window_s` is never used, and an answer that still looks like a loop
(or runs into the token limit) is redone with the full 30 s window.
"""

from __future__ import annotations

import math
import re
import zlib
from pathlib import Path

import ctranslate2
import numpy as np
import torch
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from voxline.engines.base import STTEngine, STTResult
from voxline.kernels.logmel import HOP, LogMel

_FULL_WINDOW_S = 30
# Whisper's own thresholds: text this repetitive is a decoding loop; a segment this
# likely to be silence with so little confidence is noise, not words.
_MAX_COMPRESSION = 2.4
_NO_SPEECH_PROB = 0.6
_NOISE_LOGPROB = -1.0


class FasterWhisperSTT(STTEngine):
    def __init__(
        self,
        model_dir: Path,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 2,
        language: str | None = "en",
        beam_size: int = 1,
        min_window_s: int = 10,
        window_step_s: int = 10,
        tokens_per_s: float = 10.0,
    ) -> None:
        wm = WhisperModel(str(model_dir), device=device, compute_type=compute_type,
                          cpu_threads=cpu_threads)
        self._model: ctranslate2.models.Whisper = wm.model
        self._device = device
        self._mel = LogMel(wm.feature_extractor.mel_filters.shape[0],
                           device="cuda" if device == "cuda" else "cpu")
        self._tokenizer = Tokenizer(wm.hf_tokenizer, wm.model.is_multilingual,
                                    task="transcribe", language=language or "en")
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._beam_size = beam_size
        self._min_window = min(min_window_s, _FULL_WINDOW_S)
        self._step = max(1, window_step_s)
        self._tokens_per_s = tokens_per_s

    def batch_key(self, samples: int) -> int:
        """The encoder window in seconds: the utterance plus at least 1 s of silence."""
        seconds = samples / self.sample_rate + 1.0
        window = math.ceil(seconds / self._step) * self._step
        return int(min(_FULL_WINDOW_S, max(self._min_window, window)))

    def transcribe(self, audio: np.ndarray, prompt: str = "") -> STTResult:
        return self.transcribe_batch([audio], prompt)[0]

    def transcribe_batch(self, audios: list[np.ndarray], prompt: str = "") -> list[STTResult]:
        keys = {self.batch_key(len(a)) for a in audios}
        if len(keys) != 1:
            raise ValueError(f"one batch must share one encoder window, got {sorted(keys)} s")
        tokens = self._prompt_tokens(prompt)
        results = self._generate(audios, keys.pop(), tokens)
        retry = [i for i, (_r, looped) in enumerate(results) if looped]
        for i in retry:  # rare: redo alone with Whisper's full window
            results[i] = self._generate([audios[i]], _FULL_WINDOW_S, tokens)[0]
        return [r for r, _ in results]

    def _prompt_tokens(self, prompt: str) -> list[int]:
        """Whisper's decoder prompt; with vocabulary, as "previous text" before it."""
        if not prompt.strip():
            return self._prompt
        hint = self._tokenizer.encode(" " + prompt.strip())[-120:]
        return [self._tokenizer.sot_prev, *hint, *self._prompt]

    def _max_tokens(self, samples: int, prompt_tokens: int) -> int:
        """Most tokens an utterance may take: its length's worth, within Whisper's 448."""
        return min(448 - prompt_tokens, int(16 + self._tokens_per_s * samples / self.sample_rate))

    def _generate(self, audios: list[np.ndarray], window_s: int, prompt: list[int]
                  ) -> list[tuple[STTResult, bool]]:
        n = window_s * self.sample_rate
        batch = torch.zeros(len(audios), n)
        for i, a in enumerate(audios):
            a = a[:n]
            batch[i, : len(a)] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        feats = self._mel(batch)[..., : n // HOP].contiguous()
        view = ctranslate2.StorageView.from_array(
            feats if self._device == "cuda" else feats.numpy())
        # Each utterance's own token budget; the batch runs to the largest, and an
        # utterance is judged by its own, so its result never depends on its batch.
        limits = [self._max_tokens(len(a), len(prompt)) for a in audios]
        out = self._model.generate(
            view, [prompt] * len(audios), beam_size=self._beam_size,
            max_length=len(prompt) + max(limits), return_scores=True,
            return_no_speech_prob=True,
        )
        results = []
        for r, limit in zip(out, limits, strict=True):
            ids = r.sequences_ids[0]
            text = self._tokenizer.decode(ids).strip()
            logprob = float(r.scores[0]) if r.scores else None
            if (r.no_speech_prob > _NO_SPEECH_PROB and logprob is not None
                    and logprob < _NOISE_LOGPROB):
                text = ""
            looped = (len(ids) >= limit or _compression(text) > _MAX_COMPRESSION
                      or _repeats(text))
            results.append((STTResult(text=text, avg_logprob=logprob), looped))
        return results


# A word four times in a row, or four words that come again within a dozen: a loop too
# short for the compression ratio to see ("10 of clubs 10 of clubs 10 of clubs"; tiny.en
# in a 4 s window gave "Where is my order 550 1012. Where is my order 550 012. Where is
# my order 550 01"). A caller who really repeats himself only costs a full-window pass.
_SAME_WORD = re.compile(r"\b(\w+)(?:\W+\1\b){3}", re.IGNORECASE)
_NGRAM, _NGRAM_SPAN = 4, 12


def _repeats(text: str) -> bool:
    if _SAME_WORD.search(text):
        return True
    words = re.findall(r"\w+", text.lower())
    seen: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - _NGRAM + 1):
        gram = tuple(words[i:i + _NGRAM])
        if i - seen.get(gram, -_NGRAM_SPAN - 1) <= _NGRAM_SPAN:
            return True
        seen[gram] = i
    return False


def _compression(text: str) -> float:
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0
