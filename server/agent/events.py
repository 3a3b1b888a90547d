"""What the agent's turn loop yields: pieces to speak, tool results, the end of the
call, and last the turn's outcome."""

from __future__ import annotations

from dataclasses import dataclass

from voxline.agent.tools import ToolResult


@dataclass
class Say:
    """A piece of the reply, ready for TTS."""

    text: str


@dataclass
class ToolEvent:
    result: ToolResult


@dataclass
class TurnOutcome:
    """How the agent answered a turn: the last event of `Agent.respond` (a turn cut
    short by barge-in has none)."""

    route: str = ""  # the intent or knowledge source that answered ("": the LLM)
    failure: str = ""  # "llm_error", "llm_timeout" when the LLM failed the turn
    first_token_ms: int = 0  # from the start of the turn
    last_token_ms: int = 0
    tool_ms: int = 0
    llm_queue_ms: int = 0  # waiting for an LLM slot
    prompt_evaluated: int = 0  # prompt tokens the LLM evaluated, and reused from its KV
    prompt_reused: int = 0


@dataclass
class Control:
    """The agent ends the call: "transfer_to_human" or "end_call", once the caller has
    heard what was said before it."""

    action: str
    reason: str


AgentEvent = Say | ToolEvent | Control | TurnOutcome
