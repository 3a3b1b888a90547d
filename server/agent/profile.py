"""Agent profiles: one folder per agent under profiles/, holding profile.yaml and the
files its tools need."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ProfileError(ValueError):
    """A profile is missing or invalid; the message names it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpTool(_Strict):
    """A webhook: the validated arguments go as a JSON body (POST, PUT, PATCH) or as
    query parameters (GET, DELETE); the JSON answer is the result."""

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    # Header name -> environment variable holding its value: secrets never sit in files.
    # They are sent only over https (or to a host in the profile's http_plain_hosts).
    headers_from_env: dict[str, str] = {}
    # Further tries after a connection error or a 5xx answer, within the tool's timeout.
    retries: int = Field(1, ge=0, le=5)
    # A larger answer fails the tool (read as it streams, stopped at the cap): a broken
    # or hostile endpoint cannot fill the server's memory or the prompt.
    max_response_bytes: int = Field(1 << 20, ge=1, le=64 << 20)


class ToolConfig(_Strict):
    name: str
    description: str = ""
    # JSON schema of the arguments object.
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    # Exactly one of the four below says what runs the tool.
    # "FILE.py:function", FILE relative to the profile folder. The function takes the
    # validated arguments as keyword arguments plus `profile_dir`, and returns a dict;
    # a "say" key in it is a spoken summary of the result.
    handler: str | None = None
    # A Python callable registered by an installed package in the `voxline.tools`
    # entry-point group (called like a handler).
    entry_point: str | None = None
    http: HttpTool | None = None
    # transfer_to_human or end_call: they reach the gateway as TransferRequest or
    # HangupRequest once the agent's last words have been heard.
    builtin: Literal["transfer_to_human", "end_call"] | None = None
    timeout_s: float = Field(5.0, gt=0)
    # Offered to the LLM. False: only the router's intents call it (a small model
    # chooses better among fewer tools).
    llm: bool = True
    # Arguments the caller must have said (digits compared after normalisation): a small
    # model's invented values are refused instead of being looked up.
    grounded_arguments: list[str] = []
    # Result keys whose values the spoken answer must contain; when the LLM's answer
    # leaves one out, the result's "say" text is spoken instead.
    must_mention: list[str] = []
    # Speak the result's "say" text as the answer, without an LLM pass: exact and fast,
    # the right choice for a small model (the LLM still picks the tool and arguments).
    speak_result: bool = False
    # May run while the reply is prepared speculatively, before the caller's turn is
    # confirmed (a lookup); False: it waits for the turn to end as prepared (a tool
    # that changes something). Unset: False for HTTP tools other than GET, else True.
    speculate: bool | None = None

    @property
    def may_speculate(self) -> bool:
        if self.speculate is not None:
            return self.speculate
        return self.http is None or self.http.method == "GET"

    @model_validator(mode="after")
    def _one_runner(self) -> ToolConfig:
        runners = [self.handler, self.entry_point, self.http, self.builtin]
        if sum(r is not None for r in runners) != 1:
            raise ValueError(f"tool '{self.name}': set exactly one of handler, entry_point, "
                             "http, builtin")
        return self


class LLMSettings(_Strict):
    # The LLM's folder in models/ ("" = the server's models.llm), e.g. a larger model
    # or a vLLM server for this line only.
    model: str = ""
    max_tokens: int = Field(80, ge=8, le=1024)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tool_rounds: int = Field(1, ge=0, le=5)
    # A phone answer is short: generation stops after this many sentences.
    max_sentences: int = Field(2, ge=1, le=20)
    # Conversation memory: the most recent messages that fit in this many tokens go in
    # the prompt; older ones are dropped, their tool results kept as short notes, so
    # the cost of a turn stays flat however long the call.
    memory_tokens: int = Field(400, ge=50, le=100000)


class FallbackPhrases(_Strict):
    llm_error: str = "Sorry, I'm having trouble right now. Could you say that again?"
    tool_error: str = "Sorry, I couldn't look that up right now."
    not_understood: str = "Sorry, I didn't catch that. Could you say it again?"
    # Said when a tool has not answered after `filler_after_ms`, so the caller never
    # sits in silence (one phrase per wait, in turn).
    filler: list[str] = ["One moment while I check that.", "Just a moment, please."]
    filler_after_ms: int = Field(800, ge=0, le=30000)
    # Said before the agent hangs up (the end_call tool).
    goodbye: str = "Thank you for calling. Goodbye."
    # Said to calls still in progress when the server shuts down.
    shutdown: str = "Sorry, we have to end this call now. Please call us back. Goodbye."
    # Said when a call whose connection broke is taken up again (instead of the greeting).
    resumed: str = "Sorry, we got cut off. I'm still here."

    def fixed(self) -> list[str]:
        """The phrases said when something fails, rendered to audio at load time, so
        they can be said even when the TTS engine fails."""
        return [self.llm_error, self.not_understood, self.goodbye, self.shutdown,
                self.resumed, *self.filler]


