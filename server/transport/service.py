"""The VoiceAgent gRPC service: checks each call's start message, runs a CallSession,
and streams its events back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import secrets
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
from google.protobuf.message import DecodeError

from voxline import __version__
from voxline.agent.profile import ProfileError, list_profiles
from voxline.audio.formats import AudioFormatError, CallAudioFormat, Encoding
from voxline.config import profile_dirs
from voxline.records import CallRecord, RecordStore
from voxline.runtime import Runtime
from voxline.scheduling.stats import BatchStats
from voxline.session.call import CallError, CallSession, CallSpec
from voxline.session.continuity import Continuity
from voxline.store import CallState, StoreError, open_store
from voxline.transport.gate import Gate, Rejected
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

_REFUSAL_READ_S = 2.0  # how long a refused stream may take to send its CallStart

log = logging.getLogger(__name__)

_ENCODINGS = {
    pb.AUDIO_ENCODING_PCM16: Encoding.PCM16,
    pb.AUDIO_ENCODING_MULAW: Encoding.MULAW,
    pb.AUDIO_ENCODING_ALAW: Encoding.ALAW,
}


def _bad(message: str) -> CallError:
    return CallError(grpc.StatusCode.INVALID_ARGUMENT, message)


def check_start(msg: pb.CallInput, runtime: Runtime) -> CallSpec:
    kind = msg.WhichOneof("payload")
    if kind != "start":
        raise _bad(f"the first message of a Converse stream must be `start` (CallStart), "
                   f"got `{kind or 'an empty CallInput'}`")
    start = msg.start
    if not 1 <= len(start.call_id) <= 128 or not start.call_id.isprintable():
        raise _bad("call_id must be 1 to 128 printable characters")
    encoding = _ENCODINGS.get(start.audio_format.encoding)
    if encoding is None:
        raise _bad(f"unknown audio encoding {start.audio_format.encoding}; "
                   "use AUDIO_ENCODING_PCM16, AUDIO_ENCODING_MULAW or AUDIO_ENCODING_ALAW")
    try:
        audio = CallAudioFormat(encoding, start.audio_format.sample_rate_hz)
    except AudioFormatError as exc:
        raise _bad(str(exc)) from exc
    eot = start.end_of_turn_silence_ms or runtime.settings.turn.end_of_turn_silence_ms
    if not 200 <= eot <= 3000:
        raise _bad(f"end_of_turn_silence_ms={eot} is outside 200..3000")
    profile = start.agent_profile or runtime.settings.default_profile
    try:
        runtime.agent(profile)
    except ProfileError as exc:
        raise CallError(grpc.StatusCode.NOT_FOUND, str(exc)) from exc
    return CallSpec(start.call_id, audio, profile, dict(start.metadata), eot)


class VoiceAgentService(pb_grpc.VoiceAgentServicer):
    def __init__(self, runtime: Runtime, gate: Gate) -> None:
        self.rt = runtime  # the current model generation: new calls start on it
        self.gate = gate
        self.metrics = runtime.metrics
        self.sessions: set[CallSession] = set()
        self._generations = [runtime]  # the current one and those calls still use
        self.store = open_store(runtime.settings.store)
        self._reload_lock = asyncio.Lock()

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> str:
        try:
            return self.gate.authenticate(context.invocation_metadata())
        except Rejected as exc:
            await self._refuse(context, exc)
            raise  # not reached: abort raises

    async def _refuse(self, context: grpc.aio.ServicerContext, exc: Rejected,
                      request_iterator: AsyncIterator[pb.CallInput] | None = None) -> None:
        self.metrics.calls_rejected.labels(exc.reason).inc()
        log.info("call refused (%s): %s", exc.reason, exc.message)
        if request_iterator is not None:
            # grpc-python's asyncio client reports a write that meets the server's
            # closing status as its own INTERNAL (grpc/grpc#36066), hiding the reason
            # from a gateway. Taking the CallStart first (briefly, and nothing more)
            # means the gateway's only write has landed before the refusal.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(anext(request_iterator), _REFUSAL_READ_S)
        await context.abort(exc.code, exc.message, trailing_metadata=exc.trailing_metadata())

    async def Converse(
        self, request_iterator: AsyncIterator[pb.CallInput], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CallOutput]:
        # Refused calls cost next to nothing: no slot, no model, one message read.
        try:
            tenant = self.gate.authenticate(context.invocation_metadata())
            self.gate.admit(tenant)
        except Rejected as exc:
            await self._refuse(context, exc, request_iterator)
            raise  # not reached: abort raises
        try:
            async for out in self._converse(tenant, request_iterator, context):
                yield out
        finally:
            self.gate.release(tenant)

    async def _converse(
        self, tenant: str, request_iterator: AsyncIterator[pb.CallInput],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.CallOutput]:
        rt, limits = self.rt, self.rt.settings.limits
        try:
            first = await asyncio.wait_for(anext(request_iterator), limits.idle_timeout_s)
            if (too_big := _oversized(first, limits.max_message_bytes)) is not None:
                raise too_big
            spec = check_start(first, rt)
        except StopAsyncIteration:
            await self._invalid(context, CallError(grpc.StatusCode.INVALID_ARGUMENT,
                                                   "stream closed before the CallStart message"))
        except DecodeError as exc:
            await self._invalid(context, _unparsable(exc))
        except TimeoutError:
            wait = f"no CallStart within {limits.idle_timeout_s:g} s"
            await self._invalid(context, CallError(grpc.StatusCode.DEADLINE_EXCEEDED, wait))
        except CallError as exc:
            await self._invalid(context, exc)
        spec.tenant = tenant
        store_cfg = rt.settings.store
        token, resumed = first.start.resume_token, None
        if token:
            resumed = await self._resume(context, rt, spec, first.start)
        else:
            token = secrets.token_urlsafe(24)
        # While the call runs its state outlives it by the window, whatever happens to
        # this process; when it ends cleanly the state goes.
        continuity = Continuity(self.store, token, spec.session_id,
                                limits.max_call_s + store_cfg.resume_window_s, self.metrics)

        inputs: asyncio.Queue = asyncio.Queue()
        out: asyncio.Queue = asyncio.Queue()
        session = CallSession(rt, spec, inputs, out, continuity, resumed)

        async def read() -> None:
            # The only reader of the request stream; the session waits on the queue, so
            # its idle timeout never cancels a gRPC read.
            try:
                async for msg in request_iterator:
                    if (too_big := _oversized(msg, limits.max_message_bytes)) is not None:
                        inputs.put_nowait(too_big)  # the session ends the call with it
                        return
                    inputs.put_nowait(msg)
            except DecodeError as exc:
                inputs.put_nowait(_unparsable(exc))  # the session ends the call with it
            finally:
                inputs.put_nowait(None)

        async def serve() -> None:
            try:
                await session.run()
            finally:
                out.put_nowait(None)

        rt.call_started()
        self.sessions.add(session)
        reader = asyncio.create_task(read())
        runner = asyncio.create_task(serve())
        failure: tuple[str, str] | None = None
        try:
            while (item := await out.get()) is not None:
                yield item
            failure = ("internal", "the call ended without a reason")  # if not ended
            if (exc := runner.exception()) is not None:
                if isinstance(exc, CallError):
                    failure = (exc.code.name.lower(), exc.message)
                    log.info("call %s failed: %s", spec.call_id, exc.message)
                    await context.abort(exc.code, exc.message)
                failure = ("internal", f"call failed: {exc}")
                log.error("call %s crashed", spec.call_id, exc_info=exc)
                await context.abort(grpc.StatusCode.INTERNAL, f"call failed: {exc}")
            # The call ended from this side (transfer, idle...): give the gateway a moment
            # to close its half after CallEnded, so the stream ends cleanly with OK
            # instead of racing frames it is still sending.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 2.0)
        finally:
            self.sessions.discard(session)
            for task in (runner, reader):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if failure is None and (session.ended is None or session.ended[0] == "CALLER_HANGUP"):
                # gRPC cancelled the stream (the gateway's connection broke): the gateway
                # vanished, it did not hang up, even if its stream read as closed.
                session.ended = None
                failure = ("gateway_lost", "the gateway went away before the call ended")
            # Only a call whose gateway vanished can be resumed; one that ended is over.
            continuity.finish(store_cfg.resume_window_s
                              if failure and failure[0] == "gateway_lost" else 0)
            self._call_over(rt, session, failure or ("internal", ""))

    async def _resume(self, context: grpc.aio.ServicerContext, rt: Runtime, spec: CallSpec,
                      start: pb.CallStart) -> CallState:
        """Take over the call of `start.resume_token` for this stream (aborts if it
        cannot be)."""
        window = rt.settings.store.resume_window_s
        token = start.resume_token
        unknown = CallError(
            grpc.StatusCode.NOT_FOUND,
            f"resume_token is unknown or expired (a call can be resumed for {window:g} s "
            "after its stream breaks, by the same tenant); start a new call without "
            "resume_token")
        try:
            state = await self.store.peek(token)
            # Another tenant's token is treated as unknown: it reveals nothing.
            if state is None or state.tenant != spec.tenant:
                await self._invalid(context, unknown)
            try:
                rt.agent(state.profile)
            except ProfileError as exc:
                await self._invalid(context, CallError(grpc.StatusCode.NOT_FOUND, str(exc)))
            state = await self.store.claim(token, spec.session_id,
                                           rt.settings.limits.max_call_s + window)
        except StoreError as exc:
            self.metrics.store_errors.labels("resume").inc()
            await self._invalid(context, CallError(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot resume: the conversation store is unreachable ({exc}); retry, or "
                "start a new call without resume_token"))
        if state is None:  # expired between the two steps
            await self._invalid(context, unknown)
        # The call goes on as it was; only the audio format is the new stream's own.
        spec.call_id, spec.profile, spec.metadata = state.call_id, state.profile, state.metadata
        spec.end_of_turn_ms = start.end_of_turn_silence_ms or state.end_of_turn_ms
        self.metrics.calls_resumed.inc()
        log.info("call %s: resuming after session %s", state.call_id,
                 state.sessions[-1] if state.sessions else "?")
        return state

    async def _invalid(self, context: grpc.aio.ServicerContext, exc: CallError) -> NoReturn:
        self.metrics.calls_rejected.labels("invalid").inc()
        log.info("call rejected: %s", exc.message)
        await context.abort(exc.code, exc.message)

    def _call_over(self, rt: Runtime, session: CallSession, failure: tuple[str, str]) -> None:
        """Count the call, store its record, and release an old generation it was the
        last call of."""
        if session.ended is not None:
            reason, detail = session.ended
            self.metrics.calls_completed.labels(reason).inc()
        else:
            reason, detail = failure
            self.metrics.calls_failed.labels(reason).inc()
            if reason == "gateway_lost":
                log.info("call %s: gateway went away mid-call", session.spec.call_id)
        rt.call_ended()
        services, settings = rt.services, rt.settings
        session.sync_usage()  # a turn cut short by the end of the call counts too
        if services.records is not None:
            session.record.finish(reason, detail, settings.costs, settings.records.redact)
            services.executors["records"].submit(_write_record, services.records,
                                                 session.record)
        self.release_if_unused(rt)

    def release_if_unused(self, rt: Runtime) -> None:
        """Close an old model generation once its last call or request has ended."""
        if rt is not self.rt and rt.active == 0 and rt in self._generations:
            self._generations.remove(rt)
            asyncio.get_running_loop().create_task(rt.release(self.rt))

    async def reload(self) -> pb.ReloadModelsResponse:
        """Load changed manifests into a new generation (the CLI, SIGHUP)."""
        async with self._reload_lock:
            old = self.rt
            try:
                new, changed = await asyncio.to_thread(old.reload)
            except Exception as exc:  # a bad manifest, missing weights: keep serving
                log.exception("model reload failed")
                self.metrics.model_reloads.labels("failed").inc()
                raise CallError(grpc.StatusCode.FAILED_PRECONDITION,
                                f"reload failed, still serving the previous models: {exc}"
                                ) from exc
            if new is not None:
                await new.warm()
                self.rt = new
                self._generations.append(new)
                self.metrics.model_reloads.labels("ok").inc()
                log.info("model generation %d: reloaded %s", new.generation, ", ".join(changed))
                if old.active == 0:
                    self._generations.remove(old)
                    await old.release(new)
            return pb.ReloadModelsResponse(
                reloaded=changed, model_generation=self.rt.generation,
                calls_on_old_models=sum(g.active for g in self._generations if g is not self.rt))

    async def ReloadModels(self, request: pb.ReloadModelsRequest,
                           context: grpc.aio.ServicerContext) -> pb.ReloadModelsResponse:
        await self._authenticate(context)
        try:
            return await self.reload()
        except CallError as exc:
            await context.abort(exc.code, exc.message)
            raise  # not reached

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

    async def GetServerInfo(
        self, request: pb.ServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerInfo:
        await self._authenticate(context)
        counts = self.rt.repository.load_counts
        llms = self.rt.llm_schedulers()
        models = {m.instance_id: m for g in self._generations for m in g.models.values()}
        return pb.ServerInfo(
            version=__version__,
            models=[
                pb.LoadedModel(
                    name=m.name, kind=m.manifest.kind, engine=m.manifest.engine,
                    source=str(m.weights), load_count=counts.get(m.name, 0),
                    instance_id=m.instance_id, load_seconds=m.load_seconds,
                    calls_served=m.calls_served,
                )
                for m in models.values()
            ],
            active_calls=self.rt.stats.active,
            calls_total=self.rt.stats.total,
            agent_profiles=list_profiles(profile_dirs(self.rt.settings)),
            rss_bytes=_rss_bytes(),
            schedulers=[_scheduler_stats(name, s.stats) for name, s in
                        (("vad", self.rt.vad_scheduler), ("stt", self.rt.stt_scheduler),
                         *(("llm", s) for s in llms))],
            draining=self.gate.draining,
            model_generation=self.rt.generation,
            speculations_used=self.rt.stats.speculations_used,
            speculations_wasted=self.rt.stats.speculations_wasted,
            llm_prompt_tokens_evaluated=sum(s.prompt_evaluated for s in llms),
            llm_prompt_tokens_reused=sum(s.prompt_reused for s in llms),
        )


def _oversized(msg: pb.CallInput, limit: int) -> CallError | None:
    size = msg.ByteSize()
    if size <= limit:
        return None
    return CallError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"a CallInput of {size} bytes is larger than max ({limit} bytes, "
                     "limits.max_message_bytes); send audio in frames of 10-200 ms")


def _unparsable(exc: DecodeError) -> CallError:
    return CallError(grpc.StatusCode.INVALID_ARGUMENT,
                     f"a message is not a valid voxline.v1.CallInput ({exc}); send "
                     "serialized CallInput messages")


def _write_record(store: RecordStore, record: CallRecord) -> None:
    try:
        store.write(record)
    except Exception:  # a full disk must not take calls down
        log.exception("could not write the record of call %s", record.call_id)


def _scheduler_stats(name: str, stats: BatchStats) -> pb.SchedulerStats:
    s = stats.summary()
    return pb.SchedulerStats(
        name=name, batches=stats.batches, items=stats.items, batch_sizes=dict(stats.sizes),
        queue_wait_ms_p50=s["queue_wait_ms_p50"], queue_wait_ms_p95=s["queue_wait_ms_p95"],
        compute_ms_p50=s["compute_ms_p50"], compute_ms_p95=s["compute_ms_p95"],
        dropped=stats.dropped,
    )


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0
