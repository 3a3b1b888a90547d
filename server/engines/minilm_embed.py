"""Sentence embeddings through sentence-transformers (all-MiniLM-L6-v2 by default)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from voxline.engines.base import EmbeddingEngine


class SentenceTransformerEmbedding(EmbeddingEngine):
    def __init__(self, model_dir: Path, device: str = "cpu", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never the hub
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self._model = SentenceTransformer(str(model_dir), device=device)
        self._batch = batch_size
        self.dim = int(self._model.get_embedding_dimension() or 0)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._model.encode(texts, batch_size=self._batch,
                                             normalize_embeddings=True, show_progress_bar=False,
                                             convert_to_numpy=True), dtype=np.float32)
