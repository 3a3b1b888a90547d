"""Builds the gRPC server: VoiceAgent, standard health checking and reflection, on an
insecure port or with TLS (mutual TLS when a client CA is set)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from voxline.config import TLSSection
from voxline.console.app import ConsoleServing, start_console
from voxline.record_store import retention_loop
from voxline.riva.services import add_riva_services
from voxline.runtime import Runtime
from voxline.transport.gate import ConfigError, Gate
from voxline.transport.handlers import add_servicer
from voxline.transport.service import VoiceAgentService
from voxline.transport.telephony import start_telephony
from voxline.transport.wire import Listening
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VoiceAgent"].full_name


@dataclass
class Serving:
    server: grpc.aio.Server
    port: int
    service: VoiceAgentService
    health: health.aio.HealthServicer
    loop_watch: asyncio.Task
    retention: asyncio.Task | None
    telephony: list[Listening]
    console: ConsoleServing | None = None

    async def drain_and_stop(self) -> None:
        """SIGTERM: report NOT_SERVING, let calls finish or say goodbye, then stop."""
        self.loop_watch.cancel()
        if self.retention is not None:
            self.retention.cancel()
        await self.health.enter_graceful_shutdown()
        await self.service.drain(self.service.rt.settings.server.drain_grace_s)
        for listening in self.telephony:
            await listening.close()
        if self.console is not None:
            await self.console.close()
        await self.server.stop(grace=2)
        await self.service.store.close()


def server_credentials(tls: TLSSection) -> grpc.ServerCredentials | None:
    if tls.cert_file is None and tls.key_file is None:
        if tls.client_ca_file is not None:
            raise ConfigError("tls.client_ca_file needs tls.cert_file and tls.key_file")
        return None
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError("TLS needs both tls.cert_file and tls.key_file")
    try:
        pair = (tls.key_file.read_bytes(), tls.cert_file.read_bytes())
        ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from exc
    return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                       require_client_auth=ca is not None)


async def start_server(runtime: Runtime, host: str, port: int) -> Serving:
    """Start serving (port 0: any free port; Serving.port says which)."""
    settings = runtime.settings
    gate = Gate(settings)  # raises ConfigError for a tenant without a key
    credentials = server_credentials(settings.tls)
    limits = settings.limits
    server = grpc.aio.server(options=[
        # gRPC refuses a bigger message with RESOURCE_EXHAUSTED before any handler; the
        # Converse stream holds its (much smaller) messages to max_message_bytes itself.
        ("grpc.max_receive_message_length",
         max(limits.max_message_bytes, limits.riva_max_message_bytes)),
        ("grpc.max_send_message_length", 4 << 20),
    ])
    service = VoiceAgentService(runtime, gate)
    add_servicer(server, pb_grpc.add_VoiceAgentServicer_to_server, service)
    riva = add_riva_services(server, service)  # Riva clients on the same port
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, *riva, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    await runtime.warm()  # every profile's prompt prefix in the LLM's KV before any call
    service.listeners["grpc"] = bound
    telephony = await start_telephony(service, host)
    cfg = settings.console
    console = None if cfg.port is None else \
        await start_console(service, cfg.host or host, cfg.port)
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    for name in (SERVICE_NAME, *riva):
        await health_servicer.set(name, serving)
    watch = asyncio.create_task(runtime.metrics.watch_loop(), name="loop-watch")
    services, records = runtime.services, settings.records
    retention = None if services.records is None else asyncio.create_task(
        retention_loop(services.records, records.retention_days, services.executors["records"]),
        name="records-retention")
    return Serving(server, bound, service, health_servicer, watch, retention, telephony,
                   console)
