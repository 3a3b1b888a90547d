"""The sections that run the server in production: TLS, tenants, tracing, call records,
costs, shared conversation state and the supervisors' console."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from voxline.config.base import Section


class TLSSection(Section):
    """TLS on the gRPC port (PEM files). Set client_ca_file for mutual TLS: then every
    client must present a certificate signed by that CA."""

    cert_file: Path | None = Field(None, description=(
        "The server's certificate (PEM); null: no TLS. Needs key_file."))
    key_file: Path | None = Field(None, description=(
        "The server's private key (PEM); null: no TLS. Needs cert_file."))
    client_ca_file: Path | None = Field(None, description=(
        "CA certificate (PEM) that client certificates must be signed by (mutual TLS); "
        "null: clients present none. Needs cert_file and key_file."))


class Tenant(Section):
    """A tenant's API key comes from an environment variable or a file, never from the
    config itself; gateways send it as `x-api-key` metadata."""

    name: str = Field(min_length=1, max_length=64, description=(
        "The tenant's name, unique; call records, telephony listeners and accounts name "
        "their tenant by it."))
    api_key_env: str = Field("", description=(
        "Environment variable holding the tenant's API key (at least 16 characters); set "
        "it or api_key_file."))
    api_key_file: Path | None = Field(None, description=(
        "File holding the tenant's API key (at least 16 characters); it wins over "
        "api_key_env when both are set."))
    max_concurrent_calls: int | None = Field(None, ge=1, description=(
        "The tenant's calls beyond this many are refused with a retry hint; null: only "
        "the server's limits.max_concurrent_calls applies."))
    profiles: list[str] = Field([], description=(
        "The agent profiles this tenant's calls may use (\"*\": all). A tenant must list "
        "them: an empty list is refused at start rather than read as \"all\"."))
    role: Literal["tenant", "operator"] = Field("tenant", description=(
        "\"operator\": may also read GetServerInfo and call ReloadModels (server-wide "
        "information and actions no tenant should reach), and use every profile."))
    recording: bool = Field(False, description=(
        "Record this tenant's calls whose gateway says the caller consented "
        "(CallStart.record; see docs/operations/recording.md), whatever their profile "
        "says."))


class AuthSection(Section):
    """Who may place calls: the tenants and their API keys."""

    tenants: list[Tenant] = Field([], description=(
        "The tenants; with none, no API keys are asked for and every profile and operator "
        "RPC is open (loopback and trusted networks)."))


class TracingSection(Section):
    """OpenTelemetry tracing: a trace per call, a span per turn and per stage."""

    otlp_endpoint: str = Field("", description=(
        "OTLP/gRPC collector, e.g. http://localhost:4317 (plain unless it starts with "
        "https://); \"\": tracing off."))
    service_name: str = Field("voxline", description=(
        "The service.name resource attribute of the exported spans."))


class RecordsSection(Section):
    """A record of each call (turns, transcripts, tools, timings, cost) in SQLite."""

    enabled: bool = Field(True, description=(
        "Keep call records; false also turns call recordings off."))
    path: Path = Field(Path.home() / ".local" / "share" / "voxline" / "calls.db",
                       description=(
        "The SQLite database of call records; call recordings go in recordings/ beside "
        "it."))
    retention_days: float = Field(30.0, gt=0, description=(
        "Records older than this many days are deleted, and so are the recordings of "
        "calls that opted in (docs/operations/recording.md), in recordings/ beside "
        "`path`."))
    redact: bool = Field(True, description=(
        "Card numbers, national ids, emails and long digit strings become [REDACTED] in "
        "records, logs and the conversation state written to the store (store.backend)."))


class CostSection(Section):
    """Per-unit prices for the cost estimate in each call record (0: not counted)."""

    currency: str = Field("USD", description="Currency the prices are in, named in the record.")
    per_call_minute: float = Field(0.0, ge=0, description="Price of a minute of call.")
    stt_per_audio_minute: float = Field(0.0, ge=0, description=(
        "Price of a minute of caller audio received (speech-to-text)."))
    tts_per_1k_chars: float = Field(0.0, ge=0, description=(
        "Price of 1000 characters of text spoken by TTS."))
    llm_per_1k_input_tokens: float = Field(0.0, ge=0, description=(
        "Price of 1000 LLM prompt tokens."))
    llm_per_1k_output_tokens: float = Field(0.0, ge=0, description=(
        "Price of 1000 LLM generated tokens."))


class StoreSection(Section):
    """Where conversation state lives between streams: `memory` (this process; a broken
    stream resumes on the same replica) or `redis` (shared by every replica)."""

    backend: Literal["memory", "redis"] = Field("memory", description=(
        "`memory`: this process only; `redis`: shared by every replica."))
    redis_url: str = Field("redis://127.0.0.1:6379/0", description=(
        "URL of the Redis server, used when backend is redis (unless redis_url_env is "
        "set)."))
    redis_url_env: str = Field("VOXLINE_REDIS_URL", description=(
        "An environment variable that, when set, replaces redis_url: a password belongs "
        "in the environment, not in the config file."))
    key_prefix: str = Field("voxline:", description="Prefix of every Redis key the server writes.")
    resume_window_s: float = Field(120.0, gt=0, le=86400, description=(
        "How long, in seconds, after a stream breaks the call can be resumed with its "
        "token."))
    timeout_s: float = Field(2.0, gt=0, le=60, description=(
        "Bounded wait on every store operation, in seconds; a store that fails never fails "
        "a call."))

    def url(self) -> str:
        return os.environ.get(self.redis_url_env or "", "") or self.redis_url


class ConsoleSection(Section):
    """The supervisors' web console (`voxline serve --console-port`): live calls,
    listen-in, whisper, history. Off unless a port is set. Log-in takes a tenant's key
    (its calls only) or an operator's (every call); with no tenants configured the
    server makes an operator key at start and prints a log-in link with it."""

    port: int | None = Field(None, ge=0, le=65535, description=(
        "Port of the console; null: off, 0: any free port (printed at start)."))
    host: str | None = Field(None, description=(
        "Address the console listens on; null: server.host."))
    session_minutes: float = Field(480.0, gt=0, description="A log-in lasts this many minutes.")
    whisper_max_chars: int = Field(500, ge=1, le=10000, description=(
        "Longest whisper (a sentence a supervisor has the agent say as one turn), in "
        "characters."))
    secure_cookie: bool = Field(False, description=(
        "Set only behind a TLS-terminating proxy: the log-in cookie then carries "
        "`Secure`."))
