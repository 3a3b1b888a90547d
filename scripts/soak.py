"""Soak benchmark: a server takes calls back to back for a long time (30 minutes by
default) while its memory is sampled. Reports resident memory per process over time
and its slope after warm-up (a leak shows as a steady positive slope), with the calls
completed and their voice-to-voice latency per window, so slowing down shows too.

    python scripts/soak.py --minutes 30 --calls 2 --json bench/soak.json

Not run in CI: it takes as long as it is told to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from voxline.bench import percentiles, read_manifest
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import server_process
from voxline.config import PROJECT_ROOT


def _rss_mb(proc: psutil.Process, children: bool = True) -> float:
    """Resident memory of a process, and of its children (the server has none today)."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True) if children else ():
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total / 2**20


def slope_mb_per_hour(samples: list[dict], skip_s: float) -> float:
    """Least-squares slope of server memory against time, after `skip_s` of warm-up."""
    points = [(s["t_s"], s["server_rss_mb"]) for s in samples if s["t_s"] >= skip_s]
    if len(points) < 3:
        return float("nan")
    t, mb = np.array(points).T
    return float(np.polyfit(t / 3600, mb, 1)[0])


async def soak(address: str, server: psutil.Process, args: argparse.Namespace) -> dict:
    recordings = read_manifest(args.data)
    audio = {r.path: load_recording(r.path, 16000) for r in recordings}
    rng = random.Random(args.seed)
    start = time.monotonic()
    deadline = start + args.minutes * 60
    calls: list[dict] = []
    samples: list[dict] = []
    me = psutil.Process()

    async def caller(n: int) -> None:
        while time.monotonic() < deadline:
            turns = [audio[rng.choice(recordings).path] for _ in range(args.turns)]
            began = time.monotonic() - start
            result = await place_call(address, turns, CallOptions(
                call_id=f"soak-{n}-{len(calls)}", end_of_turn_ms=args.end_of_turn_ms))
            calls.append({
                "t_s": round(began, 1), "ok": result.error is None and result.ended != "",
                "voice_to_voice_ms": [t["voice_to_voice_ms"] for t in result.turns
                                      if "voice_to_voice_ms" in t],
            })

    async def sampler() -> None:
        while time.monotonic() < deadline + args.interval_s:
            samples.append({"t_s": round(time.monotonic() - start, 1),
                            "server_rss_mb": round(_rss_mb(server), 1),
                            # this script alone (the server is its child)
                            "client_rss_mb": round(_rss_mb(me, children=False), 1),
                            "calls_done": len(calls)})
            s = samples[-1]
            print(f"{s['t_s']:7.0f} s  server {s['server_rss_mb']:7.1f} MB  "
                  f"client {s['client_rss_mb']:7.1f} MB  calls {s['calls_done']}", flush=True)
            await asyncio.sleep(args.interval_s)

    await asyncio.gather(sampler(), *(caller(n) for n in range(args.calls)))
    window_s = args.window_min * 60
    windows = []
    for w in range(int(np.ceil(args.minutes * 60 / window_s))):
        inside = [c for c in calls if w * window_s <= c["t_s"] < (w + 1) * window_s]
        v2v = [ms for c in inside for ms in c["voice_to_voice_ms"]]
        windows.append({"from_min": w * args.window_min, "calls": len(inside),
                        "failed": sum(not c["ok"] for c in inside),
                        "voice_to_voice_ms": percentiles(v2v)})
    skip_s = args.warmup_min * 60
    first = next((s for s in samples if s["t_s"] >= skip_s), samples[0])
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "calls": {"total": len(calls), "failed": sum(not c["ok"] for c in calls)},
        "server_rss_mb": {"start": samples[0]["server_rss_mb"],
                          "after_warmup": first["server_rss_mb"],
                          "end": samples[-1]["server_rss_mb"],
                          "max": max(s["server_rss_mb"] for s in samples)},
        "slope_mb_per_hour": {
            "server": round(slope_mb_per_hour(samples, skip_s), 2),
            # the second half alone: is it still growing once the caches are full?
            "server_second_half": round(slope_mb_per_hour(samples, args.minutes * 30), 2)},
        "windows": windows,
        "samples": samples,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--calls", type=int, default=2, help="concurrent calls, back to back")
    p.add_argument("--turns", type=int, default=2, help="caller turns per call")
    p.add_argument("--interval-s", type=float, default=30.0, help="memory sampling period")
    p.add_argument("--warmup-min", type=float, default=5.0,
                   help="minutes left out of the slope (caches filling)")
    p.add_argument("--window-min", type=float, default=5.0, help="latency report window")
    p.add_argument("--end-of-turn-ms", type=int, default=1000)
    p.add_argument("--data", type=Path,
                   default=PROJECT_ROOT.parent / "shared" / "data" / "speech" / "read_misc")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--log", type=Path, default=Path("soak-server.log"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # Records go to a scratch database: a soak writes thousands.
        config = Path(tmp) / "config.yaml"
        config.write_text(f"records: {{path: {tmp}/calls.db}}\n")
        with server_process(config, args.log) as server:
            report = asyncio.run(soak(server.address, psutil.Process(server.proc.pid), args))
    print(json.dumps({k: report[k] for k in ("calls", "server_rss_mb", "slope_mb_per_hour")},
                     indent=1))
    for w in report["windows"]:
        print(f"minutes {w['from_min']:>5g}+: {w['calls']:3d} calls, {w['failed']} failed, "
              f"p95 voice-to-voice {w['voice_to_voice_ms'].get('p95', 0):.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 1 if report["calls"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
