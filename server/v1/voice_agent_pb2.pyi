from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_MULAW: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_ALAW: _ClassVar[AudioEncoding]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM16: AudioEncoding
AUDIO_ENCODING_MULAW: AudioEncoding
AUDIO_ENCODING_ALAW: AudioEncoding

class AudioFormat(_message.Message):
    __slots__ = ("encoding", "sample_rate_hz")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    encoding: AudioEncoding
    sample_rate_hz: int
    def __init__(self, encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class CallStart(_message.Message):
    __slots__ = ("call_id", "audio_format", "agent_profile", "metadata", "end_of_turn_silence_ms", "resume_token", "record")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FORMAT_FIELD_NUMBER: _ClassVar[int]
    AGENT_PROFILE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    audio_format: AudioFormat
    agent_profile: str
    metadata: _containers.ScalarMap[str, str]
    end_of_turn_silence_ms: int
    resume_token: str
    record: bool
    def __init__(self, call_id: _Optional[str] = ..., audio_format: _Optional[_Union[AudioFormat, _Mapping]] = ..., agent_profile: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., end_of_turn_silence_ms: _Optional[int] = ..., resume_token: _Optional[str] = ..., record: _Optional[bool] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("audio", "sequence_number")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    sequence_number: int
    def __init__(self, audio: _Optional[bytes] = ..., sequence_number: _Optional[int] = ...) -> None: ...

class DtmfDigit(_message.Message):
    __slots__ = ("digit", "duration_ms")
    DIGIT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    digit: str
    duration_ms: int
    def __init__(self, digit: _Optional[str] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class Hangup(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class PlaybackMark(_message.Message):
    __slots__ = ("turn_id", "played_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    PLAYED_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    played_ms: int
    def __init__(self, turn_id: _Optional[int] = ..., played_ms: _Optional[int] = ...) -> None: ...

class CallInput(_message.Message):
    __slots__ = ("start", "audio", "dtmf", "hangup", "mark")
    START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    DTMF_FIELD_NUMBER: _ClassVar[int]
    HANGUP_FIELD_NUMBER: _ClassVar[int]
    MARK_FIELD_NUMBER: _ClassVar[int]
    start: CallStart
    audio: AudioChunk
    dtmf: DtmfDigit
    hangup: Hangup
    mark: PlaybackMark
    def __init__(self, start: _Optional[_Union[CallStart, _Mapping]] = ..., audio: _Optional[_Union[AudioChunk, _Mapping]] = ..., dtmf: _Optional[_Union[DtmfDigit, _Mapping]] = ..., hangup: _Optional[_Union[Hangup, _Mapping]] = ..., mark: _Optional[_Union[PlaybackMark, _Mapping]] = ...) -> None: ...

class CallAccepted(_message.Message):
    __slots__ = ("call_id", "session_id", "agent_profile", "end_of_turn_silence_ms", "models", "resume_token", "resumed")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_PROFILE_FIELD_NUMBER: _ClassVar[int]
    END_OF_TURN_SILENCE_MS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    session_id: str
    agent_profile: str
    end_of_turn_silence_ms: int
    models: _containers.ScalarMap[str, str]
    resume_token: str
    resumed: bool
    def __init__(self, call_id: _Optional[str] = ..., session_id: _Optional[str] = ..., agent_profile: _Optional[str] = ..., end_of_turn_silence_ms: _Optional[int] = ..., models: _Optional[_Mapping[str, str]] = ..., resume_token: _Optional[str] = ..., resumed: _Optional[bool] = ...) -> None: ...

class SpeechEvent(_message.Message):
    __slots__ = ("kind", "audio_ms")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[SpeechEvent.Kind]
        SPEECH_STARTED: _ClassVar[SpeechEvent.Kind]
        SPEECH_STOPPED: _ClassVar[SpeechEvent.Kind]
    KIND_UNSPECIFIED: SpeechEvent.Kind
    SPEECH_STARTED: SpeechEvent.Kind
    SPEECH_STOPPED: SpeechEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    kind: SpeechEvent.Kind
    audio_ms: int
    def __init__(self, kind: _Optional[_Union[SpeechEvent.Kind, str]] = ..., audio_ms: _Optional[int] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("text", "is_final", "start_ms", "end_ms", "turn_id", "stable_text", "supersedes_turn_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    END_MS_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    STABLE_TEXT_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDES_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    is_final: bool
    start_ms: int
    end_ms: int
    turn_id: int
    stable_text: str
    supersedes_turn_id: int
    def __init__(self, text: _Optional[str] = ..., is_final: _Optional[bool] = ..., start_ms: _Optional[int] = ..., end_ms: _Optional[int] = ..., turn_id: _Optional[int] = ..., stable_text: _Optional[str] = ..., supersedes_turn_id: _Optional[int] = ...) -> None: ...

class AgentText(_message.Message):
    __slots__ = ("text", "turn_id", "is_final")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    text: str
    turn_id: int
    is_final: bool
    def __init__(self, text: _Optional[str] = ..., turn_id: _Optional[int] = ..., is_final: _Optional[bool] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("name", "arguments_json", "outcome", "result_json", "duration_ms", "turn_id")
    class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OUTCOME_UNSPECIFIED: _ClassVar[ToolCall.Outcome]
        OUTCOME_OK: _ClassVar[ToolCall.Outcome]
        OUTCOME_ERROR: _ClassVar[ToolCall.Outcome]
        OUTCOME_TIMEOUT: _ClassVar[ToolCall.Outcome]
        OUTCOME_INVALID_ARGUMENTS: _ClassVar[ToolCall.Outcome]
    OUTCOME_UNSPECIFIED: ToolCall.Outcome
    OUTCOME_OK: ToolCall.Outcome
    OUTCOME_ERROR: ToolCall.Outcome
    OUTCOME_TIMEOUT: ToolCall.Outcome
    OUTCOME_INVALID_ARGUMENTS: ToolCall.Outcome
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    arguments_json: str
    outcome: ToolCall.Outcome
    result_json: str
    duration_ms: int
    turn_id: int
    def __init__(self, name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., outcome: _Optional[_Union[ToolCall.Outcome, str]] = ..., result_json: _Optional[str] = ..., duration_ms: _Optional[int] = ..., turn_id: _Optional[int] = ...) -> None: ...

class AgentAudio(_message.Message):
    __slots__ = ("audio", "turn_id", "chunk_index", "offset_ms")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    audio: bytes
    turn_id: int
    chunk_index: int
    offset_ms: int
    def __init__(self, audio: _Optional[bytes] = ..., turn_id: _Optional[int] = ..., chunk_index: _Optional[int] = ..., offset_ms: _Optional[int] = ...) -> None: ...

class ClearPlayback(_message.Message):
    __slots__ = ("turn_id",)
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    def __init__(self, turn_id: _Optional[int] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("target", "reason")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    target: str
    reason: str
    def __init__(self, target: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class HangupRequest(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class TurnMetrics(_message.Message):
    __slots__ = ("turn_id", "endpoint_ms", "stt_ms", "llm_first_token_ms", "tts_first_chunk_ms", "voice_to_voice_ms", "tool_ms", "interrupted", "audio_ms", "route", "llm_last_token_ms", "llm_queue_ms", "llm_prompt_tokens_evaluated", "llm_prompt_tokens_reused", "speculative", "input_lag_ms")
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_MS_FIELD_NUMBER: _ClassVar[int]
    STT_MS_FIELD_NUMBER: _ClassVar[int]
    LLM_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TTS_FIRST_CHUNK_MS_FIELD_NUMBER: _ClassVar[int]
    VOICE_TO_VOICE_MS_FIELD_NUMBER: _ClassVar[int]
    TOOL_MS_FIELD_NUMBER: _ClassVar[int]
    INTERRUPTED_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    LLM_LAST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    LLM_QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    LLM_PROMPT_TOKENS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    LLM_PROMPT_TOKENS_REUSED_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    INPUT_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    endpoint_ms: int
    stt_ms: int
    llm_first_token_ms: int
    tts_first_chunk_ms: int
    voice_to_voice_ms: int
    tool_ms: int
    interrupted: bool
    audio_ms: int
    route: str
    llm_last_token_ms: int
    llm_queue_ms: int
    llm_prompt_tokens_evaluated: int
    llm_prompt_tokens_reused: int
    speculative: bool
    input_lag_ms: int
    def __init__(self, turn_id: _Optional[int] = ..., endpoint_ms: _Optional[int] = ..., stt_ms: _Optional[int] = ..., llm_first_token_ms: _Optional[int] = ..., tts_first_chunk_ms: _Optional[int] = ..., voice_to_voice_ms: _Optional[int] = ..., tool_ms: _Optional[int] = ..., interrupted: _Optional[bool] = ..., audio_ms: _Optional[int] = ..., route: _Optional[str] = ..., llm_last_token_ms: _Optional[int] = ..., llm_queue_ms: _Optional[int] = ..., llm_prompt_tokens_evaluated: _Optional[int] = ..., llm_prompt_tokens_reused: _Optional[int] = ..., speculative: _Optional[bool] = ..., input_lag_ms: _Optional[int] = ...) -> None: ...

class CallEnded(_message.Message):
    __slots__ = ("reason", "detail", "caller_turns", "agent_turns", "audio_received_ms", "frames_lost", "routed_turns", "llm_turns")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[CallEnded.Reason]
        CALLER_HANGUP: _ClassVar[CallEnded.Reason]
        AGENT_HANGUP: _ClassVar[CallEnded.Reason]
        TRANSFERRED: _ClassVar[CallEnded.Reason]
        IDLE_TIMEOUT: _ClassVar[CallEnded.Reason]
        SERVER_SHUTDOWN: _ClassVar[CallEnded.Reason]
        MAX_DURATION: _ClassVar[CallEnded.Reason]
    REASON_UNSPECIFIED: CallEnded.Reason
    CALLER_HANGUP: CallEnded.Reason
    AGENT_HANGUP: CallEnded.Reason
    TRANSFERRED: CallEnded.Reason
    IDLE_TIMEOUT: CallEnded.Reason
    SERVER_SHUTDOWN: CallEnded.Reason
    MAX_DURATION: CallEnded.Reason
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CALLER_TURNS_FIELD_NUMBER: _ClassVar[int]
    AGENT_TURNS_FIELD_NUMBER: _ClassVar[int]
    AUDIO_RECEIVED_MS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_LOST_FIELD_NUMBER: _ClassVar[int]
    ROUTED_TURNS_FIELD_NUMBER: _ClassVar[int]
    LLM_TURNS_FIELD_NUMBER: _ClassVar[int]
    reason: CallEnded.Reason
    detail: str
    caller_turns: int
    agent_turns: int
    audio_received_ms: int
    frames_lost: int
    routed_turns: int
    llm_turns: int
    def __init__(self, reason: _Optional[_Union[CallEnded.Reason, str]] = ..., detail: _Optional[str] = ..., caller_turns: _Optional[int] = ..., agent_turns: _Optional[int] = ..., audio_received_ms: _Optional[int] = ..., frames_lost: _Optional[int] = ..., routed_turns: _Optional[int] = ..., llm_turns: _Optional[int] = ...) -> None: ...

class CallOutput(_message.Message):
    __slots__ = ("accepted", "speech", "transcript", "agent_text", "tool_call", "audio", "clear_playback", "transfer", "hangup", "error", "turn_metrics", "ended")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    AGENT_TEXT_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    CLEAR_PLAYBACK_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    HANGUP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TURN_METRICS_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    accepted: CallAccepted
    speech: SpeechEvent
    transcript: Transcript
    agent_text: AgentText
    tool_call: ToolCall
    audio: AgentAudio
    clear_playback: ClearPlayback
    transfer: TransferRequest
    hangup: HangupRequest
    error: Error
    turn_metrics: TurnMetrics
    ended: CallEnded
    def __init__(self, accepted: _Optional[_Union[CallAccepted, _Mapping]] = ..., speech: _Optional[_Union[SpeechEvent, _Mapping]] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., agent_text: _Optional[_Union[AgentText, _Mapping]] = ..., tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., audio: _Optional[_Union[AgentAudio, _Mapping]] = ..., clear_playback: _Optional[_Union[ClearPlayback, _Mapping]] = ..., transfer: _Optional[_Union[TransferRequest, _Mapping]] = ..., hangup: _Optional[_Union[HangupRequest, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., turn_metrics: _Optional[_Union[TurnMetrics, _Mapping]] = ..., ended: _Optional[_Union[CallEnded, _Mapping]] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("name", "kind", "engine", "source", "load_count", "instance_id", "load_seconds", "calls_served")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CALLS_SERVED_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    engine: str
    source: str
    load_count: int
    instance_id: str
    load_seconds: float
    calls_served: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., engine: _Optional[str] = ..., source: _Optional[str] = ..., load_count: _Optional[int] = ..., instance_id: _Optional[str] = ..., load_seconds: _Optional[float] = ..., calls_served: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "models", "active_calls", "calls_total", "agent_profiles", "rss_bytes", "schedulers", "draining", "model_generation", "speculations_used", "speculations_wasted", "llm_prompt_tokens_evaluated", "llm_prompt_tokens_reused", "transports")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CALLS_FIELD_NUMBER: _ClassVar[int]
    CALLS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    AGENT_PROFILES_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULERS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    MODEL_GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPECULATIONS_USED_FIELD_NUMBER: _ClassVar[int]
    SPECULATIONS_WASTED_FIELD_NUMBER: _ClassVar[int]
    LLM_PROMPT_TOKENS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    LLM_PROMPT_TOKENS_REUSED_FIELD_NUMBER: _ClassVar[int]
    TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    version: str
    models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    active_calls: int
    calls_total: int
    agent_profiles: _containers.RepeatedScalarFieldContainer[str]
    rss_bytes: int
    schedulers: _containers.RepeatedCompositeFieldContainer[SchedulerStats]
    draining: bool
    model_generation: int
    speculations_used: int
    speculations_wasted: int
    llm_prompt_tokens_evaluated: int
    llm_prompt_tokens_reused: int
    transports: _containers.RepeatedCompositeFieldContainer[TransportListener]
    def __init__(self, version: _Optional[str] = ..., models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ..., active_calls: _Optional[int] = ..., calls_total: _Optional[int] = ..., agent_profiles: _Optional[_Iterable[str]] = ..., rss_bytes: _Optional[int] = ..., schedulers: _Optional[_Iterable[_Union[SchedulerStats, _Mapping]]] = ..., draining: _Optional[bool] = ..., model_generation: _Optional[int] = ..., speculations_used: _Optional[int] = ..., speculations_wasted: _Optional[int] = ..., llm_prompt_tokens_evaluated: _Optional[int] = ..., llm_prompt_tokens_reused: _Optional[int] = ..., transports: _Optional[_Iterable[_Union[TransportListener, _Mapping]]] = ...) -> None: ...

class TransportListener(_message.Message):
    __slots__ = ("name", "port", "active_calls")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CALLS_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    active_calls: int
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ..., active_calls: _Optional[int] = ...) -> None: ...

class ReloadModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadModelsResponse(_message.Message):
    __slots__ = ("reloaded", "model_generation", "calls_on_old_models")
    RELOADED_FIELD_NUMBER: _ClassVar[int]
    MODEL_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CALLS_ON_OLD_MODELS_FIELD_NUMBER: _ClassVar[int]
    reloaded: _containers.RepeatedScalarFieldContainer[str]
    model_generation: int
    calls_on_old_models: int
    def __init__(self, reloaded: _Optional[_Iterable[str]] = ..., model_generation: _Optional[int] = ..., calls_on_old_models: _Optional[int] = ...) -> None: ...

class SchedulerStats(_message.Message):
    __slots__ = ("name", "batches", "items", "batch_sizes", "queue_wait_ms_p50", "queue_wait_ms_p95", "compute_ms_p50", "compute_ms_p95", "dropped")
    class BatchSizesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_P50_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_P95_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_P50_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_P95_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    batches: int
    items: int
    batch_sizes: _containers.ScalarMap[int, int]
    queue_wait_ms_p50: float
    queue_wait_ms_p95: float
    compute_ms_p50: float
    compute_ms_p95: float
    dropped: int
    def __init__(self, name: _Optional[str] = ..., batches: _Optional[int] = ..., items: _Optional[int] = ..., batch_sizes: _Optional[_Mapping[int, int]] = ..., queue_wait_ms_p50: _Optional[float] = ..., queue_wait_ms_p95: _Optional[float] = ..., compute_ms_p50: _Optional[float] = ..., compute_ms_p95: _Optional[float] = ..., dropped: _Optional[int] = ...) -> None: ...
