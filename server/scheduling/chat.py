"""How a call's agent reaches an LLM: the request it makes, and for engines that batch
on their own server (vLLM, a fleet), or an in-process engine one call at a time, the
engine's blocking stream on worker threads behind the same async interface as the
LLM scheduler (scheduling/llm.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import aclosing
from dataclasses import dataclass

from voxline.engines import chatml
from voxline.engines.base import ChatMessage, LLMChunk, LLMEngine, ToolSpec
from voxline.workers import iterate_in_thread


@dataclass
class ChatRequest:
    messages: list[ChatMessage]
    tools: list[ToolSpec] | None = None  # the whole catalogue (see chatml.prompt)
    tool_choice: str = "auto"
    max_tokens: int = 128
    temperature: float = 0.0
    conversation: str = ""  # keeps a call's KV between its turns ("": none kept)


class ThreadedLLM:
    """An engine's blocking stream_chat on worker threads, with the scheduler's async
    interface (engines that batch on their own server: vLLM, a fleet; and the in-process
    engine one call at a time)."""

    def __init__(self, engine: LLMEngine, executor: Executor) -> None:
        self.engine = engine
        self._executor = executor

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMChunk]:
        # Their own grammars see only what can be called now.
        tools = chatml.callable_tools(request.tools)
        yield LLMChunk(queue_ms=0.0)  # no queue of ours: the engine's time starts now
        chunks = iterate_in_thread(
            lambda: self.engine.stream_chat(
                request.messages, tools or None, request.tool_choice if tools else "none",
                request.max_tokens, request.temperature, affinity=request.conversation),
            self._executor)
        async with aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    def release(self, conversation: str) -> None:
        """Nothing is kept per call here."""
