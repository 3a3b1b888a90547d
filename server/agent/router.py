"""The intent router: simple turns (greetings, a request for a person, goodbyes, an
order number said outright) are answered without the LLM, from the nearest example
utterance by embedding, when it is close enough. Everything else goes to the LLM."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from voxline.agent.profile import Intent, RouterSettings, ToolConfig
from voxline.agent.text import spoken_numbers
from voxline.engines.base import EmbeddingEngine
from voxline.wer import normalize


@dataclass
class Route:
    intent: Intent
    score: float
    arguments: dict[str, Any]


class Router:
    def __init__(self, cfg: RouterSettings, embedder: EmbeddingEngine,
                 tools: dict[str, ToolConfig], vectors: np.ndarray | None = None) -> None:
        """`vectors`: the examples' embeddings when already computed (in order)."""
        self.cfg = cfg
        self._tools = tools
        self._labels = [i for i in cfg.intents for _ in i.examples]
        examples = [e for i in cfg.intents for e in i.examples]
        self._vectors = vectors if vectors is not None else embedder.embed(examples)

    def nearest(self, vector: np.ndarray) -> tuple[Intent | None, float]:
        if not self._labels:
            return None, 0.0
        scores = self._vectors @ vector
        best = int(np.argmax(scores))
        return self._labels[best], float(scores[best])

    def route(self, text: str, vector: np.ndarray) -> Route | None:
        """The intent to take without the LLM, or None."""
        intent, score = self.nearest(vector)
        if intent is None or score < self.cfg.threshold:
            return None
        args: dict[str, Any] = {}
        props = self._tools[intent.tool].parameters.get("properties", {}) if intent.tool else {}
        enums = {}
        for name, source in intent.arguments.items():
            prop = props.get(name, {})
            if source == "number":
                pattern = prop.get("pattern", r"^\d+$")
                found = sorted(n for n in spoken_numbers(text) if re.fullmatch(pattern, n))
                if len(found) != 1:
                    return None  # no number, or several: the LLM asks or chooses
                args[name] = found[0]
            elif source == "enum":
                enums[name] = prop.get("enum", [])
            else:
                args[name] = source
        args.update(_enums_in(text, enums))  # an argument not said is left out
        return Route(intent, score, args)


def _enums_in(text: str, enums: dict[str, list[str]]) -> dict[str, str]:
    """For each argument, the allowed value the caller said. Words are compared after
    normalisation (case, punctuation, number words, a plural or past "-s"/"-d" ending:
    "ice mocha" is an "iced mocha"); longer phrases are taken first
    and a stretch of words serves one argument only, so "a medium roast" gives the
    roast, not also the size "medium", and "a lot of soy milk" beats "soy milk"."""
    words = [_stem(w) for w in normalize(text).split()]
    found = []
    for name, values in enums.items():
        for value in values:
            v = [_stem(w) for w in normalize(value).split()]
            for i in range(len(words) - len(v) + 1):
                if v and words[i:i + len(v)] == v:
                    found.append((len(v), name, value, i, i + len(v)))
    taken: set[int] = set()
    out: dict[str, str] = {}
    for _n, name, value, start, end in sorted(found, key=lambda f: (-f[0], f[3])):
        if name not in out and not taken.intersection(range(start, end)):
            out[name] = value
            taken.update(range(start, end))
    return out


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word[-1] in "sd" and word[-2] != word[-1] else word
