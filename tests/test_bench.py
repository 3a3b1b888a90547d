"""`voxline bench` against the test server: 2 calls of 2 turns, every turn in the JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from tests.conftest import DATA, ROOT

# Short recordings: these tests check what the bench reports, not how long speech goes.
# (Not the LJSpeech clips: "eighteen thirteen" against "1813" counts as two errors.)
SHORT = ["--files", "psx_cards_001", "psx_cards_003", "psx_goforward",
         *(f"psx_librivox_sense_and_sensibility_01_austen_64kb-0{n}" for n in (880, 930))]
# Short telephone-system prompts, one speaker, 8 kHz.
PROMPTS = ["--files", "hello-world", "number-not-answering", "transfer", "conf-muted",
           "simul-call-limit-reached", "privacy-thankyou", "agent-loggedoff",
           "confbridge-locked"]


def test_short_bench_reports_every_turn(server, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "bench", "--server", server, "--calls", "2",
         "--turns", "2", "--seed", "3", "--data", str(DATA / "read_misc"), *SHORT,
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
        # A reply prepared while the caller paused has its transcript already.
        assert t["server"]["stt_ms"] > 0 or t["server"]["speculative"], t
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

    # fixed concurrency for a duration: calls start back to back for 1 s, then it stops
    proc = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "bench", "--server", "127.0.0.1:1", "--calls",
         "2", "--duration", "1", "--turns", "1", "--data", str(DATA / "read_misc"),
         "--json", str(out), "--quiet", "--timeout", "5"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    summary = json.loads(out.read_text())["summary"]
    assert summary["calls"]["failed"] >= 2 and summary["calls"]["completed"] == 0
    assert summary["elapsed_s"] < 10


def test_sweep_stops_at_the_budget_and_plots(server, tmp_path):
    """A budget no CPU can meet (50 ms) stops the sweep after its first level, with
    capacity 0 and exit code 1; the JSON and the plot are still written."""
    out, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    proc = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "bench", "--server", server, "--sweep",
         "--budget-ms", "50", "--turns", "1", "--data", str(DATA / "read_misc"), *SHORT,
         "--end-of-turn-ms", "1200", "--json", str(out), "--plot", str(png), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["capacity"] == {"calls": 0, "budget_ms": 50.0, "stopped_at": 1}
    assert len(report["steps"]) == 1 and report["steps"][0]["summary"]["held"] is False
    assert report["steps"][0]["summary"]["voice_to_voice_ms"]["p95"] > 50
    assert "capacity: 0 concurrent calls" in proc.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    plan = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "capacity_plan.py"), str(out),
         "--average-calls", "10", "--peak-factor", "6", "--gpu-stt-streams", "400",
         "--gpu-llm-streams", "100", "--gpu-tts-streams", "300"],
        capture_output=True, text=True, timeout=60,
    )
    assert plan.returncode == 0, plan.stderr
    assert "peak concurrent calls: 60" in plan.stdout
    assert "no machine meets the budget" in plan.stdout  # capacity 0 on this budget
    assert "80 calls per node, limited by llm -> 1 nodes" in plan.stdout  # 100 x 0.8


def test_poisson_arrivals_in_mulaw(server, tmp_path):
    from voxline.bench import BenchConfig, arrival_times

    times = arrival_times(BenchConfig(rate=2.0, total_calls=2000, seed=7))
    gaps = np.diff([0.0, *times])
    assert len(times) == 2000 and abs(gaps.mean() - 0.5) < 0.05  # mean gap 1/rate
    assert arrival_times(BenchConfig(rate=2.0, duration_s=3.0, seed=7))[-1] <= 3.0

    out = tmp_path / "poisson.json"
    proc = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "bench", "--server", server, "--rate", "1",
         "--total-calls", "2", "--turns", "2", "--barge-in-share", "1", "--codec", "mulaw",
         "--sample-rate", "8000",
         "--data", str(DATA / "read_misc"), *SHORT, "--end-of-turn-ms", "1200",
         "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["summary"]["calls"]["completed"] == 2
    assert all(t["voice_to_voice_ms"] > 0 and "wer" in t for t in report["turns"])
    # every caller talked over the first reply: the barge-in reaction was measured
    barged = [t for t in report["turns"] if t["turn"] == 2]
    assert len(barged) == 2 and all(0 < t["barge_in_ms"] < 5000 for t in barged), barged
    assert report["summary"]["barge_in_ms"]["n"] == 2


def test_eight_concurrent_calls_complete_every_turn_with_no_audio_lost(server, tmp_path):
    """Batching on (the default): 8 telephone calls at once through the whole server on
    this small machine. Every turn is transcribed and answered, the server processed
    every millisecond of caller audio that was sent, and the VAD ran calls together."""
    import grpc

    from voxline.v1 import voice_agent_pb2 as pb
    from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

    out = tmp_path / "bench8.json"
    proc = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "bench", "--server", server, "--calls", "8",
         "--turns", "2", "--seed", "5", "--data", str(DATA / "asterisk_8k"), *PROMPTS, "--codec",
         "mulaw", "--sample-rate", "8000", "--ramp", "2", "--timeout", "180",
         "--json", str(out), "--quiet"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    summary, turns = json.loads(out.read_text())["summary"], json.loads(out.read_text())["turns"]
    assert summary["calls"] == {"completed": 8, "failed": 0, "rejected": 0}
    assert len(turns) == 16
    for t in turns:
        assert t["transcript"] and t["voice_to_voice_ms"] > 0, t
    assert summary["audio_lost_ms"] == 0
    assert summary["wer"] < 0.5

    with grpc.insecure_channel(server) as ch:
        info = pb_grpc.VoiceAgentStub(ch).GetServerInfo(pb.ServerInfoRequest())
    sched = {s.name: s for s in info.schedulers}
    assert max(sched["vad"].batch_sizes) > 1  # one model run served several calls
    assert sched["stt"].items >= 16 and sched["stt"].compute_ms_p50 > 0
