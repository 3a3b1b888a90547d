"""llama.cpp in-process (llama-cpp-python), for small GGUF models on the CPU (or a GPU
with the layers offloaded).

Calls normally reach it through the LLM scheduler (scheduling/llm.py), which runs every
call's generation as a sequence of one batched context (`batched()`). `stream_chat` is
the same model one request at a time behind a lock: what it was before the scheduler,
kept for `batching.llm_scheduler: false` and as the benchmarks' baseline.

Tool calls are produced under grammars so a small model cannot emit malformed output:
first a constrained choice between answering and calling one of the declared tools,
then the arguments under a grammar built from the tool's JSON schema. Prose is
streamed token by token with the ChatML template the SmolLM2 family uses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

from llama_cpp import Llama, LlamaGrammar

from voxline.engines.base import ChatMessage, LLMChunk, LLMEngine, ToolSpec
from voxline.engines.chatml import END as _END
from voxline.engines.chatml import GrammarCache, tool_catalogue
from voxline.engines.llama_batch import BatchedLlama


def _render(messages: list[ChatMessage]) -> str:
    parts = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = [f"functions.{c['name']}: {c['arguments']}" for c in m.tool_calls]
            parts.append(f"<|im_start|>assistant\n{chr(10).join(calls)}{_END}\n")
        elif m.role == "tool":
            parts.append(f"<|im_start|>system\nResult of {m.name}: {m.content}{_END}\n")
        else:
            parts.append(f"<|im_start|>{m.role}\n{m.content}{_END}\n")
    return "".join(parts) + "<|im_start|>assistant\n"


class LlamaCppLLM(LLMEngine):
    def __init__(self, model_path: Path, device: str = "cpu", n_ctx: int = 2048,
                 threads: int = 2, threads_batch: int | None = None, gpu_layers: int = 0,
                 seed: int = 0) -> None:
        self._llm = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads_batch or threads,
            n_gpu_layers=gpu_layers if device != "cpu" else 0,
            seed=seed,
            verbose=False,
        )
        self.n_ctx = n_ctx
        self.seed = seed
        self.threads = (threads, threads_batch or threads)
        # One llama.cpp context: one generation at a time (the scheduler batches).
        self._lock = threading.Lock()
        self._grammars = GrammarCache()
        self._batched: BatchedLlama | None = None

    def batched(self, slots: int, slot_tokens: int, batch_tokens: int) -> BatchedLlama:
        """A context of `slots` sequences on the same weights (made once)."""
        if self._batched is None:
            self._batched = BatchedLlama(self._llm._model, slots, slot_tokens, batch_tokens,
                                         *self.threads)
        return self._batched

    def close(self) -> None:
        if self._batched is not None:
            self._batched.close()
        self._llm.close()

    def _grammar(self, key: str, make) -> LlamaGrammar:  # type: ignore[no-untyped-def]
        return LlamaGrammar.from_string(self._grammars.get(key, lambda: make()._grammar),
                                        verbose=False)

    def _count(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=True))

    def _complete(self, prompt: str, max_tokens: int, temperature: float,
                  grammar: LlamaGrammar | None = None) -> str:
        out = self._llm.create_completion(
            prompt, max_tokens=max_tokens, temperature=temperature, grammar=grammar,
            stop=[_END],
        )
        return out["choices"][0]["text"]  # type: ignore[index]

    def _decide(self, prompt: str, tools: list[ToolSpec], tool_choice: str) -> ToolSpec | None:
        """The tool to call, or None to answer in prose (after "message:")."""
        if tool_choice not in ("auto", "required"):
            return next(t for t in tools if t.name == tool_choice)
        options = [f'"functions.{t.name}:"' for t in tools]
        if tool_choice == "auto":
            options.append('"message:"')
        rule = "root ::= " + " | ".join(options)
        grammar = self._grammar(rule, lambda: LlamaGrammar.from_string(rule, verbose=False))
        choice = self._complete(prompt, 16, 0.0, grammar)
        return next((t for t in tools if choice == f"functions.{t.name}:"), None)

    def stream_chat(
        self,
        messages: list[ChatMessage],
        tools: list[ToolSpec] | None = None,
        tool_choice: str = "auto",
        max_tokens: int = 128,
        temperature: float = 0.0,
        *,
        affinity: str = "",  # one model in this process: nothing to choose
    ) -> Iterator[LLMChunk]:
        with self._lock:
            prompt = _render(messages)
            if tools and tool_choice != "none":
                system = [ChatMessage("system", messages[0].content + tool_catalogue(tools))]
                prompt = _render(system + messages[1:])
            tokens = self._llm.tokenize(prompt.encode(), add_bos=False, special=True)
            # What llama-cpp-python reuses: the common prefix with this context's last
            # prompt (one context for every call, so another call's turn evicts it).
            reused = 0
            for a, b in zip(self._llm._input_ids[:self._llm.n_tokens], tokens, strict=False):
                if a != b:
                    break
                reused += 1
            yield LLMChunk(prompt_tokens=len(tokens), prompt_reused=reused,
                           prompt_evaluated=len(tokens) - reused)
            if tools and tool_choice != "none":
                tool = self._decide(prompt, tools, tool_choice)
                if tool is None:
                    # Go on from the decision: the prompt is already in llama.cpp's cache.
                    prompt += "message: "
                else:
                    schema = json.dumps(tool.parameters, sort_keys=True)
                    grammar = self._grammar(
                        schema, lambda: LlamaGrammar.from_json_schema(schema, verbose=False)
                    )
                    args = self._complete(
                        f"{prompt}functions.{tool.name}: ", 96, temperature, grammar
                    )
                    yield LLMChunk(tool_name=tool.name, tool_arguments=args,
                                   completion_tokens=self._count(args))
                    return
            stream = self._llm.create_completion(
                prompt, max_tokens=max_tokens, temperature=temperature,
                stop=[_END], stream=True,
            )
            try:
                for part in stream:
                    text = part["choices"][0]["text"]  # type: ignore[index]
                    if text:  # llama.cpp streams one token per part
                        yield LLMChunk(text=text, completion_tokens=1)
            finally:
                stream.close()  # type: ignore[union-attr]
