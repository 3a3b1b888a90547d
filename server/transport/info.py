"""GetServerInfo's answer: models of every live generation, calls, schedulers, memory
(an operator's view: it names model paths and every profile)."""

from __future__ import annotations

import resource
from collections import Counter

from voxline import __version__
from voxline.agent.profile import list_profiles
from voxline.config import profile_dirs
from voxline.scheduling.stats import BatchStats
from voxline.transport.generations import Generations
from voxline.v1 import voice_agent_pb2 as pb


def server_info(generations: Generations, draining: bool, listeners: dict[str, int],
                active: Counter[str]) -> pb.ServerInfo:
    rt = generations.current
    counts = rt.repository.load_counts
    llms = rt.llm_schedulers()
    models = {m.instance_id: m for g in generations.live for m in g.models.values()}
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
        active_calls=rt.stats.active,
        calls_total=rt.stats.total,
        agent_profiles=list_profiles(profile_dirs(rt.settings)),
        rss_bytes=rss_bytes(),
        schedulers=[_scheduler_stats(name, s.stats) for name, s in
                    (("vad", rt.vad_scheduler), ("stt", rt.stt_scheduler),
                     *(("llm", s) for s in llms))],
        draining=draining,
        model_generation=rt.generation,
        speculations_used=rt.stats.speculations_used,
        speculations_wasted=rt.stats.speculations_wasted,
        llm_prompt_tokens_evaluated=sum(s.prompt_evaluated for s in llms),
        llm_prompt_tokens_reused=sum(s.prompt_reused for s in llms),
        transports=[pb.TransportListener(name=name, port=port, active_calls=active[name])
                    for name, port in listeners.items()],
    )


def _scheduler_stats(name: str, stats: BatchStats) -> pb.SchedulerStats:
    s = stats.summary()
    return pb.SchedulerStats(
        name=name, batches=stats.batches, items=stats.items, batch_sizes=dict(stats.sizes),
        queue_wait_ms_p50=s["queue_wait_ms_p50"], queue_wait_ms_p95=s["queue_wait_ms_p95"],
        compute_ms_p50=s["compute_ms_p50"], compute_ms_p95=s["compute_ms_p95"],
        dropped=stats.dropped,
    )


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0
