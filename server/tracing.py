"""OpenTelemetry tracing: a trace per call, a span per turn and per stage, exported over
OTLP/gRPC when `tracing.otlp_endpoint` is set; otherwise a no-op tracer costs nothing."""

from __future__ import annotations

from opentelemetry import trace

from voxline import __version__
from voxline.config import TracingSection


class Tracing:
    def __init__(self, cfg: TracingSection) -> None:
        self._provider = None
        if not cfg.otlp_endpoint:
            self.tracer: trace.Tracer = trace.NoOpTracer()
            return
        # Imported only when tracing is on: the SDK and exporter start threads.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        insecure = not cfg.otlp_endpoint.startswith("https://")
        provider = TracerProvider(resource=Resource.create(
            {"service.name": cfg.service_name, "service.version": __version__}))
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=cfg.otlp_endpoint, insecure=insecure),
            schedule_delay_millis=1000))
        self._provider = provider
        self.tracer = provider.get_tracer("voxline", __version__)

    def close(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()  # flushes the spans still queued
