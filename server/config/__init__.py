"""Server configuration: one YAML file, every field optional, validated by pydantic.

Each field's `description` is its documentation: scripts/docs/config_reference.py renders
the configuration reference from these models."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field

from voxline.config.base import Section
from voxline.config.call import (
    BatchingSection,
    FaultsSection,
    LimitsSection,
    ModelSelection,
    PlaybackSection,
    ServerSection,
    ThreadsSection,
    TurnSection,
)
from voxline.config.operations import (
    AuthSection,
    ConsoleSection,
    CostSection,
    RecordsSection,
    StoreSection,
    Tenant,
    TLSSection,
    TracingSection,
)
from voxline.config.telephony import (
    AudioSocketSection,
    Listener,
    SipAccount,
    SipSection,
    TelephonySection,
    TwilioAccount,
    TwilioSection,
    VonageSection,
)

__all__ = [
    "PROJECT_ROOT",
    "AudioSocketSection",
    "AuthSection",
    "BatchingSection",
    "ConsoleSection",
    "CostSection",
    "FaultsSection",
    "LimitsSection",
    "Listener",
    "ModelSelection",
    "PlaybackSection",
    "RecordsSection",
    "Section",
    "ServerSection",
    "Settings",
    "SipAccount",
    "SipSection",
    "StoreSection",
    "TLSSection",
    "TelephonySection",
    "Tenant",
    "ThreadsSection",
    "TracingSection",
    "TurnSection",
    "TwilioAccount",
    "TwilioSection",
    "VonageSection",
    "load_settings",
    "profile_dirs",
]

# Where models/ and profiles/ live: the checkout (this file is server/config/__init__.py),
# or VOXLINE_HOME for an installed copy.
PROJECT_ROOT = Path(os.environ.get("VOXLINE_HOME") or Path(__file__).resolve().parents[2])


class Settings(Section):
    """The whole configuration: one YAML file, every key optional."""

    server: ServerSection = Field(ServerSection(), description="The gRPC server.")
    models: ModelSelection = Field(ModelSelection(), description=(
        "The model that serves each engine kind."))
    models_dir: Path = Field(PROJECT_ROOT / "models", description=(
        "The model repository: one folder per model, each with a manifest.yaml."))
    profiles_dir: Path = Field(PROJECT_ROOT / "profiles", description=(
        "The agent profiles: one folder per profile, each with a profile.yaml."))
    extra_profiles_dirs: list[Path] = Field([], description=(
        "More folders of profiles, searched after profiles_dir (e.g. a site's own)."))
    default_profile: str = Field("order_status", description=(
        "The agent profile of a call that names none."))
    turn: TurnSection = Field(TurnSection(), description="Turn-taking.")
    batching: BatchingSection = Field(BatchingSection(), description=(
        "Batching of model work across calls."))
    threads: ThreadsSection = Field(ThreadsSection(), description="CPU threads per engine.")
    playback: PlaybackSection = Field(PlaybackSection(), description=(
        "Pacing of the agent's audio."))
    limits: LimitsSection = Field(LimitsSection(), description="Bounds on calls and messages.")
    faults: FaultsSection = Field(FaultsSection(), description=(
        "Engine timeouts and failed turns."))
    tls: TLSSection = Field(TLSSection(), description="TLS on the gRPC port.")
    auth: AuthSection = Field(AuthSection(), description="Tenants and their API keys.")
    tracing: TracingSection = Field(TracingSection(), description="OpenTelemetry tracing.")
    records: RecordsSection = Field(RecordsSection(), description="Call records.")
    costs: CostSection = Field(CostSection(), description="Prices for the cost estimate.")
    store: StoreSection = Field(StoreSection(), description="Conversation state.")
    telephony: TelephonySection = Field(TelephonySection(), description=(
        "Telephony listeners."))
    console: ConsoleSection = Field(ConsoleSection(), description="The supervisors' console.")


def profile_dirs(settings: Settings) -> list[Path]:
    """Every folder of agent profiles, in search order."""
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
