"""Keeps a call's conversation state in the store as the call goes, so that the call can
be resumed on a new stream (on any replica sharing the store) if this one breaks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from voxline.metrics import Metrics
from voxline.records import redact
from voxline.store import CallState, ConversationStore, StoreError

log = logging.getLogger(__name__)


def redacted(state: CallState) -> CallState:
    """A copy of the state with personal data redacted (records.redact's patterns) in
    what the caller and agent said: the history's messages and tool-call arguments, and
    the turns' texts and tool arguments. A resumed call then goes on without the card
    number, as the record does. Metadata is the gateway's and kept as sent."""
    history = []
    for m in state.history:
        m = {**m, "content": redact(m.get("content") or "")}
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "arguments": redact(c["arguments"])}
                               if isinstance(c.get("arguments"), str) else c
                               for c in m["tool_calls"]]
        history.append(m)
    turns = [{**t, "caller_text": redact(t.get("caller_text") or ""),
              "agent_text": redact(t.get("agent_text") or ""),
              "tools": [{**x, "arguments": redact(x.get("arguments") or "")}
                        for x in t.get("tools") or []]}
             for t in state.turns]
    return dataclasses.replace(state, history=history, turns=turns)


class Continuity:
    """The writes of one call's stream, in order. A store that fails or is slow is logged
    and counted, never felt by the caller: the call goes on, it just could not be resumed."""

    def __init__(self, store: ConversationStore, token: str, owner: str, active_ttl_s: float,
                 metrics: Metrics, redact: bool = False) -> None:
        self.store = store
        self.token = token
        self.owner = owner  # this stream's session id
        self.active_ttl_s = active_ttl_s
        self.metrics = metrics
        # records.redact: the store (Redis, shared, dumped, backed up) gets what the
        # records get, never a card number the caller said.
        self.redact = redact
        self._lock = asyncio.Lock()  # FIFO: writes land in the order they were asked
        self._tasks: set[asyncio.Task] = set()
        self._closed = False  # finished, or taken over by another stream

    def _submit(self, op: str, write: Callable[[], Awaitable[object]]) -> None:
        async def run() -> None:
            async with self._lock:
                if self._closed and op == "save":
                    return
                try:
                    if await write() is False:  # another stream has resumed the call
                        self._closed = True
                        log.info("call state %s: taken over by session elsewhere", self.owner)
                except StoreError as exc:
                    self.metrics.store_errors.labels(op).inc()
                    log.warning("conversation store, %s failed: %s", op, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def save(self, state: CallState) -> None:
        """Write a snapshot (taken now) after those already asked for."""
        if not self._closed:
            if self.redact:
                state = redacted(state)
            self._submit("save", lambda: self.store.save(self.token, self.owner, state,
                                                         self.active_ttl_s))

    def finish(self, keep_s: float) -> None:
        """The stream is over: keep the state `keep_s` for a resume, or (0) delete it."""
        if keep_s > 0:
            self._submit("expire", lambda: self.store.expire(self.token, self.owner, keep_s))
        else:
            self._submit("delete", lambda: self.store.delete(self.token, self.owner))
        self._closed = True
