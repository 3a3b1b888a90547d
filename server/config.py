"""Server configuration: one YAML file, every field optional, validated by pydantic."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

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
    # Threads for Python tool handlers (a tool past its timeout keeps its thread until
    # it returns; these threads are the bound on how many can hang).
    tool_threads: int = Field(8, ge=1, le=256)
    # Prometheus metrics over HTTP (`voxline serve --metrics-port`); None: off, 0: any
    # free port (printed at start).
    metrics_port: int | None = Field(None, ge=0, le=65535)
    # Calls in progress get this long to finish after SIGTERM before they are ended
    # with a spoken goodbye.
    drain_grace_s: float = Field(30.0, ge=0)


class ConsoleSection(_Section):
    """The supervisors' web console (`voxline serve --console-port`): live calls,
    listen-in, whisper, history. Off unless a port is set. Log-in takes a tenant's key
    (its calls only) or an operator's (every call); with no tenants configured the
    server makes an operator key at start and prints a log-in link with it."""

    port: int | None = Field(None, ge=0, le=65535)  # 0: any free port (printed)
    host: str | None = None  # None: server.host
    session_minutes: float = Field(480.0, gt=0)  # a log-in lasts this long
    whisper_max_chars: int = Field(500, ge=1, le=10000)
    # Set only behind a TLS-terminating proxy: the cookie then carries `Secure`.
    secure_cookie: bool = False


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
    # Prepare the reply at SPEECH_STOPPED, while the end-of-turn silence runs: used if
    # the turn then ends, cancelled without a trace if the caller goes on.
    speculate: bool = True
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
    # The in-process LLM (llama.cpp) through the LLM scheduler: every call's generation
    # a sequence of one batched context (false: one request at a time, behind a lock).
    # vLLM and other OpenAI-compatible servers batch on their own and are not affected.
    llm_scheduler: bool = True
    # Calls whose KV stays in the context between turns (one sequence slot each); an
    # idle call beyond this gives its slot up and re-reads its history next turn.
    llm_slots: int = Field(16, ge=1, le=250)
    # Slots holding profiles' fixed prefixes (instructions and tool catalogue); more
    # profiles than this share them, least recently used first.
    llm_prefix_slots: int = Field(2, ge=1, le=32)
    # Sequences generating at once; the rest wait for admission (queue wait).
    llm_max_running: int = Field(16, ge=1, le=256)
    # Tokens one decode step carries (llama.cpp n_batch), and of them at most this many
    # from one prompt, so several new turns share a step.
    llm_batch_tokens: int = Field(512, ge=16, le=8192)
    llm_prompt_chunk: int = Field(256, ge=8, le=8192)
    # Tokens each slot's KV holds: the longest prompt plus reply one call may have. The
    # KV cache is (llm_slots + llm_prefix_slots) x this, about 23 KB a token for
    # SmolLM2-135M (18 x 1536 tokens: 640 MB).
    llm_slot_tokens: int = Field(1536, ge=256, le=1 << 20)
    # Grammars kept (one per distinct set of numbers a caller said, per tool).
    llm_grammar_cache: int = Field(256, ge=1, le=100000)


class ThreadsSection(_Section):
    """CPU threads each engine may use, from this one place (a manifest's own thread
    option, if set, wins for its model). Each library defaults to every core, which on a
    small CPU makes them fight; the defaults were measured on a 2-core machine
    (scripts/bench_threads.py, README "Thread budget")."""

    llm: int = Field(2, ge=1, le=256)  # llama.cpp, one token per sequence (decode)
    llm_batch: int = Field(2, ge=1, le=256)  # llama.cpp, prompt chunks
    stt: int = Field(1, ge=1, le=256)  # CTranslate2 (Whisper)
    vad: int = Field(1, ge=1, le=256)  # ONNX Runtime (Silero)
    turn: int = Field(1, ge=1, le=256)  # ONNX Runtime (Smart Turn)
    tts: int = Field(1, ge=1, le=256)  # ONNX Runtime (Piper)
    torch: int = Field(1, ge=1, le=256)  # torch: embeddings, audio kernels (process-wide)


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
    # Largest Converse message (CallInput) accepted; a bigger one ends the call with
    # RESOURCE_EXHAUSTED (frames are a few KB).
    max_message_bytes: int = Field(1 << 20, ge=1024)
    # Largest message on the Riva services: a Riva client sends a whole file in one
    # Recognize request, and Riva's own clients allow 64 MiB on their channels (about
    # 11 minutes of 48 kHz PCM). Bigger ones fail with RESOURCE_EXHAUSTED.
    riva_max_message_bytes: int = Field(64 << 20, ge=1024)
    # Messages of a call waiting to be processed (50 are a second of 20 ms frames):
    # beyond them the server stops reading the stream and flow control holds the
    # gateway back, so a server that falls behind does not pile audio up in memory.
    inbound_queue_messages: int = Field(50, ge=1, le=10000)
    # Events waiting for the gateway to read them; agent audio waits for room beyond.
    outbound_queue_messages: int = Field(100, ge=1, le=10000)
    # Calls beyond this are refused at once with RESOURCE_EXHAUSTED and a retry hint.
    max_concurrent_calls: int = Field(64, ge=1)
    retry_after_s: float = Field(5.0, ge=0)
    # CallStart.metadata (caller data from the gateway, shown to the LLM as data): a
    # call over any bound is refused with INVALID_ARGUMENT, so a gateway cannot fill the
    # prompt (and the KV cache) with it.
    max_metadata_entries: int = Field(16, ge=0, le=1024)
    max_metadata_key_chars: int = Field(64, ge=1, le=1024)
    max_metadata_value_chars: int = Field(256, ge=1, le=65536)
    max_metadata_bytes: int = Field(4096, ge=0, le=1 << 20)  # keys and values, UTF-8
    # Riva Synthesize: the text of one request (SynthesizeOnline: of one stream), so one
    # request cannot hold a TTS worker for minutes; longer texts are split by the client.
    max_synthesize_chars: int = Field(4000, ge=1, le=1 << 20)
    # Riva speech_contexts: the phrases become Whisper's prompt (which it truncates to
    # about 224 tokens anyway), so more only costs work on every utterance.
    max_speech_context_phrases: int = Field(100, ge=0, le=100000)
    max_speech_context_phrase_chars: int = Field(100, ge=1, le=10000)


class FaultsSection(_Section):
    """Bounded waits on every engine, and what the caller hears when one fails."""

    stt_timeout_s: float = Field(10.0, gt=0)
    # A VAD answer later than this counts its windows as silence.
    vad_timeout_s: float = Field(2.0, gt=0)
    # Until the LLM's first token, and between two of its tokens, counted from when the
    # call's request starts to run (after its queue wait)...
    llm_timeout_s: float = Field(15.0, gt=0)
    # ...and the longest a request may wait in the LLM scheduler's queue.
    llm_queue_timeout_s: float = Field(30.0, gt=0)
    # Until TTS's first audio of a sentence, and between two of its chunks.
    tts_timeout_s: float = Field(5.0, gt=0)
    # The caller never waits longer than this in silence after their turn: a short
    # pre-rendered phrase (the profile's filler) fills the gap.
    max_silence_ms: int = Field(3000, ge=500, le=30000)
    # After this many failed turns in a row the call goes to a human (or ends).
    max_failed_turns: int = Field(2, ge=1, le=20)


class TLSSection(_Section):
    """TLS on the gRPC port (PEM files). Set client_ca_file for mutual TLS: then every
    client must present a certificate signed by that CA."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None


