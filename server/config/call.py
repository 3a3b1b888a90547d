"""The sections that shape a call: the gRPC server, the models, turn-taking, batching and
threads of model work, playback, limits and engine faults."""

from __future__ import annotations

from pydantic import Field

from voxline.config.base import Section


class ServerSection(Section):
    """The gRPC server: where it listens, its worker threads, its metrics port and how it
    shuts down."""

    host: str = Field("127.0.0.1", description="Address the gRPC server listens on.")
    port: int = Field(50051, ge=0, le=65535, description=(
        "Port of the gRPC server; 0: any free port (printed at start)."))
    model_threads: int = Field(4, ge=1, le=64, description=(
        "Threads in each pool that runs model work (one pool each for STT, VAD, LLM, TTS "
        "and embeddings); CTranslate2, ONNX Runtime and llama.cpp release the GIL, so "
        "these threads run in parallel."))
    tool_threads: int = Field(8, ge=1, le=256, description=(
        "Threads for Python tool handlers. A tool past its timeout keeps its thread until "
        "it returns, so these threads bound how many tools can hang."))
    metrics_port: int | None = Field(None, ge=0, le=65535, description=(
        "Port of the Prometheus metrics over HTTP (also `voxline serve --metrics-port`); "
        "null: off, 0: any free port (printed at start)."))
    drain_grace_s: float = Field(30.0, ge=0, description=(
        "Seconds that calls in progress get to finish after SIGTERM before they are ended "
        "with a spoken goodbye."))


class ModelSelection(Section):
    """Which folder of the model repository (`models_dir`) serves each engine kind."""

    vad: str = Field("silero-vad", description="Voice activity detection model.")
    stt: str = Field("whisper-tiny-en", description="Speech-to-text model.")
    llm: str = Field("smollm2-135m", description="Language model that writes the agent's replies.")
    tts: str = Field("piper-joe", description="Text-to-speech model (the agent's voice).")
    embed: str = Field("minilm-l6", description=(
        "Embedding model, used for retrieval and by the intent router."))
    turn: str = Field("", description=(
        "Semantic end-of-turn model, e.g. smart-turn-v3; \"\": the turn ends on silence "
        "only."))


class TurnSection(Section):
    """When the caller is speaking and when their turn is over (a call may override the
    end-of-turn silence)."""

    end_of_turn_silence_ms: int = Field(500, ge=200, le=3000, description=(
        "Milliseconds of silence after speech that end the caller's turn (a call may "
        "override it)."))
    min_speech_ms: int = Field(150, ge=32, le=1000, description=(
        "Speech shorter than this many milliseconds is ignored (clicks, coughs); it also "
        "gates barge-in."))
    speech_stop_ms: int = Field(250, ge=64, le=3000, description=(
        "A pause this many milliseconds long inside a turn is reported as SPEECH_STOPPED."))
    speculate: bool = Field(True, description=(
        "Prepare the reply at SPEECH_STOPPED, while the end-of-turn silence runs: it is used "
        "if the turn then ends, and cancelled without a trace if the caller goes on."))
    vad_threshold: float = Field(0.5, gt=0.0, lt=1.0, description=(
        "Speech probability from the VAD at or above which audio counts as speech (once "
        "the caller is talking, 0.15 less still counts)."))
    pre_roll_ms: int = Field(300, ge=0, le=1000, description=(
        "Milliseconds of audio kept before the detected start of speech, so the first "
        "word is not clipped."))
    partial_interval_ms: int = Field(1000, ge=0, le=10000, description=(
        "Milliseconds between interim transcripts while the caller speaks; 0 disables "
        "them."))
    semantic_check_ms: int = Field(200, ge=64, le=3000, description=(
        "Semantic end of turn (when models.turn is set): a pause this many milliseconds "
        "long asks the model whether the caller has finished; if so the turn ends then, if "
        "not it waits semantic_incomplete_ms (a caller mid-thought is not cut off)."))
    semantic_incomplete_ms: int = Field(2000, ge=200, le=10000, description=(
        "Milliseconds of silence that end the turn when the semantic model judged the "
        "caller not finished."))
    semantic_threshold: float = Field(0.5, gt=0.0, lt=1.0, description=(
        "Probability from the semantic end-of-turn model at or above which the caller "
        "counts as finished."))
    max_turn_ms: int = Field(28000, ge=1000, le=30000, description=(
        "A turn longer than this many milliseconds is cut and transcribed (Whisper's "
        "window is 30 s)."))


