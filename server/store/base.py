"""The store interface and the state it keeps for a call."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voxline.config import StoreSection


class StoreError(Exception):
    """The store could not be reached or answered in time."""


@dataclass
class CallState:
    """What a replica needs to take a call up where another left it."""

    call_id: str
    tenant: str
    profile: str
    metadata: dict[str, str]
    end_of_turn_ms: int
    started_at: float  # unix seconds, of the first stream
    sessions: list[str] = field(default_factory=list)  # every stream's session id, in order
    caller_turns: int = 0
    agent_turns: int = 0
    routed_turns: int = 0
    llm_turns: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # the agent's ChatMessages
    turns: list[dict[str, Any]] = field(default_factory=list)  # the record's TurnRecords

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> CallState:
        return cls(**json.loads(text))


def token_key(prefix: str, token: str) -> str:
    """The store key of a resume token: its hash, so the store never holds a usable
    token (a dump of Redis cannot resume anybody's call)."""
    return prefix + "call:" + hashlib.sha256(token.encode()).hexdigest()


class ConversationStore(ABC):
    """Every operation names the session that owns the call: a stream that was taken
    over by a resume on another replica can no longer write the call's state."""

    @abstractmethod
    async def save(self, token: str, owner: str, state: CallState, ttl_s: float) -> bool:
        """Write the state if `owner` owns the call (or nobody does yet); False if another
        session has taken it over."""

    @abstractmethod
    async def claim(self, token: str, owner: str, ttl_s: float) -> CallState | None:
        """Take the call over for `owner` and return its state; None if unknown or
        expired."""

    @abstractmethod
    async def peek(self, token: str) -> CallState | None:
        """The state without taking the call over."""

    @abstractmethod
    async def expire(self, token: str, owner: str, ttl_s: float) -> None:
        """The owner's stream broke: keep the state `ttl_s` more for a resume."""

    @abstractmethod
    async def delete(self, token: str, owner: str) -> None:
        """The call is over: forget it (if `owner` still owns it)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def open_store(cfg: StoreSection) -> ConversationStore:
    if cfg.backend == "redis":
        from voxline.store.redis_store import RedisStore

        return RedisStore(cfg.url(), cfg.key_prefix, cfg.timeout_s)
    from voxline.store.memory import MemoryStore

    return MemoryStore()
