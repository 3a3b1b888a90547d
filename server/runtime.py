"""What one server process shares between calls: settings, the loaded models, their
worker threads and the agent profiles' toolboxes."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from voxline.agent.agent import AgentKit
from voxline.agent.knowledge import KnowledgeBase
from voxline.agent.profile import ProfileError, list_profiles, load_profile
from voxline.agent.router import Router
from voxline.agent.tools import Toolbox
from voxline.config import Settings, profile_dirs
from voxline.engines.base import (
    EmbeddingEngine,
    Engine,
    LLMEngine,
    STTEngine,
    TTSEngine,
    TurnEngine,
    VADEngine,
)
from voxline.engines.repository import LoadedModel, ModelError, ModelRepository
from voxline.scheduling.batch import BatchRunner
from voxline.scheduling.stt import STTScheduler
from voxline.scheduling.vad import VADScheduler

log = logging.getLogger(__name__)


@dataclass
class CallStats:
    active: int = 0
    total: int = 0


@dataclass
class Runtime:
    settings: Settings
    repository: ModelRepository
    models: dict[str, LoadedModel]
    # One pool per engine kind, so a long LLM generation never holds up STT or TTS.
    executors: dict[str, ThreadPoolExecutor]
    stt_scheduler: STTScheduler
    vad_scheduler: VADScheduler
    # Semantic end of turn, batched across calls (None: silence-only endpointing).
    turn_model: BatchRunner[np.ndarray, float] | None = None
    stats: CallStats = field(default_factory=CallStats)
    _agents: dict[str, AgentKit] = field(default_factory=dict)

    @classmethod
    def load(cls, settings: Settings) -> Runtime:
        repo = ModelRepository(settings.models_dir)
        sel = settings.models
        models = {
            kind: repo.load(name, kind)  # type: ignore[arg-type]
            for kind, name in (("vad", sel.vad), ("stt", sel.stt), ("llm", sel.llm),
                               ("tts", sel.tts), ("embed", sel.embed))
        }
        threads = settings.server.model_threads
        executors = {
            kind: ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"voxline-{kind}")
            for kind in ("stt", "vad", "llm", "tts", "tools")
        }
        b = settings.batching
        stt = STTScheduler(models["stt"].engine, executors["stt"],  # type: ignore[arg-type]
                           b.stt_max_batch, b.stt_max_wait_ms, b.partial_max_wait_ms,
                           b.partial_max_batch)
        vad = VADScheduler(models["vad"].engine, executors["vad"],  # type: ignore[arg-type]
                           b.vad_max_batch, b.vad_tick_ms)
        turn = None
        if sel.turn:
            models["turn"] = repo.load(sel.turn, "turn")
            engine: TurnEngine = models["turn"].engine  # type: ignore[assignment]
            turn = BatchRunner(engine.completion_probs, executors["vad"], b.vad_max_batch,
                               b.vad_tick_ms)
        rt = cls(settings, repo, models, executors, stt, vad, turn)
        for name in list_profiles(profile_dirs(settings)):
            rt.agent(name)  # load and check every profile at start, not on the first call
        return rt

    @property
    def vad(self) -> VADEngine:
        return self.models["vad"].engine  # type: ignore[return-value]

    @property
    def stt(self) -> STTEngine:
        return self.models["stt"].engine  # type: ignore[return-value]

    @property
    def llm(self) -> LLMEngine:
        return self.models["llm"].engine  # type: ignore[return-value]

    @property
    def tts(self) -> TTSEngine:
        return self.models["tts"].engine  # type: ignore[return-value]

    @property
    def embedder(self) -> EmbeddingEngine:
        return self.models["embed"].engine  # type: ignore[return-value]

    def agent(self, name: str) -> AgentKit:
        """The profile with its toolbox, router and knowledge (raises ProfileError if
        unknown or invalid)."""
        if name not in self._agents:
            profile = load_profile(profile_dirs(self.settings), name)
            kit = AgentKit(profile, Toolbox(profile), embedder=self.embedder)
            try:  # a profile's own models are loaded once, like the server's
                kit.llm = self._model(profile.llm.model, "llm")  # type: ignore[assignment]
                kit.tts = self._model(profile.voice, "tts")  # type: ignore[assignment]
            except ModelError as exc:
                raise ProfileError(f"agent profile '{name}': {exc}") from exc
            if profile.router.intents:
                kit.router = Router(profile.router, self.embedder, kit.toolbox.configs)
            if profile.knowledge.sources:
                try:
                    kit.knowledge = KnowledgeBase(
                        name, profile.directory, profile.knowledge, self.embedder,
                        str(self.models["embed"].weights))
                except (OSError, ValueError) as exc:
                    raise ProfileError(f"agent profile '{name}': knowledge: {exc}") from exc
            self._agents[name] = kit
            log.info("loaded agent profile %s (%d tools, %d intents, %d passages)", name,
                     len(profile.tools), len(profile.router.intents),
                     len(kit.knowledge.passages) if kit.knowledge else 0)
        return self._agents[name]

    def _model(self, name: str, kind: str) -> Engine | None:
        if not name:
            return None
        loaded = self.repository.load(name, kind)  # type: ignore[arg-type]
        if all(m is not loaded for m in self.models.values()):  # listed and counted once
            self.models[f"{kind}:{name}"] = loaded
        return loaded.engine

    def call_started(self) -> None:
        self.stats.active += 1
        self.stats.total += 1
        for m in self.models.values():
            m.calls_served += 1

    def call_ended(self) -> None:
        self.stats.active -= 1

    def close(self) -> None:
        for ex in self.executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        for m in self.models.values():
            m.engine.close()
