"""What one server process shares between calls: settings, the loaded models, their
worker threads, the agent profiles' toolboxes, metrics, tracing and call records.

A Runtime is one generation of models. A reload builds the next generation, reusing
every model whose manifest did not change; calls keep the generation they started on,
and an old generation's own models are released when its last call ends."""

from __future__ import annotations

import asyncio
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
    ChatMessage,
    EmbeddingEngine,
    Engine,
    LLMEngine,
    STTEngine,
    TTSEngine,
    TurnEngine,
    VADEngine,
)
from voxline.engines.repository import LoadedModel, ModelError, ModelRepository
from voxline.metrics import Metrics
from voxline.phrase_cache import PhraseCache, voice_id
from voxline.record_store import RecordStore
from voxline.scheduling.batch import BatchRunner
from voxline.scheduling.chat import ThreadedLLM
from voxline.scheduling.llm import LLMScheduler
from voxline.scheduling.stt import STTScheduler
from voxline.scheduling.vad import VADScheduler
from voxline.tracing import Tracing

log = logging.getLogger(__name__)


@dataclass
class CallStats:
    active: int = 0
    total: int = 0
    # Replies prepared while the caller paused: used as they were, or cancelled.
    speculations_used: int = 0
    speculations_wasted: int = 0


@dataclass
class Services:
    """Process-wide and shared by every model generation."""

    metrics: Metrics
    tracing: Tracing
    records: RecordStore | None
    executors: dict[str, ThreadPoolExecutor]
    stats: CallStats = field(default_factory=CallStats)

    @classmethod
    def start(cls, settings: Settings) -> Services:
        import torch

        torch.set_num_threads(settings.threads.torch)  # process-wide (embeddings, kernels)
        threads = settings.server.model_threads
        records = None
        if settings.records.enabled:
            records = RecordStore(settings.records.path)
            records.recover()  # calls a dead server on this host left open
        return cls(
            Metrics(), Tracing(settings.tracing), records,
            # Each kind of blocking work has its own bounded pool, so one kind stuck (a
            # tool that hangs past its timeout keeps its thread) never starves another
            # (the embeddings every routed turn needs).
            {kind: ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"voxline-{kind}")
             for kind in ("stt", "vad", "llm", "tts", "embed")}
            | {"tools": ThreadPoolExecutor(max_workers=settings.server.tool_threads,
                                           thread_name_prefix="voxline-tools"),
               # Records are written one at a time, off the event loop; model reloads
               # and profiles loaded after start run one at a time too.
               "records": ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxline-rec"),
               "reload": ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxline-load")},
        )

    def close(self) -> None:
        self.executors["records"].shutdown(wait=True)  # no record is lost at exit
        for ex in self.executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self.tracing.close()


