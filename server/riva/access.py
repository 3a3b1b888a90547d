"""What a Riva RPC shares with the VoiceAgent service: admission (the same keys and call
slots, so Riva streams count against the same limits, and the same refusal path), the
model generation it holds for the whole request, and metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from voxline.errors import ServiceError, invalid
from voxline.riva.audio import AudioError
from voxline.runtime import Runtime
from voxline.transport.admission import Admission
from voxline.transport.gate import Rejected
from voxline.transport.generations import Generations

log = logging.getLogger(__name__)

RivaError = ServiceError  # one error class on every service
__all__ = ["Access", "RivaError", "as_riva_error", "invalid"]


class Access:
    def __init__(self, admission: Admission, generations: Generations) -> None:
        self.admission = admission
        self.generations = generations

    @property
    def rt(self) -> Runtime:
        """The current model generation (it changes when models are reloaded)."""
        return self.generations.current

    async def authenticate(self, context: grpc.aio.ServicerContext, method: str) -> str:
        """The caller's tenant, or the request ends refused."""
        try:
            return self.admission.tenant(context)
        except Rejected as exc:
            self.count(method, exc.code)
            await self.admission.refuse(context, exc, f"riva {method}", transport="riva")

    async def fail(self, context: grpc.aio.ServicerContext, method: str,
                   exc: ServiceError) -> None:
        """End the request with `exc`'s status: its last act."""
        self.count(method, exc.code)
        log.info("riva %s failed: %s", method, exc.message)
        await context.abort(exc.code, exc.message)

    def count(self, method: str, code: grpc.StatusCode) -> None:
        self.rt.metrics.riva_requests.labels(method, code.name).inc()

    @contextlib.asynccontextmanager
    async def slot(self, context: grpc.aio.ServicerContext, method: str
                   ) -> AsyncIterator[Runtime]:
        """Authenticate, take a call slot, and hold the current model generation for
        the whole request."""
        try:
            tenant = self.admission.enter(self.admission.tenant(context), "riva")
        except Rejected as exc:
            self.count(method, exc.code)
            await self.admission.refuse(context, exc, f"riva {method}", transport="riva")
        try:
            with self.generations.hold() as rt:
                yield rt
            self.count(method, grpc.StatusCode.OK)
        finally:
            self.admission.leave(tenant, "riva")


def as_riva_error(exc: BaseException, request_type: str, action: str) -> ServiceError:
    """The status a failure ends a request with: bad input says what to fix; anything
    else is INTERNAL, logged, and the server goes on."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, AudioError):
        return invalid(str(exc))
    if isinstance(exc, DecodeError):
        return invalid(f"a message is not a valid {request_type} ({exc})")
    log.error("riva %s failed", action, exc_info=exc)
    return ServiceError(grpc.StatusCode.INTERNAL, f"{action} failed: {exc}")
