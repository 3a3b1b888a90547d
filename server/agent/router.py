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


@dataclass
class Route:
    intent: Intent
    score: float
    arguments: dict[str, Any]


class Router:
    def __init__(self, cfg: RouterSettings, embedder: EmbeddingEngine,
                 tools: dict[str, ToolConfig]) -> None:
        self.cfg = cfg
        self._tools = tools
        self._labels = [i for i in cfg.intents for _ in i.examples]
        self._vectors = embedder.embed([e for i in cfg.intents for e in i.examples])

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
        for name, source in intent.arguments.items():
            if source != "number":
                args[name] = source
                continue
            prop = self._tools[intent.tool or ""].parameters.get("properties", {}).get(name, {})
            pattern = prop.get("pattern", r"^\d+$")
            found = sorted(n for n in spoken_numbers(text) if re.fullmatch(pattern, n))
            if len(found) != 1:
                return None  # no number, or several: the LLM asks or chooses
            args[name] = found[0]
        return Route(intent, score, args)