@dataclass
class Runtime:
    settings: Settings
    repository: ModelRepository
    services: Services
    models: dict[str, LoadedModel]
    stt_scheduler: STTScheduler
    vad_scheduler: VADScheduler
    # Semantic end of turn, batched across calls (None: silence-only endpointing).
    turn_model: BatchRunner[np.ndarray, float] | None = None
    generation: int = 1
    active: int = 0  # calls and requests holding this generation (Generations.hold)
    # How calls reach each LLM engine, by engine: the LLM scheduler for an in-process
    # llama.cpp model, its own threads for the others.
    chats: dict[int, tuple[LLMEngine, LLMScheduler | ThreadedLLM]] = field(
        default_factory=dict)
    _agents: dict[str, AgentKit] = field(default_factory=dict)
    # Fixed phrases rendered to audio (see AgentProfile.fixed_phrases).
    phrases: PhraseCache = field(default_factory=PhraseCache)

    @classmethod
    def load(cls, settings: Settings, previous: Runtime | None = None) -> Runtime:
        """Load the selected models (reusing `previous`'s where unchanged) and every
        agent profile."""
        repo = previous.repository if previous else ModelRepository(
            settings.models_dir, settings.threads.model_dump())
        services = previous.services if previous else Services.start(settings)
        sel = settings.models
        models = {
            kind: repo.load(name, kind)  # type: ignore[arg-type]
            for kind, name in (("vad", sel.vad), ("stt", sel.stt), ("llm", sel.llm),
                               ("tts", sel.tts), ("embed", sel.embed))
        }
        ex, b = services.executors, settings.batching
        if previous and previous.stt is models["stt"].engine:
            stt = previous.stt_scheduler
        else:
            stt = STTScheduler(models["stt"].engine, ex["stt"],  # type: ignore[arg-type]
                               b.stt_max_batch, b.stt_max_wait_ms, b.partial_max_wait_ms,
                               b.partial_max_batch)
        if previous and previous.vad is models["vad"].engine:
            vad = previous.vad_scheduler
        else:
            vad = VADScheduler(models["vad"].engine, ex["vad"],  # type: ignore[arg-type]
                               b.vad_max_batch, b.vad_tick_ms)
        for name, scheduler in (("stt", stt), ("vad", vad)):
            scheduler.stats.observe = services.metrics.scheduler_observer(name)
        turn = None
        if sel.turn:
            models["turn"] = repo.load(sel.turn, "turn")
            engine: TurnEngine = models["turn"].engine  # type: ignore[assignment]
            if previous and "turn" in previous.models \
                    and previous.models["turn"].engine is engine:
                turn = previous.turn_model
            else:
                turn = BatchRunner(engine.completion_probs, ex["vad"], b.vad_max_batch,
                                   b.vad_tick_ms)
        rt = cls(settings, repo, services, models, stt, vad, turn,
                 generation=previous.generation + 1 if previous else 1,
                 phrases=previous.phrases if previous else PhraseCache(),
                 chats={k: v for k, v in (previous.chats if previous else {}).items()
                        if any(v[0] is m.engine for m in models.values())})
        for name in list_profiles(profile_dirs(settings)):
            rt.agent(name)  # load and check every profile at start, not on the first call
        return rt

    def reload(self) -> tuple[Runtime | None, list[str]]:
        """The next generation if a manifest of a model in use changed (blocking: run it
        on a thread), and the names of the models loaded anew."""
        stale = self.repository.refresh()
        changed = sorted({m.name for m in self.models.values()} & set(stale))
        if not changed:
            return None, []
        return Runtime.load(self.settings, previous=self), changed

    async def release(self, current: Runtime) -> None:
        """Free what this (old) generation holds and `current` does not share."""
        keep = {id(m.engine) for m in current.models.values()}
        for m in self.models.values():
            if id(m.engine) not in keep:
                keep.add(id(m.engine))  # a model listed twice is closed once
                log.info("releasing %s model %s (instance %s) of generation %d",
                         m.manifest.kind, m.name, m.instance_id, self.generation)
                m.engine.close()
        for mine, theirs in ((self.stt_scheduler, current.stt_scheduler),
                             (self.vad_scheduler, current.vad_scheduler),
                             (self.turn_model, current.turn_model)):
            if mine is not None and mine is not theirs:
                await mine.close()
        for key, (_, chat) in self.chats.items():
            if isinstance(chat, LLMScheduler) and current.chats.get(key, (0, 0))[1] is not chat:
                await chat.close()

    def chat(self, engine: LLMEngine) -> LLMScheduler | ThreadedLLM:
        """How calls reach `engine` (one scheduler per in-process model)."""
        key = id(engine)
        if key not in self.chats:
            b = self.settings.batching
            batched = getattr(engine, "batched", None)
            if batched is not None and b.llm_scheduler:
                context = batched(b.llm_slots + b.llm_prefix_slots, b.llm_slot_tokens,
                                  b.llm_batch_tokens)
                scheduler = LLMScheduler(
                    context, self.executors["llm"], max_running=b.llm_max_running,
                    prompt_chunk=b.llm_prompt_chunk, prefix_slots=b.llm_prefix_slots,
                    grammar_cache=b.llm_grammar_cache)
                scheduler.stats.observe = self.metrics.scheduler_observer("llm")
                self.chats[key] = (engine, scheduler)
            else:
                self.chats[key] = (engine, ThreadedLLM(engine, self.executors["llm"]))
        return self.chats[key][1]

    def llm_schedulers(self) -> list[LLMScheduler]:
        return [c for _, c in self.chats.values() if isinstance(c, LLMScheduler)]

    async def warm(self) -> None:
        """Evaluate every profile's fixed prompt prefix in its LLM scheduler now, so no
        first call pays for it."""
        for kit in self._agents.values():
            if isinstance(kit.chat, LLMScheduler):
                await kit.chat.warm([ChatMessage("system", kit.profile.instructions)],
                                    kit.toolbox.specs("") or None)

    @property
    def executors(self) -> dict[str, ThreadPoolExecutor]:
        # One pool per engine kind, so a long LLM generation never holds up STT or TTS.
        return self.services.executors

    @property
    def metrics(self) -> Metrics:
        return self.services.metrics

    @property
    def stats(self) -> CallStats:
        return self.services.stats

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
            kit = AgentKit(profile, Toolbox(profile, self.executors["tools"]),
                           embedder=self.embedder, executor=self.executors["embed"])
            try:  # a profile's own models are loaded once, like the server's
                kit.llm = self._model(profile.llm.model, "llm")  # type: ignore[assignment]
                kit.tts = self._model(profile.voice, "tts")  # type: ignore[assignment]
            except ModelError as exc:
                raise ProfileError(f"agent profile '{name}': {exc}") from exc
            kit.chat = self.chat(kit.llm or self.llm)
            if profile.router.intents:
                kit.router = Router(profile.router, self.embedder, kit.toolbox.configs)
            if profile.knowledge.sources:
                try:
                    kit.knowledge = KnowledgeBase(
                        name, profile.directory, profile.knowledge, self.embedder,
                        str(self.models["embed"].weights))
                except (OSError, ValueError) as exc:
                    raise ProfileError(f"agent profile '{name}': knowledge: {exc}") from exc
            tts = kit.tts or self.tts
            for text in profile.fixed_phrases():
                kit.rendered[text] = self._render(tts, text)
            self._agents[name] = kit
            log.info("loaded agent profile %s (%d tools, %d intents, %d passages)", name,
                     len(profile.tools), len(profile.router.intents),
                     len(kit.knowledge.passages) if kit.knowledge else 0)
        return self._agents[name]

    async def load_agent(self, name: str) -> AgentKit:
        """`agent`, for a profile first asked for after start: loaded off the event loop
        (its router, knowledge index and phrases take seconds), one at a time."""
        if name in self._agents:
            return self._agents[name]
        return await asyncio.get_running_loop().run_in_executor(
            self.executors["reload"], self.agent, name)

    async def close_tools(self) -> None:
        for kit in self._agents.values():
            await kit.toolbox.aclose()

    def _model(self, name: str, kind: str) -> Engine | None:
        if not name:
            return None
        loaded = self.repository.load(name, kind)  # type: ignore[arg-type]
        if all(m is not loaded for m in self.models.values()):  # listed and counted once
            self.models[f"{kind}:{name}"] = loaded
        return loaded.engine

    def _render(self, tts: TTSEngine, text: str) -> np.ndarray:
        loaded = next(m for m in self.models.values() if m.engine is tts)
        return self.phrases.render(tts, voice_id(loaded.name, loaded.weights,
                                                  loaded.manifest_text), text)

    def call_started(self, transport: str) -> None:
        self.stats.active += 1
        self.stats.total += 1
        self.metrics.active_calls.set(self.stats.active)
        self.metrics.calls_started.labels(transport).inc()
        for m in self.models.values():
            m.calls_served += 1

    def call_ended(self) -> None:
        self.stats.active -= 1
        self.metrics.active_calls.set(self.stats.active)

    def close(self) -> None:
        self.services.close()
        for m in self.models.values():
            m.engine.close()
