"""Prometheus metrics of one server process, named voxline_* (and the standard
process_* figures: memory, CPU, file descriptors).

Durations are in seconds and audio in seconds (Prometheus base units); a dashboard
divides by 60 for minutes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Voice-to-voice and stage latencies: fine below a second, coarse up to a minute.
_LATENCY = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
_WAIT = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)

STAGES = ("end_of_turn", "stt_final", "llm_queue", "llm_first_token", "tts_first_chunk")
_TOKENS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # process_resident_memory_bytes and the rest: the dashboard's memory panel (a
        # registry of our own does not get the default registry's process collector).
        ProcessCollector(registry=r)
        self.active_calls = Gauge("voxline_active_calls", "Calls in progress", registry=r)
        # `transport`: what the call came in on (grpc, riva, sip, twilio, audiosocket,
        # vonage).
        self.transport_calls = Gauge("voxline_transport_calls",
                                     "Calls (and Riva streams) holding a slot, by transport",
                                     ["transport"], registry=r)
        self.calls_started = Counter("voxline_calls_started", "Calls accepted",
                                     ["transport"], registry=r)
        self.calls_completed = Counter(
            "voxline_calls_completed", "Calls that ended cleanly, by CallEnded reason",
            ["reason", "transport"], registry=r)
        self.calls_failed = Counter(
            "voxline_calls_failed", "Calls that ended with an error status or a lost gateway",
            ["reason", "transport"], registry=r)
        self.calls_rejected = Counter(
            "voxline_calls_rejected", "Calls refused before they started",
            ["reason", "transport"], registry=r)
        self.voice_to_voice = Histogram(
            "voxline_voice_to_voice_seconds",
            "From the end of the caller's speech to the agent's first audio", buckets=_LATENCY,
            registry=r)
        self.stage = Histogram("voxline_stage_seconds", "Latency of each stage of a turn",
                               ["stage"], buckets=_LATENCY, registry=r)
        self.batch_size = Histogram("voxline_scheduler_batch_size", "Items per model batch",
                                    ["scheduler"], buckets=_BATCH, registry=r)
        self.queue_wait = Histogram("voxline_scheduler_queue_wait_seconds",
                                    "Time an item waited for its batch", ["scheduler"],
                                    buckets=_WAIT, registry=r)
        self.input_lag = Histogram(
            "voxline_input_lag_seconds", "How long caller audio waited in the server between "
            "arriving and being processed (sampled once a second of each call's audio)",
            buckets=_WAIT, registry=r)
        self.inbound_peak = Histogram(
            "voxline_inbound_queue_peak_messages", "The most caller messages that waited "
            "in one call's inbound queue (observed when the call ends; bounded by "
            "limits.inbound_queue_messages)", buckets=(1, 2, 5, 10, 25, 50, 100, 250, 1000),
            registry=r)
        self.loop_lag = Histogram(
            "voxline_event_loop_lag_seconds", "How late the event loop woke for a timer "
            "(sampled every second)", buckets=_WAIT, registry=r)
        self.loop_cpu = Gauge("voxline_event_loop_cpu_seconds", "CPU time the event-loop "
                              "thread has used (all the call path's Python work)",
                              registry=r)
        self.fallbacks = Counter("voxline_fallbacks", "Fallbacks taken, by kind", ["kind"],
                                 registry=r)
        self.tool_calls = Counter("voxline_tool_calls", "Tool calls by tool and outcome",
                                  ["tool", "outcome"], registry=r)
        self.audio = Counter("voxline_audio_seconds", "Call audio, in from callers and out "
                             "to them", ["direction"], registry=r)
        self.llm_tokens = Counter("voxline_llm_tokens", "LLM tokens, prompt (in) and "
                                  "completion (out)", ["direction"], registry=r)
        self.llm_prompt_tokens = Histogram(
            "voxline_llm_prompt_tokens", "Prompt tokens per turn the in-process LLM "
            "evaluated, and those whose KV it reused", ["kind"], buckets=_TOKENS, registry=r)
        self.speculations = Counter(
            "voxline_speculations", "Replies prepared while the caller paused, by outcome "
            "(used, wasted)", ["outcome"], registry=r)
        self.tts_characters = Counter("voxline_tts_characters", "Characters synthesised",
                                      registry=r)
        self.model_reloads = Counter("voxline_model_reloads", "Model reloads, by outcome",
                                     ["outcome"], registry=r)
        self.draining = Gauge("voxline_draining", "1 while the server drains for shutdown",
                              registry=r)
        self.riva_requests = Counter(
            "voxline_riva_requests", "Riva-compatible API requests, by method and gRPC status",
            ["method", "code"], registry=r)
        r.register(LLMFleetCollector())
        self.calls_resumed = Counter("voxline_calls_resumed", "Calls taken up again on a "
                                     "new stream with their resume token", registry=r)
        self.store_errors = Counter("voxline_store_errors", "Conversation store operations "
                                    "that failed, by operation", ["op"], registry=r)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on a daemon thread; returns the port bound."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

    async def watch_loop(self, period_s: float = 1.0) -> None:
        """Sample the running loop: how late it wakes, and its thread's CPU time."""
        loop = asyncio.get_running_loop()
        clock = time.pthread_getcpuclockid(threading.get_ident())
        self.loop_cpu.set_function(lambda: time.clock_gettime(clock))
        while True:
            due = loop.time() + period_s
            await asyncio.sleep(period_s)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    def scheduler_observer(self, name: str) -> Callable[[int, list[float]], None]:
        size, wait = self.batch_size.labels(name), self.queue_wait.labels(name)

        def observe(n: int, waits_ms: list[float]) -> None:
            size.observe(n)
            for w in waits_ms:
                wait.observe(w / 1000)

        return observe


class LLMFleetCollector(Collector):
    """The replicas of LLM fleets (engines/llm_fleet.py), read when /metrics is scraped:
    the fleet keeps its own figures, so engines need no handle on Metrics."""

    def collect(self) -> list[Metric]:
        from voxline.engines import llm_fleet

        requests = CounterMetricFamily(
            "voxline_llm_replica_requests", "LLM requests by replica (URL without "
            "credentials) and outcome: ok, retried (failed, sent to another replica), error",
            labels=["replica", "outcome"])
        for (replica, outcome), n in sorted(llm_fleet.replica_counts().items()):
            requests.add_metric([replica, outcome], n)
        up = GaugeMetricFamily("voxline_llm_replica_up", "1 while an LLM replica takes "
                               "requests, 0 after a failure until one succeeds again",
                               labels=["replica"])
        busy = GaugeMetricFamily("voxline_llm_replica_in_flight",
                                 "LLM requests this process has on a replica now",
                                 labels=["replica"])
        for replica, (is_up, n) in sorted(llm_fleet.replica_states().items()):
            up.add_metric([replica], 1 if is_up else 0)
            busy.add_metric([replica], n)
        return [requests, up, busy]
