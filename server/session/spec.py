"""What a call is (its accepted start) and what each agent turn of it carries."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from voxline.agent.agent import Control, TurnOutcome
from voxline.audio.formats import CallAudioFormat
from voxline.records import ToolRecord
from voxline.session.speculation import Speculation
from voxline.session.turns import TurnEnded


@dataclass
class CallSpec:
    """The accepted CallStart, checked."""

    call_id: str
    audio: CallAudioFormat
    profile: str
    metadata: dict[str, str]
    end_of_turn_ms: int
    tenant: str = ""
    transport: str = "grpc"  # what the call came in on (metrics, records, the console)
    # Record the call: the caller consented and the profile or the tenant opts in.
    record: bool = False
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)


_CLAUSE_SLACK_MS = 100  # a clause cut in its last 100 ms counts as heard


@dataclass
class AgentTurn:
    turn_id: int
    started: float  # perf_counter when the caller's turn ended (or the call began)
    endpoint_ms: int = 0
    input_lag_ms: int = 0  # the turn's last caller audio waited this long in the server
    stt_ms: int = 0
    tts_first_chunk_ms: int = 0
    voice_to_voice_ms: int = 0
    chunks: int = 0
    audio_ms: float = 0.0
    caller_text: str = ""
    utterance: TurnEnded | None = None
    interruptible: bool = True
    supervisor: str = ""  # who whispered the turn's words (a supervisor's turn)
    whispered: str = ""  # and those words
    spoken: list[str] = field(default_factory=list)
    # Where each spoken clause ends in the turn's audio (ms), and how much of the turn
    # the gateway reported played (PlaybackMark; None: it reports nothing).
    clause_ends: list[float] = field(default_factory=list)
    played_ms: float | None = None
    # Barge-in: how much of the turn the caller had heard when it was cut.
    heard_ms: float | None = None

    def heard_text(self) -> str:
        """The reply as the caller heard it: every clause when it played out, only the
        clauses that had played when a barge-in cut it."""
        if self.heard_ms is None:
            return " ".join(self.spoken)
        return " ".join(text for text, end in zip(self.spoken, self.clause_ends, strict=False)
                        if end <= self.heard_ms + _CLAUSE_SLACK_MS)
    cancelled: bool = False
    control: Control | None = None  # the agent ends the call after this turn
    # How the agent answered (None: it did not, or was cut short).
    outcome: TurnOutcome | None = None
    tools: list[ToolRecord] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    # The reply prepared while the caller paused, when this turn uses it.
    speculation: Speculation | None = None
    # The caller turn whose final transcript this one's replaces (0: none).
    supersedes: int = 0
    final_sent: bool = False  # its final transcript went to the gateway
    finished: bool = False  # its end was handled (metrics, record, carry)
    # Set once its final transcript is known (or failed): a hang-up waits for it.
    transcribed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def answered(self) -> TurnOutcome:
        """The agent's figures for the turn (zeros when it gave none)."""
        return self.outcome or TurnOutcome()