class TransferSettings(_Strict):
    # Where the gateway should send the call (queue name, SIP URI, number).
    target: str
    # The key that asks for a human.
    dtmf: str = Field("0", pattern=r"^[0-9*#A-D]$")
    phrase: str = "Let me transfer you to a colleague. Please hold."


class Intent(_Strict):
    name: str
    # Example utterances; a turn whose nearest example (by embedding) is this close
    # takes this intent without the LLM.
    examples: list[str] = Field(min_length=1)
    # Either say this text...
    say: str | None = None
    # ...or call this tool (a builtin ends the call), with arguments taken from the
    # turn: "number" = the one number the caller said that fits the argument's schema;
    # "enum" = the longest of the argument's allowed values the caller said (left out
    # if none); anything else is used as it is.
    tool: str | None = None
    arguments: dict[str, str] = {}

    @model_validator(mode="after")
    def _one_action(self) -> Intent:
        if (self.say is None) == (self.tool is None):
            raise ValueError(f"intent '{self.name}': set exactly one of say, tool")
        return self


class RouterSettings(_Strict):
    # Cosine similarity to the nearest example needed to take an intent without the LLM.
    threshold: float = Field(0.75, gt=0, le=1)
    intents: list[Intent] = []


class KnowledgeSettings(_Strict):
    # Files (txt, md, json; globs allowed), relative to the profile folder.
    sources: list[str] = []
    top_k: int = Field(3, ge=1, le=20)
    # Passages less similar to the question than this are not used.
    min_score: float = Field(0.35, ge=0, le=1)
    chunk_words: int = Field(80, ge=20, le=1000)
    # "extractive": when the best passage scores at least `answer_min_score`, speak its
    # sentence closest to the question, without the LLM (exact; the right choice for a
    # small LLM). "llm": the LLM answers with the passages in its prompt (as it does in
    # extractive mode below that score).
    answer: Literal["extractive", "llm"] = "extractive"
    answer_min_score: float = Field(0.5, ge=0, le=1)

    @field_validator("sources")
    @classmethod
    def _inside_the_folder(cls, sources: list[str]) -> list[str]:
        # Checked again on the files matched (symlinks): knowledge.source_files.
        for pattern in sources:
            if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                raise ValueError(f"knowledge source '{pattern}' must be a glob relative to "
                                 "the profile folder, without '..'")
        return sources


class AgentProfile(_Strict):
    name: str
    description: str = ""
    language: str = "en"
    # Words and names callers of this line say (products, places, jargon): given to
    # Whisper as preceding text so it spells them that way. Keep it short.
    stt_prompt: str = ""
    # The TTS voice: a tts folder in models/ ("" = the server's models.tts).
    voice: str = ""
    greeting: str
    instructions: str
    tools: list[ToolConfig] = []
    llm: LLMSettings = LLMSettings()
    fallback: FallbackPhrases = FallbackPhrases()
    # Transfer to a human on a key press or the transfer_to_human tool (None: no transfer).
    transfer: TransferSettings | None = None
    router: RouterSettings = RouterSettings()
    knowledge: KnowledgeSettings = KnowledgeSettings()
    # Hosts that HTTP tools may call; a tool whose URL names another host is refused
    # without a request being sent.
    http_allowed_hosts: list[str] = []
    # Of those, hosts that may get secret headers (headers_from_env) over plain http,
    # e.g. a loopback test server or a sidecar; every other host needs https for them.
    http_plain_hosts: list[str] = []
    # Record the calls whose gateway says the caller consented (CallStart.record): a
    # stereo WAV beside the call records (docs/operations/recording.md).
    recording: bool = False
    # Where this profile was read from (set when loading).
    directory: Path = Path(".")

    def fixed_phrases(self) -> list[str]:
        """Every text this profile says word for word (greeting, fallbacks, transfer,
        router replies): rendered once at load, then spoken without TTS."""
        texts = [self.greeting, *self.fallback.fixed(), self.fallback.tool_error,
                 *(i.say for i in self.router.intents if i.say)]
        if self.transfer is not None:
            texts.append(self.transfer.phrase)
        return list(dict.fromkeys(texts))


def load_profile(profiles_dirs: list[Path], name: str) -> AgentProfile:
    """The profile `name` from the first folder that has it."""
    folders = [Path(d) / name for d in profiles_dirs]
    path = next((f / "profile.yaml" for f in folders if (f / "profile.yaml").is_file()), None)
    if not name.replace("_", "").replace("-", "").isalnum() or path is None:
        raise ProfileError(
            f"unknown agent profile '{name}' "
            f"(available: {', '.join(list_profiles(profiles_dirs)) or 'none'})"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return AgentProfile.model_validate({**data, "directory": path.parent})
    except (ValidationError, yaml.YAMLError) as exc:
        raise ProfileError(f"agent profile '{name}' is invalid: {exc}") from exc


def list_profiles(profiles_dirs: list[Path]) -> list[str]:
    return sorted({p.parent.name for d in profiles_dirs for p in Path(d).glob("*/profile.yaml")})