class Tenant(_Section):
    """A tenant's API key comes from an environment variable or a file, never from the
    config itself; gateways send it as `x-api-key` metadata."""

    name: str = Field(min_length=1, max_length=64)
    api_key_env: str = ""
    api_key_file: Path | None = None
    max_concurrent_calls: int | None = Field(None, ge=1)
    # The agent profiles this tenant's calls may use ("*": all). A tenant must list
    # them: an empty list is refused at start rather than read as "all".
    profiles: list[str] = []
    # "operator": may also read GetServerInfo and call ReloadModels (server-wide
    # information and actions no tenant should reach), and use every profile.
    role: Literal["tenant", "operator"] = "tenant"
    # Record this tenant's calls whose gateway says the caller consented
    # (CallStart.record; README "Call recording"), whatever their profile says.
    recording: bool = False


class AuthSection(_Section):
    # No tenants: no API keys asked, every profile and operator RPC open (loopback and
    # trusted networks).
    tenants: list[Tenant] = []


class TracingSection(_Section):
    # OTLP/gRPC collector, e.g. http://localhost:4317 ("": tracing off).
    otlp_endpoint: str = ""
    service_name: str = "voxline"


class RecordsSection(_Section):
    """A record of each call (turns, transcripts, tools, timings, cost) in SQLite."""

    enabled: bool = True
    path: Path = Path.home() / ".local" / "share" / "voxline" / "calls.db"
    # ...and so are the recordings of calls that opted in (README "Call recording"), in
    # recordings/ beside `path`.
    retention_days: float = Field(30.0, gt=0)
    # Card numbers, national ids, emails and long digit strings become [REDACTED] in
    # records, logs and the conversation state written to the store (store.backend).
    redact: bool = True


