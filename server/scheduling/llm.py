"""One LLM scheduler for every call on the in-process llama.cpp engine.

Every generation (the tool decision, grammar-constrained arguments, streamed prose) is
a sequence in one llama.cpp context with many slots, and every decode step carries one
token for each running sequence plus prompt chunks of newly admitted ones (continuous
batching), up to `batch_tokens` tokens a step and `max_running` sequences.

Prefix reuse: each distinct fixed prefix (a profile's instructions and tool catalogue)
is evaluated once into a prefix slot and copied into a call's slot when the call first
needs one; a call keeps its slot and its KV across turns, so a turn evaluates only the
tokens after the longest common prefix with what the slot already holds. Idle calls'
slots are taken back least recently used first when a new call needs one; such a call
re-evaluates its history on its next turn. A slot holds `slot_tokens` at most: a longer
prompt is refused, a generation that reaches the end of its slot stops there.

Priority: sequences still waiting for their first token (prompt chunks, up to
`prompt_chunk` tokens each) fill a step first, then running sequences get their next
token, so a new turn's first words never queue behind another call's long answer. The
wait for admission (queue) and the step time (compute) are reported apart; the first
chunk a sequence yields says when it was admitted, so a caller's timeout can count from
there.

A cancelled sequence (barge-in, the consumer stopped reading) leaves before the next
step; its slot keeps the tokens already evaluated, which the next turn reuses as far as
they match.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import itertools
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

from voxline.engines import chatml
from voxline.engines.base import ChatMessage, LLMChunk, ToolSpec
from voxline.engines.llama_batch import BatchedLlama, Row, Sampler
from voxline.scheduling.base import Scheduler
from voxline.scheduling.chat import ChatRequest

log = logging.getLogger(__name__)

_ARGS_MAX = 96  # tokens of a tool's JSON arguments


@dataclass(eq=False)
class _Prefix:
    tokens: list[int]
    slot: int
    evaluated: int = 0  # tokens of it in the slot so far
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.evaluated == len(self.tokens)


@dataclass(eq=False)
class _Conversation:
    key: str
    slot: int | None = None
    tokens: list[int] = field(default_factory=list)  # what the slot's KV holds
    busy: bool = False
    released: bool = False  # the call is over: free the slot once its sequence stops


@dataclass(eq=False)
class _Sequence:
    request: ChatRequest
    parts: list[list[int]]
    program: chatml.Program
    out: asyncio.Queue
    submitted: float = field(default_factory=time.perf_counter)
    conv: _Conversation | None = None
    prefix: _Prefix | None = None  # a prefix being evaluated (no conversation, no output)
    pending: list[int] = field(default_factory=list)  # to evaluate in the next steps
    phase: str = "prefill"  # prefill, decide, args, json, prose
    sampler: Sampler | None = None
    options: list[str] = field(default_factory=list)  # what a choosing phase picks from
    tool: ToolSpec | None = None  # the tool whose arguments are being written
    text: list[str] = field(default_factory=list)  # the current phase's output
    generated: int = 0
    started: bool = False  # has had its first token
    cancelled: bool = False
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))


_END = object()


class LLMScheduler(Scheduler):
    def __init__(self, engine: BatchedLlama, executor: Executor, *, max_running: int = 16,
                 prompt_chunk: int = 256, prefix_slots: int = 2, grammar_cache: int = 256,
                 seed: int = 0) -> None:
        super().__init__(executor)
        self.engine = engine
        self.batch_tokens = engine.batch_tokens
        self.max_running = max(1, max_running)
        self.prompt_chunk = max(1, min(prompt_chunk, self.batch_tokens))
        if not 1 <= prefix_slots < engine.slots:
            raise ValueError("prefix_slots must leave at least one slot for calls")
        self._prefix_slots = prefix_slots
        self._free = list(range(engine.slots - 1, prefix_slots - 1, -1))  # call slots
        self._prefixes: OrderedDict[tuple[int, ...], _Prefix] = OrderedDict()
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._grammars = chatml.GrammarCache(grammar_cache)
        self._seeds = itertools.count(seed)
        self._tokens: dict[str, list[int]] = {}  # tokenized parts, bounded below
        # Figures for GetServerInfo and the benchmarks.
        self.prompt_evaluated = 0
        self.prompt_reused = 0
        self.steps = 0
        self._waits: list[float] = []  # queue waits of sequences admitted since a step

    # ------------------------------------------------------------------ the API

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMChunk]:
        """The completion as chunks. The first chunk, sent once the sequence has a
        slot, carries the prompt's token counts and its queue wait; closing the
        iterator early cancels the sequence before the next decode step."""
        parts, program = chatml.prompt(request.messages, request.tools, request.tool_choice)
        if program.forced:
            parts.append(program.forced)
        seq = _Sequence(request, [self._tokenize(p) for p in parts], program, asyncio.Queue())
        self._waiting.append(seq)
        self._kick()
        try:
            while True:
                item = await seq.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not seq.cancelled:
                seq.cancelled = True
                self._kick()

    async def warm(self, messages: list[ChatMessage], tools: list[ToolSpec] | None) -> None:
        """Evaluate a profile's fixed prefix now rather than on its first call."""
        parts, _ = chatml.prompt(messages[:1], tools, "auto")
        prefix = self._prefix(tuple(self._tokenize(parts[0])))
        if prefix is not None:
            self._kick()
            await prefix.done.wait()

    def release(self, conversation: str) -> None:
        """The call is over: free its slot (at once, or when its sequence stops)."""
        conv = self._conversations.get(conversation)
        if conv is not None:
            conv.released = True
            if not conv.busy:
                self._evict(conv)

    def summary(self) -> dict[str, int]:
        return {"prompt_tokens_evaluated": self.prompt_evaluated,
                "prompt_tokens_reused": self.prompt_reused, "steps": self.steps,
                "running": len(self._running), "waiting": len(self._waiting),
                "conversations": sum(c.slot is not None for c in self._conversations.values()),
                "grammars": len(self._grammars)}

    # ------------------------------------------------------------------ helpers

    def _tokenize(self, text: str) -> list[int]:
        tokens = self._tokens.get(text)
        if tokens is None:
            tokens = self.engine.tokenize(text)
            if len(self._tokens) > 4096:
                self._tokens.clear()  # a bound; fixed parts are re-tokenized once
            self._tokens[text] = tokens
        return tokens

    def _prefix(self, key: tuple[int, ...]) -> _Prefix | None:
        """The prefix slot holding `key`, starting its evaluation if it has none (None
        while no prefix slot is free)."""
        prefix = self._prefixes.get(key)
        if prefix is not None:
            self._prefixes.move_to_end(key)
            return prefix
        used = {p.slot for p in self._prefixes.values()}
        free = [s for s in range(self._prefix_slots) if s not in used]
        if not free:
            idle = [k for k, p in self._prefixes.items() if p.ready]
            if not idle:
                return None
            free = [self._prefixes.pop(idle[0]).slot]
            self.engine.drop(free[0])  # calls that copied it keep their copies
        prefix = self._prefixes[key] = _Prefix(list(key), free[0])
        job = _Sequence(ChatRequest([]), [], chatml.Program("", [], {}), asyncio.Queue(),
                        prefix=prefix, pending=list(key))
        self._running.insert(0, job)
        return prefix

    def _evict(self, conv: _Conversation) -> None:
        if conv.slot is not None:
            self.engine.drop(conv.slot)
            self._free.append(conv.slot)
        conv.slot, conv.tokens = None, []
        self._conversations.pop(conv.key, None)

    def _slot(self) -> int | None:
        if not self._free:
            idle = next((c for c in self._conversations.values()
                         if not c.busy and c.slot is not None), None)
            if idle is None:
                return None
            self._evict(idle)
        return self._free.pop()

    # ------------------------------------------------------------------ admission

    def _admit(self) -> None:
        for seq in list(self._waiting):
            if seq.cancelled:
                self._waiting.remove(seq)
                continue
            if sum(s.prefix is None for s in self._running) >= self.max_running:
                return
            key = seq.request.conversation or f"#anonymous-{id(seq)}"
            conv = self._conversations.get(key)
            if conv is not None and conv.busy:
                continue  # the call's previous sequence has not stopped yet
            prefix = self._prefix(tuple(seq.parts[0])) if seq.parts else None
            if prefix is None or not prefix.ready:
                continue
            if conv is None or conv.slot is None:
                slot = self._slot()
                if slot is None:
                    return
                conv = _Conversation(key, slot)
                self._conversations[key] = conv
                self.engine.copy(prefix.slot, slot)
                conv.tokens = list(prefix.tokens)
            self._conversations.move_to_end(key)
            self._waiting.remove(seq)
            self._start(seq, conv)

    def _start(self, seq: _Sequence, conv: _Conversation) -> None:
        wanted = [t for part in seq.parts for t in part]
        queue_ms = (time.perf_counter() - seq.submitted) * 1000
        if len(wanted) >= self.engine.slot_tokens:
            seq.out.put_nowait(ValueError(
                f"prompt of {len(wanted)} tokens is over the {self.engine.slot_tokens} a "
                "call's slot holds (raise batching.llm_slot_tokens or lower the profile's "
                "llm.memory_tokens)"))
            if not seq.request.conversation:
                self._evict(conv)
            return
        common = 0
        for a, b in zip(conv.tokens, wanted, strict=False):
            if a != b:
                break
            common += 1
        common = min(common, len(wanted) - 1)  # the last token is evaluated for its logits
        if common < len(conv.tokens):
            self.engine.drop(conv.slot, common)  # type: ignore[arg-type]
            del conv.tokens[common:]
        conv.busy = True
        seq.conv = conv
        seq.pending = wanted[common:]
        self.prompt_evaluated += len(seq.pending)
        self.prompt_reused += common
        seq.out.put_nowait(LLMChunk(prompt_tokens=len(wanted), prompt_evaluated=len(seq.pending),
                                    prompt_reused=common, queue_ms=queue_ms))
        self._waits.append(queue_ms)
        self._running.append(seq)
        program = seq.program
        if program.options:
            self._choose(seq, "decide", program.options)
        elif program.forced in program.tools:
            self._tool_chosen(seq, program.tools[program.forced])
        else:
            self._prose(seq)

    def _sampler(self, grammar: str | None, temperature: float) -> Sampler:
        return self.engine.sampler(grammar, temperature, next(self._seeds))

    # ------------------------------------------------------------------ phases

    def _phase(self, seq: _Sequence, name: str, sampler: Sampler,
               options: list[str] | None = None) -> None:
        if seq.sampler is not None:
            seq.sampler.close()
        seq.phase, seq.sampler, seq.options, seq.text = name, sampler, options or [], []
        seq.generated = 0

    def _prose(self, seq: _Sequence) -> None:
        self._phase(seq, "prose", self._sampler(None, seq.request.temperature))

    def _choose(self, seq: _Sequence, name: str, options: list[str]) -> None:
        """Choose one of `options` under a grammar ("decide": a tool or prose; "args":
        a tool's arguments when they have few possible values)."""
        self._phase(seq, name, self._sampler(chatml.choice_grammar(options), 0.0), options)
        self._jump(seq)

    def _jump(self, seq: _Sequence) -> None:
        """What every option still open has in common goes straight into the prompt
        (a grammar with one way on would only spend a step a token repeating it); an
        option once complete is acted on."""
        said = "".join(seq.text)
        live = [o for o in seq.options if o.startswith(said)]
        if not live:  # the tokens' text strayed from every option (not under a grammar)
            if seq.phase == "decide":
                self._prose(seq)
            else:
                self._finish(seq, RuntimeError(f"the LLM wrote arguments {said!r} that "
                                               "match no allowed value"))
            return
        common = _common_prefix(live)[len(said):]
        if common:
            tokens = self._tokenize(common)
            seq.sampler.accept(tokens)  # type: ignore[union-attr]
            seq.pending += tokens
            seq.text.append(common)
            said += common
        if said not in seq.options:
            return
        if seq.phase == "args":
            self._call(seq, said)
        elif (tool := seq.program.tool(said)) is not None:
            self._tool_chosen(seq, tool)
        else:
            self._prose(seq)

    def _tool_chosen(self, seq: _Sequence, tool: ToolSpec) -> None:
        seq.tool = tool
        seq.pending += self._tokenize(" ")
        options = chatml.argument_options(tool)
        if options is not None:
            self._choose(seq, "args", options)
        else:  # free JSON under the schema's grammar
            self._phase(seq, "json", self._sampler(
                chatml.arguments_grammar(self._grammars, tool), seq.request.temperature))

    def _call(self, seq: _Sequence, arguments: str) -> None:
        assert seq.tool is not None
        seq.out.put_nowait(LLMChunk(tool_name=seq.tool.name, tool_arguments=arguments,
                                    completion_tokens=seq.generated))
        self._finish(seq)

    # ------------------------------------------------------------------ the loop

    def _reap(self) -> None:
        for seq in [s for s in self._running if s.cancelled]:
            self._finish(seq)

    def _finish(self, seq: _Sequence, error: BaseException | None = None) -> None:
        if seq in self._running:
            self._running.remove(seq)
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        conv = seq.conv
        if conv is not None:
            conv.busy = False
            if not seq.request.conversation or conv.released:
                self._evict(conv)  # nothing will continue it
        if not seq.cancelled:
            seq.out.put_nowait(error if error is not None else _END)

    def _plan(self) -> list[tuple[_Sequence, Row]]:
        budget = self.batch_tokens
        plan = []
        first = [s for s in self._running if not s.started]
        later = [s for s in self._running if s.started]
        for seq in first + later:
            n = min(len(seq.pending), budget, self.prompt_chunk if not seq.started else budget)
            if n <= 0:
                continue
            if seq.conv is not None and len(seq.conv.tokens) + n > self.engine.slot_tokens:
                self._overflow(seq)
                continue
            done = n == len(seq.pending)
            slot = seq.prefix.slot if seq.prefix is not None else seq.conv.slot  # type: ignore[union-attr]
            pos = seq.prefix.evaluated if seq.prefix is not None else len(seq.conv.tokens)  # type: ignore[union-attr]
            plan.append((seq, Row(slot, seq.pending[:n], pos,
                                  seq.sampler if done and seq.prefix is None else None)))
            budget -= n
            if budget <= 0:
                break
        return plan

    def _crashed(self) -> None:
        """Its sequences stream no futures: each hears of the crash on its own queue."""
        for seq in [*self._running, *self._waiting]:
            seq.out.put_nowait(RuntimeError("the LLM scheduler failed"))
            if seq.conv is not None:  # its KV may be half-written: start it afresh
                seq.conv.busy = False
                if seq.conv.slot is not None:
                    with contextlib.suppress(Exception):
                        self.engine.drop(seq.conv.slot, 0)  # type: ignore[arg-type]
                del seq.conv.tokens[:]
        self._running.clear()
        self._waiting.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._idle(bool(self._running or self._waiting))
            self._reap()
            self._admit()
            plan = self._plan()
            if not plan:
                # Everything waits for a slot or a call's previous sequence to stop.
                await self._idle(False)
                continue
            start = time.perf_counter()
            try:
                tokens = await loop.run_in_executor(self._executor, self.engine.step,
                                                    [r for _, r in plan])
            except Exception as exc:
                log.exception("LLM decode step failed")
                for seq, _ in plan:
                    if seq.prefix is not None:  # made again by the next request
                        self._prefixes.pop(tuple(seq.prefix.tokens), None)
                        self._running.remove(seq)
                        seq.prefix.done.set()
                    else:
                        self._finish(seq, exc)
                continue
            self.steps += 1
            waits, self._waits = self._waits, []
            self.stats.record(len(plan), waits, (time.perf_counter() - start) * 1000)
            for (seq, row), token in zip(plan, tokens, strict=True):
                self._advance(seq, row, token)

    def _overflow(self, seq: _Sequence) -> None:
        """The sequence reached the end of its slot: prose ends there, anything else
        fails."""
        if seq.phase == "prose":
            self._finish(seq)
        else:
            self._finish(seq, RuntimeError(
                f"the call's LLM slot is full ({self.engine.slot_tokens} tokens)"))

    # ------------------------------------------------------------------ one token

    def _advance(self, seq: _Sequence, row: Row, token: int | None) -> None:
        del seq.pending[:len(row.tokens)]
        if seq.prefix is not None:
            seq.prefix.evaluated += len(row.tokens)
            if seq.prefix.ready:
                self._running.remove(seq)
                seq.prefix.done.set()
            return
        conv = seq.conv
        assert conv is not None
        conv.tokens += row.tokens
        if token is None or seq.cancelled:
            return
        seq.started = True
        seq.generated += 1
        end = self.engine.is_end(token)
        if seq.options:  # choosing (decide, args)
            if end:  # the grammar allows no end before a choice: a model fault
                self._finish(seq, RuntimeError("the LLM ended before choosing"))
                return
            seq.text.append(self.engine.piece(token).decode("utf-8", "replace"))
            seq.pending = [token]
            self._jump(seq)
        elif seq.phase == "json":
            if not end:
                seq.text.append(self.engine.piece(token).decode("utf-8", "replace"))
            args = "".join(seq.text)
            if end or seq.generated >= _ARGS_MAX or _complete_json(args):
                self._call(seq, args)
            else:
                seq.pending = [token]
        else:
            if end:
                tail = seq.decoder.decode(b"", final=True)
                if tail:
                    seq.out.put_nowait(LLMChunk(text=tail))
                self._finish(seq)
                return
            text = seq.decoder.decode(self.engine.piece(token))
            if not seq.text:
                # "message:" is followed by " word"; the small model often opens with a
                # quote it then closes: neither is to be spoken.
                text = text.lstrip().lstrip('"')
            if text:
                seq.text.append(text)
            seq.out.put_nowait(LLMChunk(text=text, completion_tokens=1))
            if seq.generated >= seq.request.max_tokens:
                self._finish(seq)
            else:
                seq.pending = [token]


def _common_prefix(texts: list[str]) -> str:
    if not texts:
        return ""
    first, last = min(texts), max(texts)
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    return first[:n]


def _complete_json(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
