"""Builds the gRPC server: VoiceAgent, standard health checking and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from voxline.runtime import Runtime
from voxline.transport.service import VoiceAgentService
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["VoiceAgent"].full_name


async def start_server(runtime: Runtime, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start serving; returns the server and the port bound (useful with port 0)."""
    limit = runtime.settings.limits.max_message_bytes
    server = grpc.aio.server(options=[
        # Frames are small; a message near the limit is a client bug, refused by gRPC with
        # RESOURCE_EXHAUSTED before it reaches the call.
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", 4 << 20),
    ])
    pb_grpc.add_VoiceAgentServicer_to_server(VoiceAgentService(runtime), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(SERVICE_NAME, serving)
    return server, bound
