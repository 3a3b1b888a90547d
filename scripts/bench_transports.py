"""Voice-to-voice through every entry, in one run:

    python scripts/bench_transports.py --json bench/transports.json

One fresh `voxline serve` (default CPU models) with every telephony listener on; then
`voxline bench` over gRPC (the baseline) and over SIP, Twilio, AudioSocket and Vonage,
each at 1 and 8 concurrent calls (8 calls of 2 turns per level, the latency set, real
time, the same seed). Every figure is measured at the caller's side: from the end of the
caller's speech to the first agent audio the platform's client receives. gRPC runs at 8
kHz μ-law like the phone transports (Vonage carries 16 kHz PCM), so the ratios compare
the entries, not the codecs.

The machine is shared and noisy: read the ratios to gRPC in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voxline.audio.formats import Encoding  # noqa: E402
from voxline.bench import LATENCY_SET, BenchConfig, run_bench  # noqa: E402
from voxline.client.local_server import server_process  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "speech"
TRANSPORTS = ("grpc", "sip", "twilio", "audiosocket", "vonage")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls-per-level", type=int, default=8)
    parser.add_argument("--transports", nargs="+", default=list(TRANSPORTS))
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="voxline-bench-transports-"))
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({
        "records": {"path": str(tmp / "calls.db")},
        "limits": {"max_concurrent_calls": 64},
        "telephony": {name: {"port": 0} for name in TRANSPORTS if name != "grpc"},
    }))
    results: dict[str, dict[str, dict]] = {}
    with server_process(config, tmp / "server.log") as server:
        for transport in args.transports:
            for level in args.levels:
                cfg = BenchConfig(
                    server=server.address, data=[DATA / "read_misc", DATA / "riva_examples"],
                    files=LATENCY_SET, calls=level,
                    total_calls=max(level, args.calls_per_level), turns=2, ramp_s=1.6,
                    encoding=Encoding.MULAW, sample_rate=8000, seed=1,
                    transport=transport,
                    transport_address="" if transport == "grpc"
                    else f"127.0.0.1:{server.ports[transport]}")
                report = asyncio.run(run_bench(cfg, progress=False))
                s = report["summary"]
                results.setdefault(transport, {})[str(level)] = {
                    "calls": s["calls"], "voice_to_voice_ms": s["voice_to_voice_ms"]}
                v = s["voice_to_voice_ms"]
                print(f"{transport:<12} {level:>2} calls: {s['calls']}  voice-to-voice "
                      f"p50 {v.get('p50', '-')} p95 {v.get('p95', '-')} ms "
                      f"(n={v['n']})", flush=True)
    base = results.get("grpc", {})
    print(f"\n{'transport':<12}{'calls':>6}{'p50 ms':>9}{'p95 ms':>9}{'p50/grpc':>10}"
          f"{'p95/grpc':>10}")
    for transport, levels in results.items():
        for level, r in levels.items():
            v, b = r["voice_to_voice_ms"], base.get(level, {}).get("voice_to_voice_ms", {})
            ratio = {k: round(v[k] / b[k], 2) if v.get(k) and b.get(k) else None
                     for k in ("p50", "p95")}
            r["ratio_to_grpc"] = ratio
            print(f"{transport:<12}{level:>6}{v.get('p50', 0):>9.0f}{v.get('p95', 0):>9.0f}"
                  f"{ratio['p50'] or 0:>10.2f}{ratio['p95'] or 0:>10.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
