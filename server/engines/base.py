"""One base class per engine kind. Engines are loaded once per process and shared by
every call; per-call state (VAD recurrent state, conversation) lives with the call."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Engine(ABC):  # noqa: B024 - the kinds below add the abstract methods
    kind: str = ""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model (called when a model is unloaded)."""


# ------------------------------------------------------------------------------- VAD


class VADState:
    """Recurrent state of one audio stream."""


class VADEngine(Engine):
    kind = "vad"
    sample_rate: int = 16000
    window: int = 512  # samples per decision

    @abstractmethod
    def new_state(self) -> VADState: ...

    @abstractmethod
    def speech_probs(self, windows: np.ndarray, states: list[VADState]) -> np.ndarray:
        """Speech probability of one window per stream: windows [B, window] float32 ->
        [B]. Updates each stream's state; streams may be batched in one call."""


# ------------------------------------------------------------------------------- STT


@dataclass
class STTResult:
    text: str
    # Mean log-probability of the tokens, when the engine gives one.
    avg_logprob: float | None = None


class STTEngine(Engine):
    kind = "stt"
    sample_rate: int = 16000

    @abstractmethod
    def transcribe(self, audio: np.ndarray, prompt: str = "") -> STTResult:
        """Transcribe one utterance: float32 mono at 16 kHz. `prompt`: words the caller
        is likely to say (names, products), to bias the spelling; "" for none."""

    def batch_key(self, samples: int) -> int:
        """Utterances with equal keys (and prompts) can share one transcribe_batch."""
        return 0

    def transcribe_batch(self, audios: list[np.ndarray], prompt: str = "") -> list[STTResult]:
        """Transcribe several utterances of one batch_key at once. An engine that can
        batch overrides this; its results must equal transcribe() one at a time."""
        return [self.transcribe(a, prompt) for a in audios]


# ------------------------------------------------------------------------------- LLM


@dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass
class ChatMessage:
    role: str  # system, user, assistant, tool
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None


@dataclass
class LLMChunk:
    """One streamed piece of a completion: text, or a complete tool call."""

    text: str = ""
    tool_name: str | None = None
    tool_arguments: str | None = None  # JSON text as the model produced it
    # Tokens this chunk accounts for (usage metrics and cost); a chunk may carry only
    # these, e.g. the prompt's count before the first token.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of the prompt: tokens evaluated for this request, and tokens whose KV was reused.
    prompt_evaluated: int = 0
    prompt_reused: int = 0
    # Set on the chunk that says the request was admitted: how long it queued (ms).
    queue_ms: float | None = None


class LLMEngine(Engine):
    kind = "llm"

    @abstractmethod
    def stream_chat(
        self,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None = None,
        tool_choice: str = "auto",
        max_tokens: int = 128,
        temperature: float = 0.0,
        *,
        affinity: str = "",
    ) -> Iterator[LLMChunk]:
        """Stream a chat completion. tool_choice: "auto", "none" or a tool name (that
        tool must be called). affinity: a key that keeps one conversation on one replica;
        engines with one backend ignore it. Blocking; run it on a worker thread."""


# ----------------------------------------------------------------------- end of turn


class TurnEngine(Engine):
    kind = "turn"

    @abstractmethod
    def completion_probs(self, audios: list[np.ndarray]) -> np.ndarray:
        """For each utterance so far (16 kHz float32), the probability that the speaker
        has finished their turn. One batched run for many calls."""


# ------------------------------------------------------------------------ embeddings


class EmbeddingEngine(Engine):
    kind = "embed"
    dim: int = 0

    @abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), dim] float32 vectors of unit length (cosine = dot product)."""


# ------------------------------------------------------------------------------- TTS


class TTSEngine(Engine):
    kind = "tts"
    sample_rate: int = 22050

    @abstractmethod
    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Stream float32 mono audio at `sample_rate`, a chunk at a time."""
