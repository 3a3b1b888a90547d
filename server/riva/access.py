"""What a Riva RPC shares with the VoiceAgent service: API keys and call slots (the
same Gate, so Riva streams count against the same limits), the current model
generation, and metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from voxline.riva.audio import AudioError
from voxline.runtime import Runtime
from voxline.transport.gate import Rejected
from voxline.transport.service import VoiceAgentService

log = logging.getLogger(__name__)


class RivaError(Exception):
    """A request that cannot be served: the status and a message saying what to fix."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RivaError:
    return RivaError(grpc.StatusCode.INVALID_ARGUMENT, message)


class Access:
    def __init__(self, voice: VoiceAgentService) -> None:
        self.voice = voice

    @property
    def rt(self) -> Runtime:
        """The current model generation (it changes when models are reloaded)."""
        return self.voice.rt

    async def authenticate(self, context: grpc.aio.ServicerContext, method: str) -> str:
        try:
            return self.voice.gate.authenticate(context.invocation_metadata())
        except Rejected as exc:
            await self._refuse(context, method, exc)
            raise  # not reached: abort raises

    async def _refuse(self, context: grpc.aio.ServicerContext, method: str,
                      exc: Rejected) -> None:
        self.rt.metrics.calls_rejected.labels(exc.reason).inc()
        self.count(method, exc.code)
        log.info("riva %s refused (%s): %s", method, exc.reason, exc.message)
        await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())

    async def fail(self, context: grpc.aio.ServicerContext, method: str,
                   exc: RivaError) -> None:
        self.count(method, exc.code)
        log.info("riva %s failed: %s", method, exc.message)
        await context.abort(exc.code, exc.message)

    def count(self, method: str, code: grpc.StatusCode) -> None:
        self.rt.metrics.riva_requests.labels(method, code.name).inc()

    @contextlib.asynccontextmanager
    async def slot(self, context: grpc.aio.ServicerContext, method: str
                   ) -> AsyncIterator[Runtime]:
        """Authenticate, take a call slot, and hold the current model generation for
        the whole request (a reload meanwhile does not close its models under it)."""
        tenant = await self.authenticate(context, method)
        gate = self.voice.gate
        try:
            gate.admit(tenant)
        except Rejected as exc:
            await self._refuse(context, method, exc)
        rt = self.rt
        rt.active += 1
        ok = False
        try:
            yield rt
            ok = True
        finally:
            rt.active -= 1
            gate.release(tenant)
            if ok:
                self.count(method, grpc.StatusCode.OK)
            self.voice.release_if_unused(rt)


def as_riva_error(exc: BaseException, request_type: str, action: str) -> RivaError:
    """The status a failure ends a request with: bad input says what to fix; anything
    else is INTERNAL, logged, and the server goes on."""
    if isinstance(exc, RivaError):
        return exc
    if isinstance(exc, AudioError):
        return invalid(str(exc))
    if isinstance(exc, DecodeError):
        return invalid(f"a message is not a valid {request_type} ({exc})")
    log.error("riva %s failed", action, exc_info=exc)
    return RivaError(grpc.StatusCode.INTERNAL, f"{action} failed: {exc}")
