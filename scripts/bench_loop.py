"""The call path's cost on the event loop, and voice-to-voice, in one run.

    python scripts/bench_loop.py --json bench/loop.json

Against one fresh `voxline serve` (default CPU models, records and metrics on):

- `voice`: `voxline bench` on the latency set at 1 / 4 / 8 concurrent calls (8 calls of
  3 turns per level, 16 kHz PCM16, real time, `--seed 1 --ramp 1.6`), p50 / p95
  voice-to-voice;
- `loop`: 8 and 32 concurrent G.711 μ-law calls of 2 turns (what gateways send), and
  the CPU the server's event-loop thread (the process's main thread, read from
  /proc/PID/task/PID/stat) and the whole process spent while they ran, per second of
  caller audio the server received (`voxline_audio_seconds_total{direction="in"}`).

Run it on the code before a change and after, on the same machine, one right after
the other; the figures to compare are the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voxline.audio.formats import Encoding  # noqa: E402
from voxline.bench import LATENCY_SET, BenchConfig, run_bench  # noqa: E402
from voxline.client.local_server import server_process  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "speech"
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads), in seconds."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _audio_in_s(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'^voxline_audio_seconds_total\{direction="in"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _voice(summary: dict) -> dict:
    v = summary["voice_to_voice_ms"]
    return {"calls": summary["calls"], "turns": summary["turns"],
            "voice_to_voice_ms": {k: v.get(k) for k in ("n", "p50", "p95")},
            "audio_lost_ms": summary["audio_lost_ms"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--voice-levels", default="1,4,8")
    ap.add_argument("--loop-levels", default="8,32")
    ap.add_argument("--label", default="", help="a name for this run in the JSON")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report: dict = {"label": args.label, "voice": {}, "loop": {}}
    voice_base = BenchConfig(data=[DATA / "read_misc", DATA / "riva_examples"],
                             files=LATENCY_SET, total_calls=8, turns=3, seed=1, ramp_s=1.6)
    loop_base = BenchConfig(data=[DATA / "read_misc"], turns=2, seed=1, ramp_s=2.0,
                            encoding=Encoding.MULAW, sample_rate=8000, reply_timeout_s=180)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "server.yaml"
        config.write_text(yaml.safe_dump({
            "server": {"metrics_port": 0}, "records": {"path": str(Path(tmp) / "calls.db")},
            "limits": {"max_concurrent_calls": 64}}))
        with server_process(config, Path(tmp) / "server.log") as server:
            pid = server.proc.pid
            for n in (int(x) for x in args.voice_levels.split(",") if x):
                print(f"voice: {n} concurrent calls", file=sys.stderr)
                cfg = BenchConfig(**{**vars(voice_base), "server": server.address, "calls": n})
                report["voice"][n] = _voice(asyncio.run(run_bench(cfg, progress=False))
                                            ["summary"])
                print(f"  {report['voice'][n]}", file=sys.stderr)
            for n in (int(x) for x in args.loop_levels.split(",") if x):
                print(f"loop: {n} concurrent μ-law calls", file=sys.stderr)
                cfg = BenchConfig(**{**vars(loop_base), "server": server.address,
                                     "calls": n, "total_calls": n})
                loop0, proc0 = _cpu_s(pid, pid), _cpu_s(pid)
                audio0, t0 = _audio_in_s(server.metrics_url), time.monotonic()
                summary = asyncio.run(run_bench(cfg, progress=False))["summary"]
                loop_cpu, proc_cpu = _cpu_s(pid, pid) - loop0, _cpu_s(pid) - proc0
                audio = _audio_in_s(server.metrics_url) - audio0
                wall = time.monotonic() - t0
                report["loop"][n] = {
                    **_voice(summary), "wall_s": round(wall, 1),
                    "caller_audio_s": round(audio, 1),
                    "loop_cpu_s": round(loop_cpu, 2), "process_cpu_s": round(proc_cpu, 2),
                    # the same calls and turns every run (seeded): CPU per call, and
                    # per second of one call's audio (calls last longer when replies
                    # come later, so read both)
                    "loop_cpu_s_per_call": round(loop_cpu / n, 3),
                    "loop_cpu_ms_per_call_s": round(1000 * loop_cpu / audio, 2),
                    "process_cpu_ms_per_call_s": round(1000 * proc_cpu / audio, 2),
                    "loop_share_of_one_core": round(loop_cpu / wall, 3),
                }
                print(f"  {report['loop'][n]}", file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
