"""Call records: what happened on each call (turns, transcripts, tool calls, timings,
usage and its estimated cost), kept in SQLite for the retention period, with personal
data redacted."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
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
    for pattern in _PATTERNS:
        text = pattern.sub(_REDACTED, text)
    return text


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

    def finish(self, reason: str, detail: str, prices: CostSection, scrub: bool) -> None:
        self.ended_at = time.time()
        self.reason, self.detail = reason, detail
        self.cost = estimate_cost(self.ended_at - self.started_at, self.usage, prices)
        if scrub:
            self.detail = redact(self.detail)
            for t in self.turns:
                t.caller_text, t.agent_text = redact(t.caller_text), redact(t.agent_text)
                for tool in t.tools:
                    tool.arguments = redact(tool.arguments)
            for action in self.supervisor:
                action.text = redact(action.text)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration_s"] = round(self.ended_at - self.started_at, 3)
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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    session_id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    profile TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    reason TEXT NOT NULL,
    cost REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ended_at ON calls (ended_at);
"""


_SESSION_ID = re.compile(r"[0-9A-Za-z_-]{1,128}")


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
    if not _SESSION_ID.fullmatch(session_id):
        raise ValueError(f"{session_id[:64]!r} is not a session id")
    return recordings_dir(records) / f"{session_id}.wav"


class RecordStore:
    """SQLite, one short connection per operation (writes come from worker threads;
    the CLI reads while the server writes, which WAL mode allows)."""

    def __init__(self, path: Path, retention_days: float) -> None:
        self.path = Path(path)
        self.retention_s = retention_days * 86400
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._purged = 0.0
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
        self.purge()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:  # commits, or rolls back on an error
                yield db
        finally:
            db.close()

    def write(self, record: CallRecord) -> None:
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.session_id, record.call_id, record.tenant, record.profile,
                 record.started_at, record.ended_at, record.reason, record.cost["total"],
                 json.dumps(record.to_dict())))
            if time.time() - self._purged > 3600:  # at most hourly
                self.purge(db)

    def purge(self, db: sqlite3.Connection | None = None) -> int:
        """Delete records older than the retention period; returns how many."""
        self._purged = time.time()
        if db is None:
            with self._connect() as own:
                return self.purge(own)
        cutoff = time.time() - self.retention_s
        old = [row[0] for row in db.execute("SELECT session_id FROM calls WHERE ended_at < ?",
                                            (cutoff,))]
        cur = db.execute("DELETE FROM calls WHERE ended_at < ?", (cutoff,))
        self._purge_recordings(old, cutoff)
        return cur.rowcount

    def _purge_recordings(self, sessions: list[str], cutoff: float) -> None:
        """The recordings of the records just deleted, and any other recording older
        than the retention (one whose record was never written: a crash)."""
        folder = recordings_dir(self.path)
        if not folder.is_dir():
            return
        doomed = {folder / f"{s}.wav" for s in sessions if _SESSION_ID.fullmatch(s)}
        for path in folder.glob("*.wav"):
            with contextlib.suppress(OSError):  # gone meanwhile: nothing to do
                if path in doomed or path.stat().st_mtime < cutoff:
                    path.unlink()

    def find(self, call_id: str) -> dict[str, Any] | None:
        """The newest record of the call with this id (a resumed call has several)."""
        with self._connect() as db:
            row = db.execute("SELECT record FROM calls WHERE call_id = ? "
                             "ORDER BY ended_at DESC LIMIT 1", (call_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def find_session(self, session_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM calls WHERE session_id = ?",
                             (session_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def search(self, since: float | None = None, until: float | None = None,
               tenant: str = "", profile: str = "", reason: str = "", text: str = "",
               limit: int = 50) -> list[dict[str, Any]]:
        """Records newest first: started in [since, until], of the tenant, profile and end
        reason given, with `text` in what the caller or the agent said (any case)."""
        where, args = [], []
        for column, value in (("tenant", tenant), ("profile", profile), ("reason", reason)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        if until is not None:
            where.append("started_at <= ?")
            args.append(until)
        if text:
            where.append("EXISTS (SELECT 1 FROM json_each(record, '$.turns') WHERE "
                         "instr(lower(json_extract(value, '$.caller_text') || ' ' || "
                         "json_extract(value, '$.agent_text')), lower(?)) > 0)")
            args.append(text)
        query = "SELECT record FROM calls" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY ended_at DESC LIMIT ?",
                              [*args, limit]).fetchall()
        return [json.loads(r[0]) for r in rows]

    def recent(self, limit: int = 50, tenant: str = "", recorded: bool = False
               ) -> list[dict[str, Any]]:
        """The newest records first (`recorded`: only calls with a recording)."""
        where, args = [], []
        if tenant:
            where.append("tenant = ?")
            args.append(tenant)
        if recorded:
            where.append("coalesce(json_extract(record, '$.recording'), '') != ''")
        query = "SELECT record FROM calls" + (" WHERE " + " AND ".join(where) if where else "")
        query += " ORDER BY ended_at DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(query, [*args, limit]).fetchall()
        return [json.loads(r[0]) for r in rows]


def describe(rec: dict[str, Any]) -> list[str]:
    """A record as lines a person reads (`voxline calls --call ID`)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["started_at"]))
    lines = [f"call {rec['call_id']} ({rec['profile']}, tenant {rec['tenant'] or '-'}): "
             f"{when}, {rec['duration_s']:.1f} s, ended {rec['reason']} ({rec['detail']})"]
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
