"""The calls in progress as a supervisor sees them: one row per call and the server's
load, filtered to what the viewer may see."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from voxline.console.auth import Viewer
from voxline.session.call import CallSession
from voxline.transport.service import VoiceAgentService

# Where gateways put the caller's number in CallStart.metadata (SIP From, Twilio and
# Vonage parameters, our own clients), first match wins.
_CALLER_KEYS = ("caller_id", "caller", "from", "From", "ani", "ANI", "callerid")


def call_row(session: CallSession) -> dict[str, Any]:
    spec, ledger = session.spec, session.ledger
    turns = ledger.record.turns
    last_v2v = next((t.voice_to_voice_ms for t in reversed(turns)
                     if t.turn_id and t.voice_to_voice_ms), 0)
    caller = next((spec.metadata[k] for k in _CALLER_KEYS if spec.metadata.get(k)), "")
    return {
        "session_id": spec.session_id, "call_id": spec.call_id, "transport": spec.transport,
        "tenant": spec.tenant, "profile": spec.profile, "caller": caller,
        "state": session.state.value, "started_at": ledger.record.started_at,
        "duration_s": round(time.time() - ledger.record.started_at, 1),
        "turns": ledger.caller_turns, "last_voice_to_voice_ms": last_v2v,
        "fallbacks": sum(len(t.fallbacks) for t in turns),
        "recording": session.recorder is not None,
        "can_transfer": session.profile.transfer is not None,
    }


class LiveCalls:
    """Rows and load for the live page; the batch sizes are those since the last look
    (at most one a second), so they say what the server does now."""

    def __init__(self, service: VoiceAgentService) -> None:
        self.service = service
        self._seen: dict[str, tuple[int, int]] = {}  # scheduler -> (batches, items)
        self._recent: dict[str, float] = {}
        self._sampled = 0.0

    def session(self, viewer: Viewer, session_id: str) -> CallSession | None:
        """The call if the viewer may see it (else None: the same as no such call)."""
        for s in self.service.sessions:
            if s.spec.session_id == session_id and viewer.may_see(s.spec.tenant):
                return s
        return None

    def snapshot(self, viewer: Viewer) -> dict[str, Any]:
        mine = [s for s in self.service.sessions if viewer.may_see(s.spec.tenant)]
        rows = sorted((call_row(s) for s in mine), key=lambda r: r["started_at"])
        return {"load": {"active_calls": len(rows),
                         "by_transport": dict(Counter(r["transport"] for r in rows)),
                         "schedulers": self._schedulers(),
                         "draining": self.service.gate.draining},
                "calls": rows}

    def _schedulers(self) -> list[dict[str, Any]]:
        rt = self.service.rt
        named = [("vad", rt.vad_scheduler), ("stt", rt.stt_scheduler),
                 *(("llm", s) for s in rt.llm_schedulers())]
        now = time.monotonic()
        fresh = now - self._sampled >= 1.0
        if fresh:
            self._sampled = now
        out = []
        for i, (name, scheduler) in enumerate(named):
            stats, key = scheduler.stats, f"{name}{i}"
            if fresh:
                batches, items = self._seen.get(key, (0, 0))
                if stats.batches > batches:
                    self._recent[key] = (stats.items - items) / (stats.batches - batches)
                self._seen[key] = (stats.batches, stats.items)
            summary = stats.summary()
            out.append({"name": name,
                        "batch_size_now": round(self._recent.get(key, 0.0), 2),
                        "batch_size_mean": summary["mean_batch"],
                        "batch_size_max": max(stats.sizes, default=0),
                        "queue_wait_ms_p50": summary["queue_wait_ms_p50"],
                        "queue_wait_ms_p95": summary["queue_wait_ms_p95"]})
        return out
