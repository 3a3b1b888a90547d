"""The default store: this process's memory. A broken stream can be resumed on the same
replica only."""

from __future__ import annotations

import time

from voxline.store.base import CallState, ConversationStore, token_key


class MemoryStore(ConversationStore):
    def __init__(self) -> None:
        # key -> (owner, state JSON, expiry on the monotonic clock)
        self._items: dict[str, tuple[str, str, float]] = {}

    def _get(self, token: str) -> tuple[str, tuple[str, str, float] | None]:
        now = time.monotonic()
        for key in [k for k, v in self._items.items() if v[2] <= now]:
            del self._items[key]  # expired
        key = token_key("", token)
        return key, self._items.get(key)

    async def save(self, token: str, owner: str, state: CallState, ttl_s: float) -> bool:
        key, item = self._get(token)
        if item is not None and item[0] != owner:
            return False
        self._items[key] = (owner, state.to_json(), time.monotonic() + ttl_s)
        return True

    async def claim(self, token: str, owner: str, ttl_s: float) -> CallState | None:
        key, item = self._get(token)
        if item is None:
            return None
        self._items[key] = (owner, item[1], time.monotonic() + ttl_s)
        return CallState.from_json(item[1])

    async def peek(self, token: str) -> CallState | None:
        _, item = self._get(token)
        return None if item is None else CallState.from_json(item[1])

    async def expire(self, token: str, owner: str, ttl_s: float) -> None:
        key, item = self._get(token)
        if item is not None and item[0] == owner:
            self._items[key] = (owner, item[1], time.monotonic() + ttl_s)

    async def delete(self, token: str, owner: str) -> None:
        key, item = self._get(token)
        if item is not None and item[0] == owner:
            del self._items[key]
