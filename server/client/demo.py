"""The quick-start demo call (`voxline demo`, scripts/demo.sh): real people's recordings
from ../shared/data/speech ordering coffee by phone, streamed in real time as a phone
gateway would, answered by the `coffee_shop` agent.

Each caller turn was chosen because tiny.en hears it the same way at 8 kHz and 16 kHz
and the agent's router takes it without the LLM, so the conversation (tools, arguments,
replies) is the same on every machine; only the latencies differ."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voxline.audio.formats import Encoding
from voxline.client.connect import Connection
from voxline.client.gateway import CallOptions, CallResult, load_recording, place_call
from voxline.config import PROJECT_ROOT

SPEECH = PROJECT_ROOT.parent / "shared" / "data" / "speech"
PROFILE = "coffee_shop"
# The recordings hold up at 8 kHz (the two asterisk prompts were recorded at it): the
# demo is a G.711 μ-law call, as most phone lines are.
ENCODING, RATE = Encoding.MULAW, 8000


@dataclass(frozen=True)
class DemoTurn:
    recording: str  # under ../shared/data/speech
    says: str  # what the caller says (manifest: verbatim, or the order's slots)
    route: str  # the router intent that answers it
    tool: str = ""
    arguments: dict[str, str] = field(default_factory=dict)


TURNS = [
    DemoTurn("asterisk_8k/wav/hello-world.wav", "Hello world.", "greeting"),
    DemoTurn("picovoice_s2i/505a930b-d364-4010-a71b-7dd270e9e576.wav",
             "Can I have a small latte with soy milk?", "order_drink", "order_drink",
             {"size": "small", "coffeeDrink": "latte", "milkAmount": "soy milk"}),
    DemoTurn("picovoice_s2i/da30be12-67a0-450e-83c2-101ed2025a2b.wav",
             "Make me a double shot mocha with milk.", "order_drink", "order_drink",
             {"numberOfShots": "double shot", "coffeeDrink": "mocha", "milkAmount": "milk"}),
    DemoTurn("asterisk_8k/wav/privacy-thankyou.wav", "Thank you.", "goodbye", "end_call"),
]


def recordings(rate: int = RATE) -> list[np.ndarray]:
    return [load_recording(SPEECH / t.recording, rate) for t in TURNS]


async def run_demo(target: str | Connection, call_id: str,
                   on_event: Callable[[dict], None] | None = None) -> CallResult:
    """Place the demo call; the agent ends it after the goodbye."""
    opts = CallOptions(encoding=ENCODING, rate=RATE, profile=PROFILE, call_id=call_id,
                       keep_audio=True, hangup_at_end=False, stay_on_line_s=15)
    return await place_call(target, recordings(), opts, on_event)
