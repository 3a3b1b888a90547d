"""Registers the Riva-compatible services on Voxline's gRPC server."""

from __future__ import annotations

import grpc
from riva.client.proto import riva_asr_pb2_grpc as rasr_grpc
from riva.client.proto import riva_tts_pb2_grpc as rtts_grpc

from voxline.riva import asr, tts
from voxline.riva.access import Access
from voxline.transport.handlers import add_servicer
from voxline.transport.service import VoiceAgentService

SERVICE_NAMES = (asr.SERVICE_NAME, tts.SERVICE_NAME)


def add_riva_services(server: grpc.aio.Server, voice: VoiceAgentService) -> tuple[str, ...]:
    """Serve nvidia.riva.asr.RivaSpeechRecognition and nvidia.riva.tts.RivaSpeechSynthesis
    beside VoiceAgent, on its models, keys and limits; returns their names."""
    access = Access(voice.admission, voice.generations)
    add_servicer(server, rasr_grpc.add_RivaSpeechRecognitionServicer_to_server,
                 asr.RivaASRService(access))
    add_servicer(server, rtts_grpc.add_RivaSpeechSynthesisServicer_to_server,
                 tts.RivaTTSService(access))
    return SERVICE_NAMES
