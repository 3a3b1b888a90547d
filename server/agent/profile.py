"""Agent profiles: one folder per agent under profiles/, holding profile.yaml and the
files its tools need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ProfileError(ValueError):
    """A profile is missing or invalid; the message names it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolConfig(_Strict):
    name: str
    description: str
    # JSON schema of the arguments object.
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    # "FILE.py:function", FILE relative to the profile folder. The function takes the
    # validated arguments as keyword arguments plus `profile_dir`, and returns a dict;
    # a "say" key in it is a spoken summary of the result.
    handler: str
    timeout_s: float = Field(5.0, gt=0)
    # Arguments the caller must have said (digits compared after normalisation): a small
    # model's invented values are refused instead of being looked up.
    grounded_arguments: list[str] = []
    # Result keys whose values the spoken answer must contain; when the LLM's answer
    # leaves one out, the result's "say" text is spoken instead.
    must_mention: list[str] = []
    # Speak the result's "say" text as the answer, without an LLM pass: exact and fast,
    # the right choice for a small model (the LLM still picks the tool and arguments).
    speak_result: bool = False


class LLMSettings(_Strict):
    max_tokens: int = Field(80, ge=8, le=1024)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tool_rounds: int = Field(1, ge=0, le=5)
    # A phone answer is short: generation stops after this many sentences.
    max_sentences: int = Field(2, ge=1, le=20)
    # Past turns kept in the prompt (user + agent messages).
    history_messages: int = Field(8, ge=0, le=100)


class FallbackPhrases(_Strict):
    llm_error: str = "Sorry, I'm having trouble right now. Could you say that again?"
    tool_error: str = "Sorry, I couldn't look that up right now."
    not_understood: str = "Sorry, I didn't catch that. Could you say it again?"


class TransferSettings(_Strict):
    # Where the gateway should send the call (queue name, SIP URI, number).
    target: str
    # The key that asks for a human.
    dtmf: str = Field("0", pattern=r"^[0-9*#A-D]$")
    phrase: str = "Let me transfer you to a colleague. Please hold."


class AgentProfile(_Strict):
    name: str
    description: str = ""
    language: str = "en"
    greeting: str
    instructions: str
    tools: list[ToolConfig] = []
    llm: LLMSettings = LLMSettings()
    fallback: FallbackPhrases = FallbackPhrases()
    # Transfer to a human on a key press (None: no transfer).
    transfer: TransferSettings | None = None
    # Where this profile was read from (set when loading).
    directory: Path = Path(".")


def load_profile(profiles_dir: Path, name: str) -> AgentProfile:
    folder = Path(profiles_dir) / name
    path = folder / "profile.yaml"
    if not name.replace("_", "").replace("-", "").isalnum() or not path.is_file():
        raise ProfileError(
            f"unknown agent profile '{name}' "
            f"(available: {', '.join(list_profiles(profiles_dir)) or 'none'})"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return AgentProfile.model_validate({**data, "directory": folder})
    except (ValidationError, yaml.YAMLError) as exc:
        raise ProfileError(f"agent profile '{name}' is invalid: {exc}") from exc


def list_profiles(profiles_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in Path(profiles_dir).glob("*/profile.yaml"))
