"""How long `voxline serve` takes to listen, with empty caches (every profile's fixed
phrases rendered by TTS, the knowledge index built) and with the caches the first start
left (`$VOXLINE_CACHE`: rendered phrases, knowledge index). Alternates the two, several
times, in the same run; prints the figures and the warm/cold ratio and writes JSON.

    python scripts/bench_start.py [--runs 3] [--json bench/start.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start_seconds(cache: Path) -> float:
    """Seconds from launch to "listening on", with `cache` as $VOXLINE_CACHE."""
    env = {**os.environ, "VOXLINE_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "voxline.cli", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listening on" in line:
                return time.perf_counter() - t0
        raise RuntimeError(f"voxline serve exited with {proc.wait()} before listening")
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    cold, warm = [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            cold.append(start_seconds(Path(tmp)))  # empty: renders and indexes
            warm.append(start_seconds(Path(tmp)))  # what the first start left
        print(f"run {i + 1}: cold {cold[-1]:.1f} s, warm {warm[-1]:.1f} s", flush=True)
    report = {"runs": args.runs, "cold_s": [round(x, 2) for x in cold],
              "warm_s": [round(x, 2) for x in warm],
              "cold_median_s": round(statistics.median(cold), 2),
              "warm_median_s": round(statistics.median(warm), 2),
              "warm_over_cold": round(statistics.median(warm) / statistics.median(cold), 3)}
    print(f"start to listening: cold caches {report['cold_median_s']} s, warm "
          f"{report['warm_median_s']} s (warm/cold {report['warm_over_cold']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
