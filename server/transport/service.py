"""The VoiceAgent gRPC service: admits each Converse stream, checks its CallStart (or
resumes the call it names), runs a CallSession on the current model generation and
streams its events back; and the operator RPCs (GetServerInfo, ReloadModels). A
request that cannot be served raises ServiceError where that is found, and ends with
its status here, at the RPC's edge."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator

import grpc

from voxline.errors import ServiceError, invalid
from voxline.runtime import Runtime
from voxline.session.call import CallSession
from voxline.session.continuity import Continuity
from voxline.session.spec import CallSpec
from voxline.store import CallState, open_store
from voxline.streams import Inbox, Outbox
from voxline.transport.admission import Admission
from voxline.transport.gate import Gate, Rejected
from voxline.transport.generations import Generations
from voxline.transport.info import server_info
from voxline.transport.resume import take_over
from voxline.transport.start import check_start, checked
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_CLOSE_WAIT_S = 2.0  # after CallEnded, for the gateway to close its side


class VoiceAgentService(pb_grpc.VoiceAgentServicer):
    def __init__(self, runtime: Runtime, gate: Gate) -> None:
        self.generations = Generations(runtime)
        self.gate = gate
        self.admission = Admission(gate, runtime.metrics)
        self.metrics = runtime.metrics
        self.sessions: set[CallSession] = set()
        self.store = open_store(runtime.settings.store)
        # Where calls come in: name -> port (the gRPC port, then each telephony listener).
        self.listeners: dict[str, int] = {}

    @property
    def rt(self) -> Runtime:
        """The current model generation: new calls start on it."""
        return self.generations.current

    async def Converse(
        self, request_iterator: AsyncIterator[pb.CallInput], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CallOutput]:
        # Refused calls cost next to nothing: no slot, no model, one message read.
        try:
            tenant = self.admission.enter(self.admission.tenant(context), "grpc")
        except Rejected as exc:
            await self.admission.refuse(context, exc, "call", request_iterator)
        try:
            async for out in self.call(tenant, "grpc", request_iterator):
                yield out
        except Rejected as exc:
            await self.admission.refuse(context, exc, "call", transport="grpc")
        except ServiceError as exc:  # the stream broke the contract, or the call crashed
            await context.abort(exc.code, exc.message)
        finally:
            self.admission.leave(tenant, "grpc")

    async def call(self, tenant: str, transport: str, requests: AsyncIterator[pb.CallInput]
                   ) -> AsyncIterator[pb.CallOutput]:
        """One call, whatever it came in on, its slot already taken (Admission.enter):
        CallStart first, then the call's events. Raises Rejected when the CallStart is
        refused (nothing has started), ServiceError when the stream breaks the contract
        or the call fails."""
        with self.generations.hold() as rt:
            # Every message, the CallStart first, is held to the same contract.
            requests = checked(requests, rt.settings.limits.max_message_bytes)
            try:
                spec, resumed, token = await self._accept(rt, tenant, requests)
            except Rejected:
                raise
            except ServiceError as exc:
                raise Rejected(exc.code, exc.message, "invalid") from exc
            spec.transport = transport
            async for out in self._serve(rt, spec, resumed, token, requests):
                yield out

    async def _accept(self, rt: Runtime, tenant: str, requests: AsyncIterator[pb.CallInput]
                      ) -> tuple[CallSpec, CallState | None, str]:
        """The checked CallStart, the call it resumes (if any) and its resume token."""
        limits = rt.settings.limits
        try:
            async with asyncio.timeout(limits.idle_timeout_s):
                first = await anext(requests)
        except StopAsyncIteration:
            raise invalid("stream closed before the CallStart message") from None
        except TimeoutError:
            raise ServiceError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no CallStart within {limits.idle_timeout_s:g} s") from None
        spec = await check_start(first, rt, self.gate, tenant)
        token = first.start.resume_token
        if not token:
            return spec, None, secrets.token_urlsafe(24)
        return spec, await take_over(self.store, rt, self.gate, spec, first.start), token

    async def _serve(self, rt: Runtime, spec: CallSpec, resumed: CallState | None,
                     token: str, requests: AsyncIterator[pb.CallInput]
                     ) -> AsyncIterator[pb.CallOutput]:
        limits, store_cfg = rt.settings.limits, rt.settings.store
        # While the call runs its state outlives it by the window, whatever happens to
        # this process; when it ends cleanly the state goes.
        continuity = Continuity(self.store, token, spec.session_id,
                                limits.max_call_s + store_cfg.resume_window_s, self.metrics,
                                redact=rt.settings.records.redact)
        # The only reader of the request stream; the session's idle timeout never
        # cancels a gRPC read.
        inputs: Inbox[pb.CallInput] = Inbox(limits.inbound_queue_messages, limits.idle_timeout_s)
        inputs.start(requests)
        out: Outbox[pb.CallOutput] = Outbox(limits.outbound_queue_messages)
        session = CallSession(rt, spec, inputs, out, continuity, resumed)

        async def serve() -> None:
            try:
                await session.run()
            finally:
                out.put(None)

        rt.call_started(spec.transport)
        self.sessions.add(session)
        runner = asyncio.create_task(serve(), name=f"call-{spec.call_id}")
        failure: tuple[str, str] | None = None
        try:
            async for item in out:
                yield item
            failure = ("internal", "the call ended without a reason")  # if not ended
            if (exc := runner.exception()) is not None:
                if isinstance(exc, ConnectionError):
                    # A telephony wire that broke without hanging up (its adapter says
                    # so): the gateway vanished, as when a gRPC stream is cancelled.
                    failure = ("gateway_lost", str(exc) or "the wire broke")
                    return
                if isinstance(exc, ServiceError):
                    failure = (exc.code.name.lower(), exc.message)
                    log.info("call %s failed: %s", spec.call_id, exc.message)
                    raise exc
                failure = ("internal", f"call failed: {exc}")
                log.error("call %s crashed", spec.call_id, exc_info=exc)
                raise ServiceError(grpc.StatusCode.INTERNAL, f"call failed: {exc}")
            # The call ended from this side (transfer, idle...): give the gateway a moment
            # to close its half after CallEnded, so the stream ends cleanly with OK
            # instead of racing frames it is still sending.
            await inputs.finish(_CLOSE_WAIT_S)
        finally:
            self.sessions.discard(session)
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await inputs.close()
            if failure is None and (session.ended is None or session.ended[0] == "CALLER_HANGUP"):
                # gRPC cancelled the stream (the gateway's connection broke): the gateway
                # vanished, it did not hang up, even if its stream read as closed.
                session.ended = None
                failure = ("gateway_lost", "the gateway went away before the call ended")
            # Only a call whose gateway vanished can be resumed; one that ended is over.
            continuity.finish(store_cfg.resume_window_s
                              if failure and failure[0] == "gateway_lost" else 0)
            self._call_over(rt, session, failure or ("internal", ""))

    def _call_over(self, rt: Runtime, session: CallSession, failure: tuple[str, str]) -> None:
        """Count the call and store its record."""
        if session.ended is not None:
            reason, detail = session.ended
            self.metrics.calls_completed.labels(reason, session.spec.transport).inc()
        else:
            reason, detail = failure
            self.metrics.calls_failed.labels(reason, session.spec.transport).inc()
            if reason == "gateway_lost":
                log.info("call %s: gateway went away mid-call", session.spec.call_id)
        rt.call_ended()
        self.metrics.inbound_peak.observe(session.inbound_peak)
        session.ledger.close_record(reason, detail)

    async def drain(self, grace_s: float) -> None:
        """Refuse new calls, give those in progress `grace_s` to end, then end the rest
        with a spoken goodbye."""
        self.gate.draining = True
        self.metrics.draining.set(1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        log.info("draining: %d calls in progress, %.0f s grace", len(self.sessions), grace_s)
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.1)
        for session in list(self.sessions):
            session.shutdown("the server is shutting down")
        deadline = loop.time() + 25  # the goodbye is at most a few seconds of audio
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.1)
        await self.generations.close()

    # ------------------------------------------------------------------ operator RPCs

    async def GetServerInfo(self, request: pb.ServerInfoRequest,
                            context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        await self._operator(context, "server info")
        return server_info(self.generations, self.gate.draining, self.listeners,
                           self.admission.active)

    async def ReloadModels(self, request: pb.ReloadModelsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ReloadModelsResponse:
        await self._operator(context, "model reload")
        try:
            return await self.generations.reload()
        except ServiceError as exc:
            await context.abort(exc.code, exc.message)

    async def _operator(self, context: grpc.aio.ServicerContext, what: str) -> None:
        """Go on only with an operator's key; otherwise the RPC ends refused."""
        try:
            self.admission.operator(context)
        except Rejected as exc:
            await self.admission.refuse(context, exc, what)
