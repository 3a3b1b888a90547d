"""Who may make a request, and whether there is room, for every service on the port
(Converse, the Riva services, the operator RPCs): the Gate's keys, roles and call
slots, and the one path a refusal takes (counted by reason, logged, answered with its
status and retry hint)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from voxline.metrics import Metrics
from voxline.transport.gate import Gate, Rejected

log = logging.getLogger(__name__)

_REFUSAL_READ_S = 2.0  # how long a refused stream may take to send its first message


class Admission:
    def __init__(self, gate: Gate, metrics: Metrics) -> None:
        self.gate = gate
        self.metrics = metrics
        self.active: Counter[str] = Counter()  # slots held, by transport

    def tenant(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant (Rejected for a missing or unknown key)."""
        return self.gate.authenticate(context.invocation_metadata())

    def operator(self, context: grpc.aio.ServicerContext) -> str:
        """The caller, who must hold an operator's key."""
        tenant = self.tenant(context)
        self.gate.require_operator(tenant)
        return tenant

    def enter(self, tenant: str, transport: str) -> str:
        """The tenant, with a call slot taken on `transport` (give it back with
        `leave`); Rejected when there is no room."""
        self.gate.admit(tenant)
        self.active[transport] += 1
        self.metrics.transport_calls.labels(transport).inc()
        return tenant

    def leave(self, tenant: str, transport: str) -> None:
        self.gate.release(tenant)
        self.active[transport] -= 1
        self.metrics.transport_calls.labels(transport).dec()

    def count(self, exc: Rejected, what: str, transport: str) -> None:
        """Count and log a refusal (every transport's refusals go through here)."""
        self.metrics.calls_rejected.labels(exc.reason, transport).inc()
        log.info("%s over %s refused (%s): %s", what, transport, exc.reason, exc.message)

    async def refuse(self, context: grpc.aio.ServicerContext, exc: Rejected, what: str,
                     requests: AsyncIterator[object] | None = None,
                     transport: str = "grpc") -> NoReturn:
        """End the RPC with the refusal: its last act."""
        self.count(exc, what, transport)
        if requests is not None:
            # grpc-python's asyncio client reports a write that meets the server's
            # closing status as its own INTERNAL (grpc/grpc#36066), hiding the reason
            # from a gateway. Taking the first message (briefly, and nothing more)
            # means the client's only write has landed before the refusal.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_REFUSAL_READ_S):
                    await anext(aiter(requests))
        await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())
