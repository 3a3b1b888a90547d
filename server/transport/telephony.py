"""Starts the telephony listeners the config turns on (`telephony:`), each adapter on
its own port, all feeding the same VoiceAgentService as gRPC."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from voxline.config import Listener
from voxline.transport.wire import Listening, check_listener

if TYPE_CHECKING:
    from voxline.transport.service import VoiceAgentService

# transport name -> the module whose `listen(service, section, host)` starts it
ADAPTERS = {
    "sip": "voxline.transport.sip",
    "twilio": "voxline.transport.twilio",
    "audiosocket": "voxline.transport.audiosocket",
    "vonage": "voxline.transport.vonage",
}


async def start_telephony(service: VoiceAgentService, host: str) -> list[Listening]:
    telephony = service.rt.settings.telephony
    started: list[Listening] = []
    try:
        for name, module in ADAPTERS.items():
            section: Listener = getattr(telephony, name)
            if section.port is None:
                continue
            check_listener(name, section, service.gate)
            adapter = importlib.import_module(module)
            listening = await adapter.listen(service, section, section.host or host)
            service.listeners[name] = listening.port
            started.append(listening)
    except BaseException:
        for listening in started:
            await listening.close()
        raise
    return started
