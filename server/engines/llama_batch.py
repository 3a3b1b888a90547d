"""One llama.cpp context with many sequence slots, driven one decode step at a time
(llama-cpp-python's low-level API). It knows tokens, slots and samplers, nothing of
calls or turns: scheduling/llm.py decides what each step carries.

Every slot has a KV stream of its own (`slot_tokens` long): a sequence's attention
then reads its own cells only, in order, so its tokens come out the same whatever
other calls share the step (with one unified cache the other calls' cells change the
attention's summation order, and greedy decoding of a small model flips at near-ties).
A profile's prefix is copied into a call's slot whole (a stream copy).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals


@dataclass
class Row:
    """A step's tokens for one slot, starting at position `pos`; `sampler`: sample the
    next token from the last one's logits (None: prompt only)."""

    slot: int
    tokens: list[int]
    pos: int
    sampler: Sampler | None = None


class Sampler:
    """A sequence's own sampler: an optional grammar, then greedy (temperature 0) or
    seeded sampling.

    Greedy with a grammar takes the most likely token and asks the grammar about that one
    token; only when the grammar refuses it is the grammar applied to the whole
    vocabulary (as llama.cpp's common sampler does). Applying it to all 49k tokens on
    every step costs more than the decode step of a batch on a CPU.
    """

    def __init__(self, vocab: object, n_vocab: int, grammar: str | None,
                 temperature: float, seed: int) -> None:
        self._n_vocab = n_vocab
        self._grammar = None
        self._chain = None
        if grammar:
            self._grammar = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(),
                                                                 b"root")
            if not self._grammar:
                raise ValueError("llama.cpp could not parse a grammar")
        if temperature > 0:  # the whole chain on the whole vocabulary
            chain = llama_cpp.llama_sampler_chain_init(
                llama_cpp.llama_sampler_chain_default_params())
            if self._grammar is not None:
                llama_cpp.llama_sampler_chain_add(chain, self._grammar)
                self._grammar = None  # the chain owns it now
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(
                temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
            self._chain = chain
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(
            data=self._one, size=1, selected=-1, sorted=False)

    def sample(self, ctx: object, index: int) -> int:
        if self._chain is not None:
            return llama_cpp.llama_sampler_sample(self._chain, ctx, index)  # accepts it too
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, index),
                                       shape=(self._n_vocab,))
        token = int(np.argmax(logits))
        if self._grammar is None:
            return token
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        if not np.isfinite(self._one[0].logit):
            candidates = internals.LlamaTokenDataArray(n_vocab=self._n_vocab)
            candidates.copy_logits(logits)
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(candidates.candidates))
            token = int(np.argmax(candidates.candidates_data.logit))
        llama_cpp.llama_sampler_accept(self._grammar, token)
        return token

    def accept(self, tokens: list[int]) -> None:
        """Tokens put in without sampling (forced text) advance the grammar too."""
        sampler = self._chain if self._chain is not None else self._grammar
        if sampler is not None:
            for token in tokens:
                llama_cpp.llama_sampler_accept(sampler, token)

    def close(self) -> None:
        for name in ("_chain", "_grammar"):
            sampler = getattr(self, name, None)
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)
                setattr(self, name, None)

    def __del__(self) -> None:
        self.close()


class BatchedLlama:
    def __init__(self, model: internals.LlamaModel, slots: int, slot_tokens: int,
                 batch_tokens: int, threads: int, threads_batch: int) -> None:
        if not 1 <= slots <= llama_cpp.llama_max_parallel_sequences():
            raise ValueError(f"llama.cpp takes 1 to {llama_cpp.llama_max_parallel_sequences()}"
                             f" sequence slots, not {slots}")
        self.model = model
        self.slots = slots
        self.batch_tokens = batch_tokens
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slots * slot_tokens
        params.n_batch = params.n_ubatch = batch_tokens
        params.n_seq_max = slots
        params.kv_unified = False
        params.n_threads, params.n_threads_batch = threads, threads_batch
        params.no_perf = True
        self._ctx = internals.LlamaContext(model=model, params=params, verbose=False)
        self.slot_tokens = self._ctx.n_ctx() // slots
        self._batch = internals.LlamaBatch(n_tokens=batch_tokens, embd=0, n_seq_max=1,
                                           verbose=False)
        self._piece = ctypes.create_string_buffer(64)

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text.encode(), add_bos=False, special=True)

    def piece(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self.model.vocab, token, self._piece,
                                           len(self._piece), 0, False)
        return bytes(self._piece[:max(n, 0)])

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.model.vocab, token))

    def sampler(self, grammar: str | None, temperature: float, seed: int) -> Sampler:
        return Sampler(self.model.vocab, self.model.n_vocab(), grammar, temperature, seed)

    # ------------------------------------------------------------------ KV slots

    def copy(self, src: int, dst: int) -> None:
        """Slot `dst` gets what slot `src` holds (all of it: separate streams)."""
        llama_cpp.llama_memory_seq_cp(self._ctx.memory, src, dst, -1, -1)

    def drop(self, slot: int, start: int = 0) -> None:
        """Forget slot's positions from `start` on (0: the whole slot)."""
        llama_cpp.llama_memory_seq_rm(self._ctx.memory, slot, start, -1)

    # ------------------------------------------------------------------ one step

    def step(self, rows: list[Row]) -> list[int | None]:
        """Evaluate every row's tokens in one llama_decode; the sampled next token of
        each row that has a sampler."""
        b = self._batch.batch
        n = 0
        last: list[int] = []
        for row in rows:
            for i, token in enumerate(row.tokens):
                b.token[n] = token
                b.pos[n] = row.pos + i
                b.seq_id[n][0] = row.slot
                b.n_seq_id[n] = 1
                b.logits[n] = False
                n += 1
            last.append(n - 1)
            if row.sampler is not None:
                b.logits[n - 1] = True
        assert n <= self.batch_tokens, "a step over the batch limit"
        b.n_tokens = n
        code = llama_cpp.llama_decode(self._ctx.ctx, b)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        return [row.sampler.sample(self._ctx.ctx, i) if row.sampler is not None else None
                for row, i in zip(rows, last, strict=True)]

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()