class BatchingSection(Section):
    """How the schedulers batch every call's model work (batch size 1 = one at a time)."""

    stt_max_batch: int = Field(8, ge=1, le=256, description=(
        "Most utterances (finals first, then partials) in one Whisper run."))
    stt_max_wait_ms: float = Field(0.0, ge=0, le=1000, description=(
        "How long a batch that is not full waits for more work, in milliseconds from its "
        "oldest item. On a CPU waiting buys nothing (an item costs the same in a batch); "
        "work that queues while a batch runs still forms the next batch."))
    partial_max_batch: int = Field(1, ge=1, le=256, description=(
        "Most items in a batch that holds partials (finals included). On a CPU an item "
        "costs as much in a batch as alone, so 1 keeps partials from delaying finals; on a "
        "GPU, where a batch costs little more than one item, set it to stt_max_batch."))
    partial_max_wait_ms: float = Field(1000.0, ge=0, le=10000, description=(
        "A partial transcript that waited this many milliseconds is dropped: it would be "
        "stale."))
    vad_max_batch: int = Field(64, ge=1, le=4096, description=(
        "Most streams in one VAD run (the semantic end-of-turn model batches the same "
        "way)."))
    vad_tick_ms: float = Field(8.0, ge=0, le=32, description=(
        "The tick, in milliseconds, that gathers the streams' VAD windows into one run."))
    llm_scheduler: bool = Field(True, description=(
        "Run the in-process LLM (llama.cpp) through the LLM scheduler: every call's "
        "generation is a sequence of one batched context (false: one request at a time, "
        "behind a lock). vLLM and other OpenAI-compatible servers batch on their own and "
        "are not affected."))
    llm_slots: int = Field(16, ge=1, le=250, description=(
        "Calls whose KV stays in the context between turns (one sequence slot each); an "
        "idle call beyond this gives its slot up and re-reads its history next turn."))
    llm_prefix_slots: int = Field(2, ge=1, le=32, description=(
        "Slots holding profiles' fixed prefixes (instructions and tool catalogue); more "
        "profiles than this share them, least recently used first."))
    llm_max_running: int = Field(16, ge=1, le=256, description=(
        "Sequences generating at once; the rest wait for admission (queue wait)."))
    llm_batch_tokens: int = Field(512, ge=16, le=8192, description=(
        "Tokens one decode step carries (llama.cpp n_batch)."))
    llm_prompt_chunk: int = Field(256, ge=8, le=8192, description=(
        "Most tokens of one prompt in a decode step, so several new turns share a step."))
    llm_slot_tokens: int = Field(1536, ge=256, le=1 << 20, description=(
        "Tokens each slot's KV holds: the longest prompt plus reply one call may have. The "
        "KV cache is (llm_slots + llm_prefix_slots) x this, about 23 KB a token for "
        "SmolLM2-135M (18 x 1536 tokens: 640 MB)."))
    llm_grammar_cache: int = Field(256, ge=1, le=100000, description=(
        "Grammars kept (one per distinct set of numbers a caller said, per tool)."))


class ThreadsSection(Section):
    """CPU threads each engine may use, from this one place (a manifest's own thread
    option, if set, wins for its model). Each library defaults to every core, which on a
    small CPU makes them fight; the defaults were measured on a 2-core machine
    (scripts/bench_threads.py, docs/benchmarks/threads.md)."""

    llm: int = Field(2, ge=1, le=256, description=(
        "llama.cpp threads for decoding (one token per sequence)."))
    llm_batch: int = Field(2, ge=1, le=256, description=(
        "llama.cpp threads for prompt chunks."))
    stt: int = Field(1, ge=1, le=256, description="CTranslate2 threads (Whisper).")
    vad: int = Field(1, ge=1, le=256, description="ONNX Runtime threads (Silero VAD).")
    turn: int = Field(1, ge=1, le=256, description=(
        "ONNX Runtime threads (Smart Turn, the semantic end-of-turn model)."))
    tts: int = Field(1, ge=1, le=256, description="ONNX Runtime threads (Piper).")
    torch: int = Field(1, ge=1, le=256, description=(
        "torch threads, for embeddings and audio kernels (process-wide)."))


class PlaybackSection(Section):
    """How the agent's audio is paced out to the caller."""

    lead_ms: int = Field(1000, ge=0, le=60000, description=(
        "Agent audio is sent at most this many milliseconds ahead of the caller's estimated "
        "playback."))
    chunk_ms: int = Field(100, ge=20, le=1000, description=(
        "Length of each AgentAudio chunk, in milliseconds."))


