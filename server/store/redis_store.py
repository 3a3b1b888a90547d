"""Conversation state in Redis, shared by every replica. Each call is one hash (owner,
state) under the hash of its resume token, with a time to live; the ownership checks
run as Lua scripts so that a check and its write are one atomic step."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from voxline.store.base import CallState, ConversationStore, StoreError, token_key

T = TypeVar("T")

# KEYS[1] call, ARGV owner, state, ttl (ms): write unless another owner holds the call.
_SAVE = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner and owner ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'state', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# KEYS[1] call, ARGV owner, ttl (ms): take the call over, return its state.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return state
"""
# KEYS[1] call, ARGV owner, ttl (ms; 0 = delete): only the owner may.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


class RedisStore(ConversationStore):
    def __init__(self, url: str, prefix: str = "voxline:", timeout_s: float = 2.0) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s)
        self._prefix = prefix
        self._timeout = timeout_s
        self._save = self._redis.register_script(_SAVE)
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)

    async def _run(self, op: Awaitable[T]) -> T:
        # A bounded wait: a slow or unreachable Redis must never hold a call up.
        try:
            return await asyncio.wait_for(op, self._timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"Redis: {exc or type(exc).__name__}") from exc

    def _key(self, token: str) -> str:
        return token_key(self._prefix, token)

    async def save(self, token: str, owner: str, state: CallState, ttl_s: float) -> bool:
        done = await self._run(self._save(keys=[self._key(token)],
                                          args=[owner, state.to_json(), int(ttl_s * 1000)]))
        return bool(done)

    async def claim(self, token: str, owner: str, ttl_s: float) -> CallState | None:
        raw = await self._run(self._claim(keys=[self._key(token)],
                                          args=[owner, int(ttl_s * 1000)]))
        return CallState.from_json(raw) if raw else None

    async def peek(self, token: str) -> CallState | None:
        raw = await self._run(self._redis.hget(self._key(token), "state"))
        return CallState.from_json(raw) if raw else None

    async def expire(self, token: str, owner: str, ttl_s: float) -> None:
        await self._run(self._release(keys=[self._key(token)],
                                      args=[owner, max(1, int(ttl_s * 1000))]))

    async def delete(self, token: str, owner: str) -> None:
        await self._run(self._release(keys=[self._key(token)], args=[owner, 0]))

    async def close(self) -> None:
        await self._redis.aclose()
