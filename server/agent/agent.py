"""The agent's turn loop: caller text in, speakable pieces and tool events out.

Small models need strict orchestration: a bounded number of tool rounds, arguments
checked against the schema and against what the caller actually said, tool failures
answered with the profile's fallback phrase, and the spoken answer checked for the
facts the tool returned.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass

from voxline.agent.profile import AgentProfile
from voxline.agent.text import ClauseChunker, collapse_spoken_digits
from voxline.agent.tools import Outcome, Toolbox, ToolResult
from voxline.engines.base import ChatMessage, LLMChunk, LLMEngine
from voxline.workers import iterate_in_thread

log = logging.getLogger(__name__)


@dataclass
class Say:
    """A piece of the reply, ready for TTS."""

    text: str


@dataclass
class ToolEvent:
    result: ToolResult


AgentEvent = Say | ToolEvent


class Agent:
    """One per call: holds the conversation and runs the profile's LLM and tools."""

    def __init__(self, profile: AgentProfile, toolbox: Toolbox, llm: LLMEngine,
                 executor: Executor, metadata: dict[str, str] | None = None) -> None:
        self.profile = profile
        self.toolbox = toolbox
        self.llm = llm
        self.executor = executor
        self.metadata = metadata or {}
        self.history: list[ChatMessage] = []
        self.first_token_ms: float = 0.0
        self.tool_ms: int = 0

    def _system(self) -> ChatMessage:
        text = self.profile.instructions
        if self.metadata:
            # Only caller metadata the gateway chose to send; no secrets belong here.
            info = ", ".join(f"{k}={v}" for k, v in sorted(self.metadata.items()))
            text += f"\nCall information: {info}"
        return ChatMessage("system", text)

    def _messages(self) -> list[ChatMessage]:
        keep = self.profile.llm.history_messages
        recent = self.history[-keep:] if keep else self.history[-1:]
        return [self._system(), *recent]

    def _caller_words(self) -> str:
        return " ".join(m.content for m in self.history if m.role == "user")

    async def _stream(self, tool_choice: str) -> AsyncIterator[LLMChunk]:
        cfg = self.profile.llm
        tools = self.toolbox.specs(self._caller_words()) if tool_choice != "none" else None
        if not tools:
            tool_choice = "none"
        messages = self._messages()
        async for chunk in iterate_in_thread(
            lambda: self.llm.stream_chat(
                messages, tools, tool_choice, cfg.max_tokens, cfg.temperature
            ),
            self.executor,
        ):
            yield chunk

    async def respond(self, caller_text: str) -> AsyncIterator[AgentEvent]:
        """The reply to one caller turn."""
        self.history.append(ChatMessage("user", collapse_spoken_digits(caller_text)))
        self.first_token_ms = 0.0
        self.tool_ms = 0
        start = time.perf_counter()
        last_result: ToolResult | None = None
        tool_choice = "auto" if self.toolbox.configs else "none"
        rounds = 0
        try:
            while True:
                if rounds >= self.profile.llm.max_tool_rounds:
                    tool_choice = "none"
                chunker = ClauseChunker()
                answer: list[str] = []
                # Answers that must carry a tool's facts are checked before speaking.
                hold = last_result is not None and bool(
                    self.toolbox.configs[last_result.name].must_mention
                )
                call: LLMChunk | None = None
                # aclosing: leaving the loop early stops the generation at once.
                async with aclosing(self._stream(tool_choice)) as stream:
                    async for chunk in stream:
                        if not self.first_token_ms:
                            self.first_token_ms = (time.perf_counter() - start) * 1000
                        if chunk.tool_name:
                            call = chunk
                            break
                        answer.append(chunk.text)
                        if not hold:
                            for piece in chunker.push(chunk.text):
                                yield Say(piece)
                        if chunker.sentences >= self.profile.llm.max_sentences:
                            chunker.flush()  # the rest of a sentence we will not say
                            break
                if call is None:
                    text = "".join(answer).strip()
                    if hold and last_result is not None:
                        text = self._grounded(text, last_result)
                        if text:
                            yield Say(text)
                    elif tail := chunker.flush():
                        yield Say(tail)
                    if not text:
                        yield Say(self.profile.fallback.not_understood)
                    return
                rounds += 1
                checked = self.toolbox.check(
                    call.tool_name or "", call.tool_arguments or "", self._caller_words()
                )
                if isinstance(checked, str):
                    log.info("tool call %s refused: %s", call.tool_name, checked)
                    yield ToolEvent(ToolResult(call.tool_name or "", {}, Outcome.INVALID_ARGUMENTS,
                                               {"error": checked}, 0))
                    tool_choice = "none"
                    continue
                result = await self.toolbox.run(call.tool_name or "", checked)
                self.tool_ms += result.duration_ms
                yield ToolEvent(result)
                if result.outcome is not Outcome.OK:
                    yield Say(self.profile.fallback.tool_error)
                    return
                self._record_tool(result)
                if self.toolbox.configs[result.name].speak_result and result.result.get("say"):
                    yield Say(str(result.result["say"]))
                    return
                last_result = result
        except Exception:
            log.exception("LLM failed in profile %s", self.profile.name)
            yield Say(self.profile.fallback.llm_error)

    def _record_tool(self, result: ToolResult) -> None:
        args = json.dumps(result.arguments)
        self.history.append(ChatMessage(
            "assistant", tool_calls=[{"name": result.name, "arguments": args}]
        ))
        facts = result.result.get("say") or result.result_json
        self.history.append(ChatMessage(
            "tool", f"{facts}\nReply to the caller with this information.", name=result.name
        ))

    def _grounded(self, answer: str, result: ToolResult) -> str:
        """The LLM's answer if it states every fact it must; else the tool's own words."""
        must = self.toolbox.configs[result.name].must_mention
        missing = [k for k in must if str(result.result.get(k, "")).lower() not in answer.lower()]
        if missing and result.result.get("say"):
            log.info("answer %r left out %s; speaking the tool's summary", answer, missing)
            return str(result.result["say"])
        return answer

    def retract_turn(self) -> None:
        """Forget the last caller turn and what followed it (the caller kept talking)."""
        users = [i for i, m in enumerate(self.history) if m.role == "user"]
        if users:
            del self.history[users[-1]:]

    def commit_reply(self, spoken: str, interrupted: bool) -> None:
        """Record what the caller actually heard of the agent's reply."""
        if spoken:
            self.history.append(ChatMessage("assistant", spoken + (" ..." if interrupted else "")))
