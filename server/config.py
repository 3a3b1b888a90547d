"""Server configuration: one YAML file, every field optional, validated by pydantic."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

# Where models/ and profiles/ live: the checkout, or VOXLINE_HOME for an installed copy.
PROJECT_ROOT = Path(os.environ.get("VOXLINE_HOME") or Path(__file__).resolve().parents[1])


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    # Threads that run model work (CTranslate2, ONNX Runtime and llama.cpp release the GIL).
    model_threads: int = Field(4, ge=1, le=64)


class ModelSelection(_Section):
    """Which folder of the model repository serves each engine kind."""

    vad: str = "silero-vad"
    stt: str = "whisper-tiny-en"
    llm: str = "smollm2-135m"
    tts: str = "piper-joe"
    embed: str = "minilm-l6"  # retrieval and the intent router
    turn: str = ""  # semantic end of turn, e.g. smart-turn-v3 ("": silence only)


class TurnSection(_Section):
    # Silence after speech that ends the caller's turn (a call may override it).
    end_of_turn_silence_ms: int = Field(500, ge=200, le=3000)
    # Speech shorter than this is ignored (clicks, coughs); it also gates barge-in.
    min_speech_ms: int = Field(150, ge=32, le=1000)
    # A pause this long inside a turn is reported as SPEECH_STOPPED.
    speech_stop_ms: int = Field(250, ge=64, le=3000)
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # Audio kept before the detected speech start, so the first word is not clipped.
    pre_roll_ms: int = Field(300, ge=0, le=1000)
    # Interim transcripts while the caller speaks (0 disables them).
    partial_interval_ms: int = Field(1000, ge=0, le=10000)
    # Semantic end of turn (when models.turn is set): a pause this long asks the model
    # whether the caller has finished; if so the turn ends then, if not it waits
    # semantic_incomplete_ms (a caller mid-thought is not cut off).
    semantic_check_ms: int = Field(200, ge=64, le=3000)
    semantic_incomplete_ms: int = Field(2000, ge=200, le=10000)
    semantic_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # A turn longer than this is cut and transcribed (Whisper's window is 30 s).
    max_turn_ms: int = Field(28000, ge=1000, le=30000)


class BatchingSection(_Section):
    """How the schedulers batch every call's model work (batch size 1 = one at a time)."""

    # Most utterances (finals first, then partials) in one Whisper run.
    stt_max_batch: int = Field(8, ge=1, le=256)
    # How long a batch that is not full waits for more work, from its oldest item. On a
    # CPU waiting buys nothing (an item costs the same in a batch); work that queues
    # while a batch runs still forms the next batch.
    stt_max_wait_ms: float = Field(0.0, ge=0, le=1000)
    # Most items in a batch that holds partials (finals included). On a CPU an item costs
    # as much in a batch as alone, so 1 keeps partials from delaying finals; on a GPU,
    # where a batch costs little more than one item, set it to stt_max_batch.
    partial_max_batch: int = Field(1, ge=1, le=256)
    # A partial transcript that waited this long is dropped: it would be stale.
    partial_max_wait_ms: float = Field(1000.0, ge=0, le=10000)
    # Most streams in one VAD run, and the tick that gathers them.
    vad_max_batch: int = Field(64, ge=1, le=4096)
    vad_tick_ms: float = Field(8.0, ge=0, le=32)


class PlaybackSection(_Section):
    # Agent audio is sent at most this far ahead of the caller's estimated playback.
    lead_ms: int = Field(1000, ge=0, le=60000)
    # Size of each AgentAudio chunk.
    chunk_ms: int = Field(100, ge=20, le=1000)


class LimitsSection(_Section):
    # No message from the gateway for this long ends the call (IDLE_TIMEOUT).
    idle_timeout_s: float = Field(20.0, gt=0)
    max_call_s: float = Field(3600.0, gt=0)
    max_frame_ms: int = Field(200, ge=10, le=1000)
    # Largest gRPC message accepted; bigger ones fail with RESOURCE_EXHAUSTED.
    max_message_bytes: int = Field(1 << 20, ge=1024)
    max_concurrent_calls: int = Field(64, ge=1)


class Settings(_Section):
    server: ServerSection = ServerSection()
    models: ModelSelection = ModelSelection()
    models_dir: Path = PROJECT_ROOT / "models"
    profiles_dir: Path = PROJECT_ROOT / "profiles"
    # More folders of profiles, searched after profiles_dir (e.g. a site's own).
    extra_profiles_dirs: list[Path] = []
    default_profile: str = "order_status"
    turn: TurnSection = TurnSection()
    batching: BatchingSection = BatchingSection()
    playback: PlaybackSection = PlaybackSection()
    limits: LimitsSection = LimitsSection()


def profile_dirs(settings: Settings) -> list[Path]:
    return [settings.profiles_dir, *settings.extra_profiles_dirs]


def load_settings(path: Path | None = None) -> Settings:
    """Read a YAML config file (relative paths resolve against the file's folder)."""
    data: dict = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        base = Path(path).resolve().parent
        for key in ("models_dir", "profiles_dir"):
            if key in data:
                data[key] = base / data[key]
        data["extra_profiles_dirs"] = [base / d for d in data.get("extra_profiles_dirs", [])]
    return Settings.model_validate(data)
