"""Keeps a call's conversation state in the store as the call goes, so that the call can
be resumed on a new stream (on any replica sharing the store) if this one breaks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from voxline.metrics import Metrics
from voxline.store import CallState, ConversationStore, StoreError

log = logging.getLogger(__name__)


class Continuity:
    """The writes of one call's stream, in order. A store that fails or is slow is logged
    and counted, never felt by the caller: the call goes on, it just could not be resumed."""

    def __init__(self, store: ConversationStore, token: str, owner: str, active_ttl_s: float,
                 metrics: Metrics) -> None:
        self.store = store
        self.token = token
        self.owner = owner  # this stream's session id
        self.active_ttl_s = active_ttl_s
        self.metrics = metrics
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
            self._submit("save", lambda: self.store.save(self.token, self.owner, state,
                                                         self.active_ttl_s))

    def finish(self, keep_s: float) -> None:
        """The stream is over: keep the state `keep_s` for a resume, or (0) delete it."""
        if keep_s > 0:
            self._submit("expire", lambda: self.store.expire(self.token, self.owner, keep_s))
        else:
            self._submit("delete", lambda: self.store.delete(self.token, self.owner))
        self._closed = True
