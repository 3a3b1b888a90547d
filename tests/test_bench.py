"""`voxline bench` against the test server: 2 calls of 2 turns, every turn in the JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import DATA


def test_short_bench_reports_every_turn(server, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "bench", "--server", server, "--calls", "2",
         "--turns", "2", "--seed", "3", "--data", str(DATA / "read_misc"),
         "--end-of-turn-ms", "1200", "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "voice_to_voice" in proc.stdout and "word error rate" in proc.stdout
    report = json.loads(out.read_text())
    summary, turns = report["summary"], report["turns"]
    assert summary["calls"] == {"completed": 2, "failed": 0, "rejected": 0}
    assert sorted((t["call"], t["turn"]) for t in turns) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    run_ms = summary["elapsed_s"] * 1000
    for t in turns:
        assert 0 < t["voice_to_voice_ms"] < run_ms, t
        assert 0 < t["transcript_ms"] < run_ms, t
        assert t["reference"] and "wer" in t and 0 <= t["wer"] <= 1.5, t
        assert t["server"]["stt_ms"] > 0
    assert summary["voice_to_voice_ms"]["n"] == 4
    assert 0 < summary["voice_to_voice_ms"]["p50"] <= summary["voice_to_voice_ms"]["p95"]
    assert summary["wer"] is not None and summary["wer"] < 0.5


def test_bench_counts_a_failed_call_and_exits_non_zero(tmp_path):
    """A call that cannot be placed (nothing listens on the port) is counted as failed,
    reported with its gRPC status, and the exit code says so."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "bench", "--server", "127.0.0.1:1", "--calls",
         "1", "--turns", "1", "--data", str(DATA / "read_misc"), "--json", str(out),
         "--quiet", "--timeout", "5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["summary"]["calls"]["failed"] == 1
    assert report["summary"]["failures"][0]["code"] == "UNAVAILABLE"
    assert "UNAVAILABLE" in proc.stdout
