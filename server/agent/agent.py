"""The agent's turn loop: caller text in, speakable pieces and tool events out.

Small models need strict orchestration: a bounded number of tool rounds, arguments
checked against the schema and against what the caller actually said, tool failures
answered with the profile's fallback phrase, and the spoken answer checked for the
facts the tool returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from voxline.agent.events import AgentEvent, Control, Say, ToolEvent, TurnOutcome
from voxline.agent.knowledge import KnowledgeBase, Passage
from voxline.agent.profile import AgentProfile
from voxline.agent.router import Route, Router
from voxline.agent.text import ClauseChunker, collapse_spoken_digits
from voxline.agent.tools import Outcome, Toolbox, ToolResult
from voxline.engines.base import ChatMessage, EmbeddingEngine, LLMChunk, LLMEngine, TTSEngine
from voxline.scheduling.chat import ChatRequest
from voxline.workers import timed

log = logging.getLogger(__name__)

__all__ = ["Agent", "AgentEvent", "AgentKit", "Control", "Say", "ToolEvent", "TurnOutcome"]



_NOTES = 5  # tool results kept as notes once their turns leave the memory window


class Chat(Protocol):
    """How the agent reaches its LLM: the LLM scheduler, or an engine on threads
    (scheduling/llm.py)."""

    def stream(self, request: ChatRequest) -> AsyncIterator[LLMChunk]: ...

    def release(self, conversation: str) -> None: ...


def _tokens(m: ChatMessage) -> int:
    """A rough token count (4 characters a token): a budget, not a bill."""
    return 4 + (len(m.content) + sum(len(json.dumps(c)) for c in m.tool_calls)) // 4


@dataclass
class AgentKit:
    """What every call of one profile shares: its tools, router and knowledge."""

    profile: AgentProfile
    toolbox: Toolbox
    llm: LLMEngine | None = None  # the profile's own LLM and voice; None: the server's
    chat: Chat | None = None  # how calls reach the LLM (set by the runtime)
    tts: TTSEngine | None = None
    embedder: EmbeddingEngine | None = None
    router: Router | None = None
    knowledge: KnowledgeBase | None = None
    # The profile's fixed phrases as audio at the TTS rate, said when TTS fails.
    rendered: dict[str, np.ndarray] = field(default_factory=dict)
    # Where embeddings and extractive answers run (None: the default pool).
    executor: Executor | None = None


class Agent:
    """One per call: holds the conversation and runs the profile's LLM and tools."""

    def __init__(self, kit: AgentKit, chat: Chat,
                 metadata: dict[str, str] | None = None, llm_timeout_s: float = 15.0,
                 affinity: str = "", llm_queue_timeout_s: float = 30.0) -> None:
        self.kit = kit
        self.profile = kit.profile
        self.toolbox = kit.toolbox
        self.chat = chat
        self.metadata = metadata or {}
        self.llm_timeout_s = llm_timeout_s
        self.llm_queue_timeout_s = llm_queue_timeout_s
        # Keeps the call's LLM requests on one replica, and its KV in the scheduler.
        self.affinity = affinity
        self.history: list[ChatMessage] = []
        self._start = 0  # where the history in the prompt begins (see _messages)
        self.routed_turns = 0
        self.llm_turns = 0
        self.tokens_in = 0  # LLM tokens over the call, prompt and completion
        self.tokens_out = 0
        # The tools this turn started, and those of a retracted turn, by name and
        # arguments: a turn asked again does not run a tool twice (a POST fires once).
        self._turn_tools: dict[tuple[str, str], asyncio.Future[ToolResult]] = {}
        self._kept: dict[tuple[str, str], asyncio.Future[ToolResult]] = {}
        # Set while the turn is prepared speculatively: a tool that may not run before
        # the turn is confirmed waits for it (session/speculation.py).
        self.hold_side_effects: asyncio.Event | None = None
        self._fillers = 0
        self._passages: list[Passage] = []
        self._vectors: dict[str, np.ndarray] = {}  # per-call cache of turn embeddings

    def _window(self) -> int:
        """Where the history in the prompt begins. Old turns leave in large steps (down
        to half the memory budget at once), so the prompt's opening, and the KV the
        scheduler keeps for it, changes rarely rather than every turn."""
        budget = self.profile.llm.memory_tokens
        last = len(self.history) - 1  # the caller's last words always go
        start = min(self._start, max(last, 0))
        used = sum(_tokens(m) for m in self.history[start:])
        if used > budget:
            while start < last and used > budget // 2:
                used -= _tokens(self.history[start])
                start += 1
        while start < last and self.history[start].role != "user":
            start += 1  # never open on a tool result cut from its call
        self._start = start
        return start

    def _messages(self) -> list[ChatMessage]:
        """The prompt, laid out to stay a prefix from turn to turn: the profile's fixed
        instructions, then what is fixed for the call (its metadata, notes of turns
        that left the window), the history, and last what changes every turn (the
        passages retrieved for this turn)."""
        start = self._window()
        messages = [ChatMessage("system", self.profile.instructions)]
        context = []
        if self.metadata:
            # Only caller metadata the gateway chose to send; no secrets belong here. It
            # is untrusted (callers type or say some of it): delimited, escaped data.
            from voxline.agent.metadata import metadata_block

            context.append(metadata_block(self.metadata))
        notes = [m.content.split("\n")[0] for m in self.history[:start] if m.role == "tool"]
        if notes:
            context.append("Earlier in this call: " + " ".join(notes[-_NOTES:]))
        if context:
            messages.append(ChatMessage("system", "\n".join(context)))
        messages += self.history[start:]
        if self._passages:
            facts = "\n".join(f"[{i + 1}] ({p.source}) {p.text}"
                              for i, p in enumerate(self._passages))
            messages.append(ChatMessage(
                "system", f"Answer from these facts when they answer the caller:\n{facts}"))
        return messages

    def _caller_words(self) -> str:
        return " ".join(m.content for m in self.history if m.role == "user")

    async def _stream(self, tool_choice: str, outcome: TurnOutcome) -> AsyncIterator[LLMChunk]:
        cfg = self.profile.llm
        # The whole catalogue: a tool with no grounded candidate yet stays listed (the
        # prompt's fixed part does not change) and the grammar leaves it out.
        tools = self.toolbox.specs(self._caller_words()) if tool_choice != "none" else None
        request = ChatRequest(self._messages(), tools or None,
                              tool_choice if tools else "none", cfg.max_tokens,
                              cfg.temperature, self.affinity)
        # Until the request is admitted (its first chunk, with the queue wait) it waits
        # in the scheduler's queue, a bound of its own; from then on each token gets
        # llm_timeout_s, so a stalled LLM fails the turn (TimeoutError) instead of
        # leaving the caller in silence.
        chunks = timed(self.chat.stream(request), self.llm_timeout_s,
                       first_timeout_s=self.llm_queue_timeout_s)
        async with aclosing(chunks):
            async for chunk in chunks:
                if chunk.queue_ms is not None:
                    outcome.llm_queue_ms += int(chunk.queue_ms)
                self.tokens_in += chunk.prompt_tokens
                self.tokens_out += chunk.completion_tokens
                outcome.prompt_evaluated += chunk.prompt_evaluated
                outcome.prompt_reused += chunk.prompt_reused
                if chunk.text or chunk.tool_name:
                    yield chunk

    def close(self) -> None:
        """The call is over: the LLM may forget what it kept for it."""
        self.chat.release(self.affinity)

    async def _embed(self, text: str) -> np.ndarray | None:
        if self.kit.embedder is None or not (self.kit.router or self.kit.knowledge):
            return None
        if text not in self._vectors:
            embedder = self.kit.embedder
            loop = asyncio.get_running_loop()
            self._vectors[text] = (await loop.run_in_executor(
                self.kit.executor, embedder.embed, [text]))[0]
        return self._vectors[text]

    async def respond(self, caller_text: str) -> AsyncIterator[AgentEvent]:
        """The reply to one caller turn: by the router when an intent is clear, from the
        knowledge base when it holds the answer, else by the LLM and its tools; the
        last event is the turn's TurnOutcome."""
        text = collapse_spoken_digits(caller_text)
        self.history.append(ChatMessage("user", text))
        self._turn_tools = {}
        self._passages = []
        outcome = TurnOutcome()
        async for event in self._answer(text, outcome):
            yield event
        yield outcome

    async def _answer(self, text: str, outcome: TurnOutcome) -> AsyncIterator[AgentEvent]:
        start = time.perf_counter()
        try:
            vector = await self._embed(text)
            if vector is not None and self.kit.router is not None:
                route = self.kit.router.route(text, vector)
                if route is not None:
                    self.routed_turns += 1
                    outcome.route = route.intent.name
                    log.info("call %s: turn routed to intent %s (%.2f)", self.affinity,
                             route.intent.name, route.score)
                    async for event in self._routed(route, outcome):
                        yield event
                    return
            kb = self.kit.knowledge
            if vector is not None and kb is not None:
                self._passages = kb.search(vector)
                best = self._passages[0] if self._passages else None
                if (best and kb.cfg.answer == "extractive"
                        and best.score >= kb.cfg.answer_min_score):
                    answer = await asyncio.get_running_loop().run_in_executor(
                        self.kit.executor, kb.best_sentence, self._passages[:1], vector)
                    if answer:
                        self.routed_turns += 1
                        outcome.route = f"knowledge:{best.source}"
                        yield Say(answer)
                        return
            self.llm_turns += 1
            async for event in self._llm_turn(start, outcome):
                yield event
        except TimeoutError:
            log.warning("LLM gave no token in time (queue %.1f s, tokens %.1f s) in "
                        "profile %s", self.llm_queue_timeout_s, self.llm_timeout_s,
                        self.profile.name)
            outcome.failure = "llm_timeout"
            yield Say(self.profile.fallback.llm_error)
        except Exception:
            log.exception("agent turn failed in profile %s", self.profile.name)
            outcome.failure = "llm_error"
            yield Say(self.profile.fallback.llm_error)

    async def _routed(self, route: Route, outcome: TurnOutcome) -> AsyncIterator[AgentEvent]:
        intent = route.intent
        if intent.say is not None:
            yield Say(intent.say)
            return
        assert intent.tool is not None
        checked = self.toolbox.check(intent.tool, json.dumps(route.arguments),
                                     self._caller_words())
        if isinstance(checked, str):
            yield ToolEvent(ToolResult(intent.tool, route.arguments, Outcome.INVALID_ARGUMENTS,
                                       {"error": checked}, 0))
            yield Say(self.profile.fallback.not_understood)
            return
        result: ToolResult | None = None
        async for event in self._tool_step(intent.tool, checked, outcome):
            if isinstance(event, ToolResult):
                result = event
            else:
                yield event
        if result is not None:  # a result to put in words: the LLM does it, no more tools
            async for event in self._llm_turn(time.perf_counter(), outcome, last=result,
                                              rounds=self.profile.llm.max_tool_rounds):
                yield event

    async def _tool_step(self, name: str, args: dict, outcome: TurnOutcome
                         ) -> AsyncIterator[AgentEvent | ToolResult]:
        """Run a tool and say what follows from it. Yields the ToolResult last when the
        answer still has to be put in words. A tool that has not answered after the
        filler delay gets a filler phrase meanwhile, so the caller does not sit in
        silence."""
        hold = self.hold_side_effects
        if hold is not None and not self.toolbox.configs[name].may_speculate:
            await hold.wait()
        key = (name, json.dumps(args, sort_keys=True))
        task = self._kept.pop(key, None) or asyncio.ensure_future(self.toolbox.run(name, args))
        self._turn_tools[key] = task
        fb = self.profile.fallback
        done, _ = await asyncio.wait({task}, timeout=fb.filler_after_ms / 1000)
        if not done and fb.filler:
            yield Say(fb.filler[self._fillers % len(fb.filler)])
            self._fillers += 1
        # Shielded: a turn cut short (barge-in) does not cancel its tool. A handler's
        # thread or a request on the wire would go on regardless; the tool runs to its
        # end (its timeout bounds it), and a turn asked again takes its result
        # (retract_turn) instead of running it twice.
        result = await asyncio.shield(task)
        outcome.tool_ms += result.duration_ms
        yield ToolEvent(result)
        tool = self.toolbox.configs[result.name]
        if result.outcome is not Outcome.OK:
            yield Say(self.profile.fallback.tool_error)
        elif tool.builtin:
            async for event in self.end_call(result.result["action"],
                                             result.result.get("reason", "")):
                yield event
        elif tool.speak_result and result.result.get("say"):
            self._record_tool(result)
            yield Say(str(result.result["say"]))
        else:
            self._record_tool(result)
            yield result

    async def _llm_turn(self, start: float, outcome: TurnOutcome,
                        last: ToolResult | None = None,
                        rounds: int = 0) -> AsyncIterator[AgentEvent]:
        tool_choice = "auto" if self.toolbox.configs else "none"
        while True:
            if rounds >= self.profile.llm.max_tool_rounds:
                tool_choice = "none"
            chunker = ClauseChunker()
            answer: list[str] = []
            # Answers that must carry a tool's facts are checked before speaking.
            hold = last is not None and bool(self.toolbox.configs[last.name].must_mention)
            call: LLMChunk | None = None
            # aclosing: leaving the loop early stops the generation at once.
            async with aclosing(self._stream(tool_choice, outcome)) as stream:
                async for chunk in stream:
                    if not outcome.first_token_ms:
                        outcome.first_token_ms = int((time.perf_counter() - start) * 1000)
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
            outcome.last_token_ms = int((time.perf_counter() - start) * 1000)
            if call is None:
                text = "".join(answer).strip()
                if hold and last is not None:
                    text = self._grounded(text, last)
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
            last = None
            async for event in self._tool_step(call.tool_name or "", checked, outcome):
                if isinstance(event, ToolResult):
                    last = event
                else:
                    yield event
            if last is None:
                return  # the tool step said everything there is to say

    async def end_call(self, action: str, reason: str) -> AsyncIterator[AgentEvent]:
        """The last words, then the control event for the gateway."""
        if action == "transfer_to_human":
            assert self.profile.transfer is not None
            yield Say(self.profile.transfer.phrase)
        else:
            yield Say(self.profile.fallback.goodbye)
        yield Control(action, reason or "the agent ended the call")

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

    def checkpoint(self) -> tuple[int, int, int]:
        """What restore() goes back to."""
        return len(self.history), self.routed_turns, self.llm_turns

    def restore(self, mark: tuple[int, int, int]) -> None:
        """Forget a turn prepared since checkpoint() that did not happen."""
        n, self.routed_turns, self.llm_turns = mark
        del self.history[n:]

    def retract_turn(self) -> None:
        """Forget the last caller turn and what followed it (the caller kept talking);
        keep the tools it started, whose results the turn asked again takes."""
        users = [i for i, m in enumerate(self.history) if m.role == "user"]
        if users:
            del self.history[users[-1]:]
        self._kept = {k: t for k, t in self._turn_tools.items() if not t.cancelled()}
        self._turn_tools = {}

    def commit_reply(self, spoken: str, interrupted: bool) -> None:
        """Record what the caller actually heard of the agent's reply."""
        self._kept = {}
        if spoken:
            self.history.append(ChatMessage("assistant", spoken + (" ..." if interrupted else "")))