class LimitsSection(Section):
    """Bounds on calls and messages, so that no client can make the server hold
    unbounded time, memory or work."""

    idle_timeout_s: float = Field(20.0, gt=0, description=(
        "No message from the gateway for this many seconds ends the call (IDLE_TIMEOUT); "
        "it is also how long a new stream may take to send its CallStart."))
    max_call_s: float = Field(3600.0, gt=0, description=(
        "Longest call, in seconds: a call that reaches it ends (MAX_DURATION). A Riva "
        "streaming recognition may carry at most this many seconds of audio."))
    max_frame_ms: int = Field(200, ge=10, le=1000, description=(
        "Longest audio frame a caller's stream may send, in milliseconds; a longer one "
        "ends the call with INVALID_ARGUMENT."))
    max_message_bytes: int = Field(1 << 20, ge=1024, description=(
        "Largest Converse message (CallInput) accepted, in bytes; a bigger one ends the "
        "call with RESOURCE_EXHAUSTED (frames are a few KB)."))
    riva_max_message_bytes: int = Field(64 << 20, ge=1024, description=(
        "Largest message on the Riva services, in bytes: a Riva client sends a whole file "
        "in one Recognize request, and Riva's own clients allow 64 MiB on their channels "
        "(about 11 minutes of 48 kHz PCM). Bigger ones fail with RESOURCE_EXHAUSTED."))
    inbound_queue_messages: int = Field(50, ge=1, le=10000, description=(
        "Messages of a call waiting to be processed (50 are a second of 20 ms frames): "
        "beyond them the server stops reading the stream and flow control holds the "
        "gateway back, so a server that falls behind does not pile audio up in memory."))
    outbound_queue_messages: int = Field(100, ge=1, le=10000, description=(
        "Events waiting for the gateway to read them; agent audio waits for room beyond "
        "them."))
    max_concurrent_calls: int = Field(64, ge=1, description=(
        "Calls beyond this many are refused at once with RESOURCE_EXHAUSTED and a retry "
        "hint (retry_after_s)."))
    retry_after_s: float = Field(5.0, ge=0, description=(
        "The retry hint, in seconds, sent with a call refused for lack of room (the "
        "server's or the tenant's limit reached, or the server draining)."))
    max_metadata_entries: int = Field(16, ge=0, le=1024, description=(
        "Most entries in CallStart.metadata (caller data from the gateway, shown to the "
        "LLM as data). A call over any of the metadata bounds is refused with "
        "INVALID_ARGUMENT, so a gateway cannot fill the prompt (and the KV cache) with it."))
    max_metadata_key_chars: int = Field(64, ge=1, le=1024, description=(
        "Longest key in CallStart.metadata, in characters (over it: INVALID_ARGUMENT)."))
    max_metadata_value_chars: int = Field(256, ge=1, le=65536, description=(
        "Longest value in CallStart.metadata, in characters (over it: INVALID_ARGUMENT)."))
    max_metadata_bytes: int = Field(4096, ge=0, le=1 << 20, description=(
        "Most bytes of CallStart.metadata, keys and values together, in UTF-8 (over it: "
        "INVALID_ARGUMENT)."))
    max_synthesize_chars: int = Field(4000, ge=1, le=1 << 20, description=(
        "Longest text of one Riva Synthesize request (SynthesizeOnline: of one stream), "
        "so one request cannot hold a TTS worker for minutes; a longer one is refused with "
        "INVALID_ARGUMENT, and the client splits it into several requests."))
    max_speech_context_phrases: int = Field(100, ge=0, le=100000, description=(
        "Most Riva speech_contexts phrases in a request (more: INVALID_ARGUMENT): the "
        "phrases become Whisper's prompt (which it truncates to about 224 tokens anyway), "
        "so more only costs work on every utterance."))
    max_speech_context_phrase_chars: int = Field(100, ge=1, le=10000, description=(
        "Longest Riva speech_contexts phrase, in characters (over it: INVALID_ARGUMENT)."))


class FaultsSection(Section):
    """Bounded waits on every engine, and what the caller hears when one fails."""

    stt_timeout_s: float = Field(10.0, gt=0, description=(
        "Longest wait, in seconds, for the transcript of a caller's turn (and for a Riva "
        "recognition result)."))
    vad_timeout_s: float = Field(2.0, gt=0, description=(
        "A VAD answer later than this many seconds counts its windows as silence."))
    llm_timeout_s: float = Field(15.0, gt=0, description=(
        "Longest wait, in seconds, for the LLM's first token and between two of its "
        "tokens, counted from when the call's request starts to run (after its queue "
        "wait, which llm_queue_timeout_s bounds)."))
    llm_queue_timeout_s: float = Field(30.0, gt=0, description=(
        "Longest a request may wait in the LLM scheduler's queue, in seconds."))
    tts_timeout_s: float = Field(5.0, gt=0, description=(
        "Longest wait, in seconds, for TTS's first audio of a sentence and between two of "
        "its chunks."))
    max_silence_ms: int = Field(3000, ge=500, le=30000, description=(
        "The caller never waits longer than this many milliseconds in silence after their "
        "turn: a short pre-rendered phrase (the profile's filler) fills the gap."))
    max_failed_turns: int = Field(2, ge=1, le=20, description=(
        "After this many failed turns in a row the call goes to a human (or ends)."))
