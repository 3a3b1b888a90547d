"""Call records: what happened on each call (turns, transcripts, tool calls, timings,
usage and its estimated cost), with personal data redacted; `record_store.py` keeps them."""

from __future__ import annotations

import copy
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxline.config import CostSection, RecordsSection, Settings

_REDACTED = "[REDACTED]"
_DIGIT_WORD = r"(?:zero|oh|one|two|three|four|five|six|seven|eight|nine)"
_PATTERNS = [
    # Nine digits or more, with spaces, dashes or commas between them (as transcripts
    # write them): card numbers, national ids, account and phone numbers.
    re.compile(r"(?<![\w.])\d(?:[ ,-]{0,2}\d){8,}(?![\w])"),
    re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    # The same numbers spoken as words, the way a transcript writes them.
    re.compile(rf"\b{_DIGIT_WORD}(?:[\s,.-]+{_DIGIT_WORD}){{8,}}\b", re.IGNORECASE),
]


def redact(text: str) -> str:
    return redact_spoken([text])[0]


def redact_spoken(texts: list[str]) -> list[str]:
    """Texts said one after another (a caller's turns), redacted as one: a number split
    across two turns ("my card is 4111 1111", "1111 1111") is found, and each turn's part
    of it redacted."""
    joined = " ".join(texts)
    spans: list[tuple[int, int]] = []
    for a, b in sorted(m.span() for p in _PATTERNS for m in p.finditer(joined)):
        if spans and a <= spans[-1][1]:  # overlapping matches hide one stretch
            spans[-1] = (spans[-1][0], max(b, spans[-1][1]))
        else:
            spans.append((a, b))
    out, start = [], 0
    for text in texts:
        end = start + len(text)
        cuts = [(max(a, start) - start, min(b, end) - start) for a, b in spans
                if a < end and b > start]
        pieces, at = [], 0
        for a, b in cuts:
            pieces += [text[at:a], _REDACTED]
            at = b
        out.append("".join([*pieces, text[at:]]))
        start = end + 1
    return out


class RedactingFilter(logging.Filter):
    """Redacts every log line (installed on the root handlers when records.redact)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


@dataclass
class ToolRecord:
    name: str
    arguments: str
    outcome: str
    duration_ms: int


@dataclass
class TurnRecord:
    turn_id: int
    caller_text: str = ""
    agent_text: str = ""
    route: str = ""
    interrupted: bool = False
    endpoint_ms: int = 0
    stt_ms: int = 0
    llm_first_token_ms: int = 0
    tts_first_chunk_ms: int = 0
    voice_to_voice_ms: int = 0
    tools: list[ToolRecord] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    # The later turn whose final transcript holds this one's words too (the caller went
    # on after a pause); this turn's caller_text is then empty.
    superseded_by: int = 0


@dataclass
class SupervisorAction:
    """What a supervisor did on the call from the console, and who."""

    at_s: float  # seconds into the call
    who: str
    action: str  # whisper, transfer, end
    text: str = ""  # a whisper's words


@dataclass
class Usage:
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0
    tts_chars: int = 0
    llm_tokens_in: int = 0
    llm_tokens_out: int = 0


@dataclass
class CallRecord:
    call_id: str
    session_id: str
    profile: str
    tenant: str
    started_at: float  # unix seconds
    ended_at: float = 0.0
    reason: str = ""
    detail: str = ""
    models: dict[str, str] = field(default_factory=dict)  # kind -> name@instance
    turns: list[TurnRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: dict[str, Any] = field(default_factory=dict)
    # The session whose stream broke and that this one resumed ("" for a new call).
    resumed_from: str = ""
    transport: str = "grpc"  # what the call came in on: grpc, sip, twilio, audiosocket...
    supervisor: list[SupervisorAction] = field(default_factory=list)
    # The call's recording: its file name in the recordings folder beside the records
    # (recording_path), "" when the call was not recorded; and its length in seconds.
    recording: str = ""
    recording_s: float = 0.0

    def finish(self, reason: str, detail: str) -> None:
        self.ended_at = time.time()
        self.reason, self.detail = reason, detail

    def as_stored(self, prices: CostSection, scrub: bool) -> CallRecord:
        """What goes to the store now: a copy with the cost so far and, with `scrub`,
        personal data redacted. The call keeps its own words: each write redacts all of
        them again, so a later turn can change what an earlier one's stored text hides."""
        stored = copy.deepcopy(self)
        end = stored.ended_at or time.time()
        stored.cost = estimate_cost(end - stored.started_at, stored.usage, prices)
        if scrub:
            stored.detail = redact(stored.detail)
            callers = [t for t in stored.turns if t.caller_text]
            for t, text in zip(callers, redact_spoken([t.caller_text for t in callers]),
                               strict=True):
                t.caller_text = text
            for t in stored.turns:
                t.agent_text = redact(t.agent_text)
                for tool in t.tools:
                    tool.arguments = redact(tool.arguments)
            for action in stored.supervisor:
                action.text = redact(action.text)
        return stored

    def to_dict(self, ended_at: float = 0.0) -> dict[str, Any]:
        """As stored; a call in progress gives the time it was last written."""
        d = asdict(self)
        d["ended_at"] = ended_at or self.ended_at
        d["duration_s"] = round(d["ended_at"] - self.started_at, 3)
        return d


