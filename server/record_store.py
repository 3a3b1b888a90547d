"""Where call records live: one SQLite file, written as each call goes, read by the CLI
and the console.

Policy, in one place:
- A call's record is written when the call is accepted (its header) and again after each
  completed turn, then once more when it ends with its reason. A row whose `reason` is
  empty is a call in progress; its `owner` names the server process writing it. After a
  crash, an OOM kill or `kill -9`, the next server started on that host ends the rows
  its dead predecessors left open as `server_lost`: every completed turn is kept.
- Opening the store never deletes anything. Retention is the server's: it calls `purge`
  with its own `records.retention_days` at start and every hour (`retention_loop`); a
  command that only reads (`voxline calls`) opens the file read-only.
- The file is private to the server's user (0600, as the recordings beside it), and so
  is the folder the server makes for it (0700): they hold transcripts, tool arguments and
  whispers. A folder that was already there keeps its mode (it may be shared), with a
  warning when other users can read it.
- Older files (before `owner` existed) are migrated in place when a server opens them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from voxline.records import SESSION_ID, CallRecord, recordings_dir

log = logging.getLogger(__name__)

SERVER_LOST = "server_lost"
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
    record TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS calls_ended_at ON calls (ended_at);
"""
# How often the server applies its retention.
RETENTION_EVERY_S = 3600.0


def this_process() -> str:
    """The owner of the rows this process writes: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    """Whether the process that owns a row may still be writing it (it runs on this
    host); rows of other hosts are theirs to end."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # another host's server: not ours to end
    if not pid.isdigit() or int(pid) == os.getpid():
        return False  # ours from before this start: a previous life of this pid
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class RecordStore:
    """SQLite, one short connection per operation (writes come from one worker thread;
    the CLI reads while the server writes, which WAL mode allows)."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no call records at {self.path}")
            return
        folder = self.path.parent
        if folder.is_dir():
            # A folder that was there may be shared (never narrow one we did not make).
            if folder.stat().st_mode & 0o077:
                log.warning("the call records' folder %s is open to other users; the "
                            "records file itself is private (0600)", folder)
        else:
            folder.mkdir(mode=0o700, parents=True)
        # SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        os.chmod(self.path, 0o600)  # a file from before may have had the umask's mode
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(calls)")}
            if "owner" not in columns:  # a file from before records were written per turn
                db.execute("ALTER TABLE calls ADD COLUMN owner TEXT NOT NULL DEFAULT ''")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        else:
            db = sqlite3.connect(self.path, timeout=10)
        try:
            with db:  # commits, or rolls back on an error
                yield db
        finally:
            db.close()

    def write(self, record: CallRecord) -> None:
        """Store the record as it stands: the whole call so far, in one statement (a turn
        whose redaction changed an earlier turn's text rewrites both at once)."""
        ended = record.ended_at or time.time()  # in progress: when last written
        with self._lock, self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.session_id, record.call_id, record.tenant, record.profile,
                 record.started_at, ended, record.reason, record.cost.get("total", 0.0),
                 json.dumps(record.to_dict(ended)), "" if record.reason else this_process()))

    def recover(self) -> int:
        """End the calls that servers on this host left in progress when they died
        (`server_lost`, at their last write, every completed turn kept); how many."""
        with self._lock, self._connect() as db:
            rows = db.execute("SELECT session_id, owner, ended_at, record FROM calls "
                              "WHERE reason = ''").fetchall()
            lost = [(sid, ended, rec) for sid, owner, ended, rec in rows if not _alive(owner)]
            for sid, ended, rec in lost:
                record = json.loads(rec)
                record.update(reason=SERVER_LOST, ended_at=ended, detail=(
                    "the server stopped during the call (a crash, a kill or a power loss); "
                    "the turns it had completed are kept"))
                db.execute("UPDATE calls SET reason = ?, owner = '', record = ? "
                           "WHERE session_id = ?", (SERVER_LOST, json.dumps(record), sid))
        for sid, _, _ in lost:
            log.warning("call record %s: the server died during the call; ended as %s",
                        sid, SERVER_LOST)
        return len(lost)

    def purge(self, retention_days: float) -> int:
        """Delete the records of calls that ended more than `retention_days` ago, and
        their recordings; returns how many. Only the server calls this, with its own
        configuration."""
        cutoff = time.time() - retention_days * 86400
        with self._lock, self._connect() as db:
            old = [row[0] for row in db.execute(
                "SELECT session_id FROM calls WHERE ended_at < ? AND reason != ''", (cutoff,))]
            deleted = db.execute("DELETE FROM calls WHERE ended_at < ? AND reason != ''",
                                 (cutoff,)).rowcount
        self._purge_recordings(old, cutoff)
        return deleted

    def _purge_recordings(self, sessions: list[str], cutoff: float) -> None:
        """The recordings of the records just deleted, and any other recording older
        than the retention (one whose record was never written)."""
        folder = recordings_dir(self.path)
        if not folder.is_dir():
            return
        doomed = {folder / f"{s}.wav" for s in sessions if SESSION_ID.fullmatch(s)}
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


async def retention_loop(store: RecordStore, retention_days: float, executor: Executor,
                         every_s: float = RETENTION_EVERY_S) -> None:
    """The server's retention: at start and then every `every_s`, off the event loop."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            deleted = await loop.run_in_executor(executor, store.purge, retention_days)
            if deleted:
                log.info("retention: %d call records older than %g days deleted", deleted,
                         retention_days)
        except Exception:  # a locked or full disk: try again next time
            log.exception("retention: could not purge the call records")
        await asyncio.sleep(every_s)
