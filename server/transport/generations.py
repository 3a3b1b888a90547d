"""Model generations: the one new calls and requests start on, and the older ones that
calls still use. A reload loads changed models into a new generation beside the
current one; an old generation's own models are released when its last call or
request ends. Converse and the Riva services hold a generation the same way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import grpc

from voxline.errors import ServiceError
from voxline.runtime import Runtime
from voxline.v1 import voice_agent_pb2 as pb
from voxline.workers import Background

log = logging.getLogger(__name__)


class Generations:
    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
        self.live = [runtime]  # the current one and those calls still use
        self._reload_lock = asyncio.Lock()
        self._background = Background()

    @contextlib.contextmanager
    def hold(self) -> Iterator[Runtime]:
        """The current generation, kept for the block (a reload meanwhile does not
        close its models under it)."""
        rt = self.current
        rt.active += 1
        try:
            yield rt
        finally:
            rt.active -= 1
            self.release_if_unused(rt)

    def release_if_unused(self, rt: Runtime) -> None:
        """Close an old generation once its last call or request has ended."""
        if rt is not self.current and rt.active == 0 and rt in self.live:
            self.live.remove(rt)
            self._background.spawn(rt.release(self.current), f"release-gen-{rt.generation}")

    @property
    def calls_on_old(self) -> int:
        return sum(g.active for g in self.live if g is not self.current)

    async def reload(self) -> pb.ReloadModelsResponse:
        """Load changed manifests into a new generation (ReloadModels, SIGHUP)."""
        async with self._reload_lock:
            old = self.current
            loop = asyncio.get_running_loop()
            try:
                new, changed = await loop.run_in_executor(old.executors["reload"], old.reload)
            except Exception as exc:  # a bad manifest, missing weights: keep serving
                log.exception("model reload failed")
                old.metrics.model_reloads.labels("failed").inc()
                raise ServiceError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"reload failed, still serving the previous models: {exc}"
                                   ) from exc
            if new is not None:
                await new.warm()
                self.current = new
                self.live.append(new)
                new.metrics.model_reloads.labels("ok").inc()
                log.info("model generation %d: reloaded %s", new.generation, ", ".join(changed))
                if old.active == 0:
                    self.live.remove(old)
                    await old.release(new)
            return pb.ReloadModelsResponse(reloaded=changed,
                                           model_generation=self.current.generation,
                                           calls_on_old_models=self.calls_on_old)

    async def close(self) -> None:
        """At shutdown: releases finish, and the profiles' HTTP clients close."""
        await self._background.wait()
        for rt in self.live:
            await rt.close_tools()
