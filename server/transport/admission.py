"""Who may make a request, and whether there is room, for every service on the port
(Converse, the Riva services, the operator RPCs): the Gate's keys, roles and call
slots, and the one path a refusal takes (counted by reason, logged, answered with its
status and retry hint)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

    def tenant(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant (Rejected for a missing or unknown key)."""
        return self.gate.authenticate(context.invocation_metadata())

    def operator(self, context: grpc.aio.ServicerContext) -> str:
        """The caller, who must hold an operator's key."""
        tenant = self.tenant(context)
        self.gate.require_operator(tenant)
        return tenant

    def enter(self, context: grpc.aio.ServicerContext) -> str:
        """The caller's tenant, with a call slot taken (give it back with `leave`)."""
        tenant = self.tenant(context)
        self.gate.admit(tenant)
        return tenant

    def leave(self, tenant: str) -> None:
        self.gate.release(tenant)

    async def refuse(self, context: grpc.aio.ServicerContext, exc: Rejected, what: str,
                     requests: AsyncIterator[object] | None = None) -> NoReturn:
        """End the RPC with the refusal: its last act."""
        self.metrics.calls_rejected.labels(exc.reason).inc()
        log.info("%s refused (%s): %s", what, exc.reason, exc.message)
        if requests is not None:
            # grpc-python's asyncio client reports a write that meets the server's
            # closing status as its own INTERNAL (grpc/grpc#36066), hiding the reason
            # from a gateway. Taking the first message (briefly, and nothing more)
            # means the client's only write has landed before the refusal.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_REFUSAL_READ_S):
                    await anext(aiter(requests))
        await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())
