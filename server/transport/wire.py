"""What every telephony adapter shares. An adapter (SIP, Twilio, AudioSocket, Vonage)
only translates its wire to and from the call's messages: it says who is calling and
what (`begin` -> a tenant and a CallStart), turns what arrives into CallInput messages
and what the call says into its protocol. `serve_wire` does the rest the same way for
every transport, through the same admission and `VoiceAgentService.call` as gRPC:
the slot, the CallStart contract, the session, the record, the metrics."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import grpc

from voxline.config import Listener
from voxline.errors import ServiceError
from voxline.transport.gate import ConfigError, Gate, Rejected
from voxline.v1 import voice_agent_pb2 as pb

if TYPE_CHECKING:
    from voxline.transport.service import VoiceAgentService

log = logging.getLogger(__name__)


@dataclass
class Begin:
    """Who is calling and what: the tenant the call counts against, and its CallStart."""

    tenant: str
    start: pb.CallStart


class WireCall(ABC):
    """One call on a telephony protocol, as its adapter reads and writes it."""

    transport: ClassVar[str]

    @abstractmethod
    async def begin(self) -> Begin:
        """Read until the protocol says who calls and how. Raise Rejected for a caller
        its credentials refuse, ServiceError for a wire that breaks the protocol."""

    @abstractmethod
    def inputs(self) -> AsyncIterator[pb.CallInput]:
        """Audio, DTMF, marks and hang-up as they arrive; ends when the wire closes.
        Raise ServiceError for input that breaks the protocol (the call ends with its
        reason), ConnectionError for a wire that broke without hanging up (the call
        ends `gateway_lost`)."""

    @abstractmethod
    async def send(self, out: pb.CallOutput) -> None:
        """One of the call's messages, in the protocol's form (many have none)."""

    @abstractmethod
    async def refuse(self, exc: Rejected) -> None:
        """Refuse the call the protocol's way (a status, a close with a reason)."""

    @abstractmethod
    async def hang_up(self, ended: pb.CallEnded | None, error: ServiceError | None) -> None:
        """The call is over (ended, or failed with `error`; both None: the wire went
        away): end it on the wire, if it is still there."""


async def serve_wire(service: VoiceAgentService, wire: WireCall) -> None:
    """Run one call from a telephony wire, start to end; never raises."""
    admission, transport = service.admission, wire.transport
    try:
        begin = await wire.begin()
        admission.enter(begin.tenant, transport)
    except Rejected as exc:
        return await _refuse(service, wire, exc)
    except ServiceError as exc:  # the wire broke its protocol before the call began
        return await _refuse(service, wire, Rejected(exc.code, exc.message, "invalid"))
    except Exception:  # a wire gone before it said who it is
        log.info("%s call went away before it started", transport, exc_info=True)
        return
    ended: pb.CallEnded | None = None
    error: ServiceError | None = None
    try:
        calls = service.call(begin.tenant, transport, _after(begin.start, wire.inputs()))
        # aclosing: a wire that fails mid-call ends the call's stream (and records it
        # as lost) now, not when the generator is collected.
        async with contextlib.aclosing(calls) as outputs:
            async for out in outputs:
                if out.WhichOneof("payload") == "ended":
                    ended = out.ended
                await wire.send(out)
    except Rejected as exc:
        admission.leave(begin.tenant, transport)
        return await _refuse(service, wire, exc)
    except ServiceError as exc:
        error = exc
    except Exception:  # the wire broke while the call ran (its peer vanished)
        log.info("%s call %s: the wire went away", transport, begin.start.call_id,
                 exc_info=log.isEnabledFor(logging.DEBUG))
    admission.leave(begin.tenant, transport)
    with contextlib.suppress(Exception):
        await wire.hang_up(ended, error)


async def _refuse(service: VoiceAgentService, wire: WireCall, exc: Rejected) -> None:
    service.admission.count(exc, "call", wire.transport)
    with contextlib.suppress(Exception):
        await wire.refuse(exc)


async def _after(first: pb.CallStart, rest: AsyncIterator[pb.CallInput]
                 ) -> AsyncIterator[pb.CallInput]:
    yield pb.CallInput(start=first)
    async for msg in rest:
        yield msg


# ---------------------------------------------------------------- shared by adapters


def bad_input(message: str) -> ServiceError:
    """Input that breaks the wire's protocol: the call ends with this reason."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_listener(name: str, section: Listener, gate: Gate) -> None:
    """Refuse at start a listener that names a tenant the server does not have, or an
    allow entry that is not a CIDR block."""
    if gate.tenants and section.tenant and section.tenant not in gate.tenants:
        raise ConfigError(f"telephony.{name}.tenant: no tenant '{section.tenant}' in "
                          "auth.tenants")
    for block in section.allow:
        try:
            ipaddress.ip_network(block, strict=False)
        except ValueError as exc:
            raise ConfigError(f"telephony.{name}.allow: {exc}") from exc


def allowed(address: str, blocks: Sequence[str]) -> bool:
    """Whether a peer's address is in one of the CIDR blocks (no blocks: any)."""
    if not blocks:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(b, strict=False) for b in blocks)


def listener_tenant(name: str, section: Listener, gate: Gate, peer: str) -> str:
    """The tenant a call on this listener counts against, after its allowlist."""
    if not allowed(peer, section.allow):
        raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                       f"{peer} is not in telephony.{name}.allow", "forbidden")
    if gate.tenants and not section.tenant:
        raise Rejected(grpc.StatusCode.UNAUTHENTICATED,
                       f"telephony.{name} names no tenant and the call brought no "
                       "credentials", "unauthenticated")
    return section.tenant


@dataclass
class Listening:
    """A telephony listener that is up: its name, the port it took, how to stop it."""

    name: str
    port: int
    close: Callable[[], Awaitable[None]]