class CostSection(_Section):
    """Per-unit prices for the cost estimate in each call record (0: not counted)."""

    currency: str = "USD"
    per_call_minute: float = Field(0.0, ge=0)
    stt_per_audio_minute: float = Field(0.0, ge=0)
    tts_per_1k_chars: float = Field(0.0, ge=0)
    llm_per_1k_input_tokens: float = Field(0.0, ge=0)
    llm_per_1k_output_tokens: float = Field(0.0, ge=0)


class StoreSection(_Section):
    """Where conversation state lives between streams: `memory` (this process; a broken
    stream resumes on the same replica) or `redis` (shared by every replica)."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # An environment variable that, when set, replaces redis_url: a password belongs
    # in the environment, not in the config file.
    redis_url_env: str = "VOXLINE_REDIS_URL"
    key_prefix: str = "voxline:"
    # How long after a stream breaks the call can be resumed with its token.
    resume_window_s: float = Field(120.0, gt=0, le=86400)
    # Bounded wait on every store operation; a store that fails never fails a call.
    timeout_s: float = Field(2.0, gt=0, le=60)

    def url(self) -> str:
        return os.environ.get(self.redis_url_env or "", "") or self.redis_url


class Listener(_Section):
    """One telephony listener (off while `port` is unset; 0: any free port). Its calls
    count against `tenant` when the protocol's own credentials name none, and run
    `profile` when the call does not pick one ("": default_profile)."""

    port: int | None = Field(None, ge=0, le=65535)
    host: str = ""  # "": server.host
    profile: str = ""
    tenant: str = ""
    # Source addresses allowed to connect (CIDR blocks, e.g. 10.0.0.0/8; empty: any).
    allow: list[str] = []


class SipAccount(_Section):
    """Who may send INVITEs for a tenant: digest credentials, a source allowlist, or
    both (an INVITE must pass every check its account sets)."""

    tenant: str = ""
    username: str = ""
    password_env: str = ""
    password_file: Path | None = None
    allow: list[str] = []


class SipSection(Listener):
    tcp: bool = True  # listen on TCP beside UDP, on the same port
    # RTP ports for the calls' media (even ports; one per call).
    rtp_port_min: int = Field(20000, ge=1024, le=65534)
    rtp_port_max: int = Field(20999, ge=1024, le=65534)
    # The address put in SDP and Contact when the server is behind NAT ("": host).
    public_ip: str = ""
    # The header that names the agent profile when the Request-URI's user part does
    # not (the user part wins when it names a profile).
    profile_header: str = "X-Voxline-Profile"
    # How the agent's transfer reaches the caller's side: a REFER to the target, or a
    # BYE carrying the target in a Reason header for a PBX that transfers on its own.
    transfer: Literal["refer", "bye"] = "refer"
    accounts: list[SipAccount] = []
    # Digest realm in 401 challenges.
    realm: str = "voxline"
    # Caller frames the jitter buffer holds back to put late packets in order (each
    # adds 20 ms before the call hears the caller); a gap it cannot fill in that time
    # is concealed as lost.
    jitter_frames: int = Field(2, ge=0, le=8)
    # Send RTP where the caller's packets come from rather than where its SDP says
    # (callers behind NAT); off, a forged packet cannot redirect a call's audio.
    symmetric_rtp: bool = False


class TwilioAccount(_Section):
    """A Twilio (or Telnyx) account whose streams are checked by X-Twilio-Signature."""

    tenant: str = ""
    auth_token_env: str = ""
    auth_token_file: Path | None = None


class TwilioSection(Listener):
    # The wss:// URL the platform is told to connect to (the signature covers it).
    public_url: str = ""
    accounts: list[TwilioAccount] = []


class AudioSocketSection(Listener):
    # Call UUID prefix -> agent profile (the longest matching prefix wins; else
    # `profile`).
    uuid_profiles: dict[str, str] = {}
    # A connection must send its call UUID (and then its first audio) within this long.
    uuid_timeout_s: float = Field(5.0, gt=0, le=60)
    # AudioSocket carries no per-call parameters: true says the PBX's dialplan has the
    # caller's consent to recording for every call on this port (recorded when the
    # profile or tenant opts in too).
    record: bool = False


class VonageSection(Listener):
    # A connection must send websocket:connected within this long.
    connect_timeout_s: float = Field(5.0, gt=0, le=60)


class TelephonySection(_Section):
    """Calls that come straight from a PBX, SIP trunk or CCaaS platform, each protocol
    on its own port, all served by the same call sessions as gRPC."""

    sip: SipSection = SipSection()
    twilio: TwilioSection = TwilioSection()
    audiosocket: AudioSocketSection = AudioSocketSection()
    vonage: VonageSection = VonageSection()


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
    threads: ThreadsSection = ThreadsSection()
    playback: PlaybackSection = PlaybackSection()
    limits: LimitsSection = LimitsSection()
    faults: FaultsSection = FaultsSection()
    tls: TLSSection = TLSSection()
    auth: AuthSection = AuthSection()
    tracing: TracingSection = TracingSection()
    records: RecordsSection = RecordsSection()
    costs: CostSection = CostSection()
    store: StoreSection = StoreSection()
    telephony: TelephonySection = TelephonySection()
    console: ConsoleSection = ConsoleSection()


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
        for section, keys in (("tls", ("cert_file", "key_file", "client_ca_file")),
                              ("records", ("path",))):
            for key in keys:
                if (data.get(section) or {}).get(key):
                    data[section][key] = base / Path(data[section][key]).expanduser()
        telephony = data.get("telephony") or {}
        secrets = [*((data.get("auth") or {}).get("tenants") or []),
                   *((telephony.get("sip") or {}).get("accounts") or []),
                   *((telephony.get("twilio") or {}).get("accounts") or [])]
        for entry in secrets:  # key and password files, relative to the config file
            for key in ("api_key_file", "password_file", "auth_token_file"):
                if entry.get(key):
                    entry[key] = base / entry[key]
        data["extra_profiles_dirs"] = [base / d for d in data.get("extra_profiles_dirs", [])]
    return Settings.model_validate(data)