def estimate_cost(duration_s: float, u: Usage, p: CostSection) -> dict[str, Any]:
    items = {
        "call": duration_s / 60 * p.per_call_minute,
        "stt": u.audio_in_s / 60 * p.stt_per_audio_minute,
        "tts": u.tts_chars / 1000 * p.tts_per_1k_chars,
        "llm": (u.llm_tokens_in / 1000 * p.llm_per_1k_input_tokens
                + u.llm_tokens_out / 1000 * p.llm_per_1k_output_tokens),
    }
    return {"currency": p.currency, "total": round(sum(items.values()), 6),
            "items": {k: round(v, 6) for k, v in items.items()}}


SESSION_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")


def recordings_dir(records: Settings | RecordsSection | Path) -> Path:
    """Where call recordings live: `recordings/` beside the records database (the
    settings, their records section, or the database's path)."""
    if isinstance(records, Settings):
        records = records.records
    db = records.path if isinstance(records, RecordsSection) else Path(records)
    return db.parent / "recordings"


def recording_path(records: Settings | RecordsSection | Path, session_id: str) -> Path:
    """The recording of one call's session (whether or not it exists). ValueError for an
    id that is not a session id, so a name from a request cannot leave the folder."""
    if not SESSION_ID.fullmatch(session_id):
        raise ValueError(f"{session_id[:64]!r} is not a session id")
    return recordings_dir(records) / f"{session_id}.wav"


def describe(rec: dict[str, Any]) -> list[str]:
    """A record as lines a person reads (`voxline calls --call ID`)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["started_at"]))
    lines = [f"call {rec['call_id']} ({rec['profile']}, tenant {rec['tenant'] or '-'}): "
             f"{when}, {rec['duration_s']:.1f} s, "
             + (f"ended {rec['reason']} ({rec['detail']})" if rec["reason"] else "in progress")]
    for t in rec["turns"]:
        head = f"  turn {t['turn_id']}"
        if t.get("superseded_by"):
            lines.append(f"{head}: heard again with turn {t['superseded_by']}")
            continue
        if t["caller_text"]:
            lines.append(f"{head} caller: {t['caller_text']}")
        for tool in t["tools"]:
            lines.append(f"{head} tool  : {tool['name']}({tool['arguments']}) -> "
                         f"{tool['outcome']} [{tool['duration_ms']} ms]")
        if t["agent_text"]:
            lines.append(f"{head} agent : {t['agent_text']}")
        facts = [f"route {t['route']}"] if t["route"] else []
        if t["voice_to_voice_ms"] and t["turn_id"]:
            facts.append(f"voice-to-voice {t['voice_to_voice_ms']} ms")
        facts += ["interrupted"] * t["interrupted"] + [f"fallback {f}" for f in t["fallbacks"]]
        if facts:
            lines.append(f"{head}       : {', '.join(facts)}")
    for a in rec.get("supervisor", []):  # from the console, with who
        said = f": {a['text']}" if a["text"] else ""
        lines.append(f"  at {a['at_s']:.1f} s supervisor {a['who']}: {a['action']}{said}")
    if rec.get("recording"):
        lines.append(f"  recording: {rec['recording']} ({rec['recording_s']:.1f} s; "
                     "`voxline calls --call ID --recording-out FILE` copies it)")
    u, cost = rec["usage"], rec["cost"]
    lines.append(f"  usage: {u['audio_in_s']:.1f} s audio in, {u['audio_out_s']:.1f} s out, "
                 f"{u['tts_chars']} TTS characters, {u['llm_tokens_in']} + "
                 f"{u['llm_tokens_out']} LLM tokens; cost {cost['total']:.4f} "
                 f"{cost['currency']}")
    return lines
