"""The VoiceAgent gRPC service: checks each call's start message, runs a CallSession,
and streams its events back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import AsyncIterator

import grpc

from voxline import __version__
from voxline.agent.profile import ProfileError, list_profiles
from voxline.audio.formats import AudioFormatError, CallAudioFormat, Encoding
from voxline.config import profile_dirs
from voxline.runtime import Runtime
from voxline.scheduling.stats import BatchStats
from voxline.session.call import CallError, CallSession, CallSpec
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

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
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def Converse(
        self, request_iterator: AsyncIterator[pb.CallInput], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CallOutput]:
        limits = self.rt.settings.limits
        try:
            first = await asyncio.wait_for(anext(request_iterator), limits.idle_timeout_s)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "stream closed before the CallStart message")
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no CallStart within {limits.idle_timeout_s:g} s")
        try:
            spec = check_start(first, self.rt)
        except CallError as exc:
            log.info("call rejected: %s", exc.message)
            await context.abort(exc.code, exc.message)
        if self.rt.stats.active >= limits.max_concurrent_calls:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"server is at its limit of {limits.max_concurrent_calls} "
                                "concurrent calls; retry later or on another replica")

        inputs: asyncio.Queue = asyncio.Queue()
        out: asyncio.Queue = asyncio.Queue()
        session = CallSession(self.rt, spec, inputs, out)

        async def read() -> None:
            # The only reader of the request stream; the session waits on the queue, so
            # its idle timeout never cancels a gRPC read.
            try:
                async for msg in request_iterator:
                    inputs.put_nowait(msg)
            finally:
                inputs.put_nowait(None)

        async def serve() -> None:
            try:
                await session.run()
            finally:
                out.put_nowait(None)

        self.rt.call_started()
        reader = asyncio.create_task(read())
        runner = asyncio.create_task(serve())
        try:
            while (item := await out.get()) is not None:
                yield item
            if (exc := runner.exception()) is not None:
                if isinstance(exc, CallError):
                    log.info("call %s failed: %s", spec.call_id, exc.message)
                    await context.abort(exc.code, exc.message)
                log.error("call %s crashed", spec.call_id, exc_info=exc)
                await context.abort(grpc.StatusCode.INTERNAL, f"call failed: {exc}")
            # The call ended from this side (transfer, idle...): give the gateway a moment
            # to close its half after CallEnded, so the stream ends cleanly with OK
            # instead of racing frames it is still sending.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), 2.0)
        finally:
            self.rt.call_ended()
            for task in (runner, reader):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def GetServerInfo(
        self, request: pb.ServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerInfo:
        counts = self.rt.repository.load_counts
        return pb.ServerInfo(
            version=__version__,
            models=[
                pb.LoadedModel(
                    name=m.name, kind=m.manifest.kind, engine=m.manifest.engine,
                    source=str(m.weights), load_count=counts.get(m.name, 0),
                    instance_id=m.instance_id, load_seconds=m.load_seconds,
                    calls_served=m.calls_served,
                )
                for m in self.rt.repository.loaded()
            ],
            active_calls=self.rt.stats.active,
            calls_total=self.rt.stats.total,
            agent_profiles=list_profiles(profile_dirs(self.rt.settings)),
            rss_bytes=_rss_bytes(),
            schedulers=[_scheduler_stats(name, s.stats) for name, s in
                        (("vad", self.rt.vad_scheduler), ("stt", self.rt.stt_scheduler))],
        )


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
