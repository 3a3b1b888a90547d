"""Retrieval over a profile's documents: plain text, Markdown and JSON are cut into
passages, embedded once and kept in an index file beside the cache, rebuilt only when
a source, the chunking or the embedding model changes. Each turn searches it by
vector; the best passages (and their sources) answer the caller or go in the prompt.

The index is a matrix in memory (exact search). For corpora past a few hundred
thousand passages, put them in a vector database and implement `search` over it: the
agent only needs passages with a source and a score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxline.agent.profile import KnowledgeSettings, ProfileError
from voxline.disk_cache import CACHE_ROOT, write_atomically
from voxline.engines.base import EmbeddingEngine

log = logging.getLogger(__name__)

CACHE_DIR = CACHE_ROOT / "index"
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
_SUFFIXES = (".txt", ".md", ".json")  # what _sections reads (PDF is not)


@dataclass
class Passage:
    text: str
    source: str  # file, and the section inside it
    score: float = 0.0


def _sections(path: Path) -> list[tuple[str, str]]:
    """(section title, text) pieces of one document."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        out: list[tuple[str, str]] = []

        def walk(node: Any, trail: list[str]) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, [*trail, str(k)] if not str(k).isdigit() else trail)
            elif isinstance(node, list):
                for v in node:
                    walk(v, trail)
            elif isinstance(node, str) and len(node.split()) > 2:
                out.append(("/".join(trail[:3]), node))

        walk(json.loads(raw), [])
        return out
    title, sections = "", []
    for block in re.split(r"\n\s*\n", raw):
        block = block.strip()
        if not block:
            continue
        if block.startswith("#"):
            heading, _, rest = block.partition("\n")
            title = heading.lstrip("#").strip()
            block = rest.strip()
        if block:
            sections.append((title, block))
    return sections


def chunk(path: Path, words: int) -> list[Passage]:
    """Passages of at most `words` words, never mixing two sections."""
    passages: list[Passage] = []
    for title, text in _sections(path):
        source = f"{path.name}#{title}" if title else path.name
        sentences = _SENTENCE_BREAK.split(" ".join(text.split()))
        current: list[str] = []
        for sentence in sentences:
            if current and len(" ".join([*current, sentence]).split()) > words:
                passages.append(Passage(" ".join(current), source))
                current = []
            current.append(sentence)
        if current:
            passages.append(Passage(" ".join(current), source))
    # JSON leaves of one section are merged up to the size limit
    merged: list[Passage] = []
    for p in passages:
        last = merged[-1] if merged else None
        if (last and last.source == p.source
                and len(last.text.split()) + len(p.text.split()) <= words):
            last.text = f"{last.text} {p.text}"
        else:
            merged.append(p)
    return merged


def source_files(name: str, folder: Path, patterns: list[str]) -> list[Path]:
    """The knowledge files the globs match, every one inside the profile folder (as tool
    handlers are): a profile must not read, embed and speak files from elsewhere on the
    server. A glob that leaves the folder, or a match that resolves outside it (a
    symlink), fails the profile with ProfileError."""
    root = folder.resolve()
    files: set[Path] = set()
    for pattern in patterns:
        if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise ProfileError(f"profile '{name}': knowledge source '{pattern}' must be a "
                               "glob relative to the profile folder, without '..'")
        for path in folder.glob(pattern):
            if path.suffix not in _SUFFIXES:
                continue
            real = path.resolve()
            if not real.is_relative_to(root):
                raise ProfileError(f"profile '{name}': knowledge file '{path.relative_to(folder)}'"
                                   f" resolves to {real}, outside the profile folder {root}")
            if real.is_file():
                files.add(real)
    return sorted(files)


class KnowledgeBase:
    def __init__(self, name: str, folder: Path, cfg: KnowledgeSettings,
                 embedder: EmbeddingEngine, model_id: str, cache_dir: Path = CACHE_DIR) -> None:
        self.cfg = cfg
        self._embedder = embedder
        files = source_files(name, folder, cfg.sources)
        if cfg.sources and not files:
            raise FileNotFoundError(f"profile '{name}': no knowledge file matches "
                                    f"{cfg.sources} in {folder}")
        digest = hashlib.sha256(f"{model_id}|{cfg.chunk_words}".encode())
        for f in files:
            digest.update(f.name.encode() + hashlib.sha256(f.read_bytes()).digest())
        index = cache_dir / f"{name}-{digest.hexdigest()[:16]}.npz"
        if index.is_file():
            data = np.load(index, allow_pickle=False)
            self.passages = [Passage(t, s) for t, s in zip(data["texts"], data["sources"],
                                                            strict=True)]
            self._vectors = data["vectors"]
            log.info("knowledge for %s: %d passages from the index %s", name,
                     len(self.passages), index)
            return
        self.passages = [p for f in files for p in chunk(f, cfg.chunk_words)]
        self._vectors = embedder.embed([p.text for p in self.passages])
        texts, sources = (np.array([p.text for p in self.passages]),
                          np.array([p.source for p in self.passages]))
        write_atomically(index, lambda f: np.savez(f, texts=texts, sources=sources,
                                                   vectors=self._vectors))
        log.info("knowledge for %s: indexed %d passages from %d files into %s", name,
                 len(self.passages), len(files), index)

    def search(self, vector: np.ndarray) -> list[Passage]:
        """The best passages for a question vector, above the profile's minimum score."""
        if not self.passages:
            return []
        scores = self._vectors @ vector
        best = np.argsort(-scores)[: self.cfg.top_k]
        return [Passage(self.passages[i].text, self.passages[i].source, float(scores[i]))
                for i in best if scores[i] >= self.cfg.min_score]

    def best_sentence(self, passages: list[Passage], vector: np.ndarray) -> str:
        """The sentence of the passages closest to the question: an extractive answer."""
        sentences = [s for p in passages for s in _SENTENCE_BREAK.split(p.text)
                     if len(s.split()) >= 4]
        if not sentences:
            return ""
        scores = self._embedder.embed(sentences) @ vector
        return sentences[int(np.argmax(scores))]
