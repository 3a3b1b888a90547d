"""Voice-to-voice before and after the LLM scheduler, in one run: `voxline bench` on the
latency set (16 recordings of read_misc and riva_examples) at 1 / 2 / 4 / 8 concurrent
calls against a server with the LLM one request at a time and no speculative replies
(before), then against the defaults (after), then a `--sweep` of the defaults.

    python scripts/bench_voice.py --json bench/voice.json

Each level places 8 calls of 3 turns (`--calls N --total-calls 8 --turns 3 --seed 1
--ramp 1.6`, real-time 16 kHz PCM16); a fresh server for each setting. Prints p50 / p95
voice-to-voice and server first LLM token per level and setting, the ratios after /
before, calls completed and audio lost, and the sweep's capacity at 1,000 ms.
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

from voxline.bench import LATENCY_SET, BenchConfig, run_bench, run_sweep  # noqa: E402
from voxline.client.local_server import local_server  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "speech"
SETTINGS = {
    "before": {"batching": {"llm_scheduler": False}, "turn": {"speculate": False}},
    "after": {},
}


def _brief(summary: dict) -> dict:
    keys = ("calls", "voice_to_voice_ms", "server_llm_first_token_ms", "server_llm_queue_ms",
            "server_stt_ms", "server_tts_first_chunk_ms", "server_llm_prompt_tokens_evaluated",
            "wer", "audio_lost_ms", "speculative_turns", "server")
    return {k: summary[k] for k in keys if k in summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--total-calls", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--without-speculation", action="store_true",
                    help="also the defaults with turn.speculate: false")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    settings = dict(SETTINGS)
    if args.without_speculation:
        settings["after, no speculation"] = {"turn": {"speculate": False}}
    base = BenchConfig(data=[DATA / "read_misc", DATA / "riva_examples"], files=LATENCY_SET,
                       total_calls=args.total_calls, turns=args.turns, seed=1, ramp_s=1.6)
    report: dict = {"levels": levels, "settings": settings, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in settings.items():
            config = Path(tmp) / "server.yaml"
            config.write_text(yaml.safe_dump({**overrides, "records": {
                "path": str(Path(tmp) / "calls.db")}}))
            with local_server(config, Path(tmp) / "server.log") as address:
                runs = {}
                for n in levels:
                    print(f"{name}: {n} concurrent calls", file=sys.stderr)
                    cfg = BenchConfig(**{**vars(base), "server": address, "calls": n})
                    runs[n] = _brief(asyncio.run(run_bench(cfg, progress=False))["summary"])
                report["runs"][name] = runs
                if name == "after" and not args.no_sweep:
                    print(f"{name}: sweep", file=sys.stderr)
                    cfg = BenchConfig(**{**vars(base), "server": address, "total_calls": 0})
                    sweep = asyncio.run(run_sweep(cfg, 1000.0, 64, progress=False))
                    report["sweep"] = {"capacity": sweep["capacity"], "steps": [
                        _brief(s["summary"]) | {"concurrency": s["summary"]["concurrency"]}
                        for s in sweep["steps"]]}
    print(f"{'calls':>5} {'setting':<22}{'v2v p50':>9}{'p95':>8}{'LLM 1st p50':>13}{'p95':>8}"
          f"{'queue p95':>11}{'completed':>11}{'lost ms':>9}")
    for n in levels:
        for name in settings:
            r = report["runs"][name][n]
            v, t = r["voice_to_voice_ms"], r["server_llm_first_token_ms"]
            q = r.get("server_llm_queue_ms", {})
            print(f"{n:>5} {name:<22}{v.get('p50', 0):>9.0f}{v.get('p95', 0):>8.0f}"
                  f"{t.get('p50', 0):>13.0f}{t.get('p95', 0):>8.0f}{q.get('p95', 0):>11.0f}"
                  f"{r['calls']['completed']:>8}/{args.total_calls:<2}"
                  f"{r['audio_lost_ms']:>9.0f}")
        a, b = report["runs"]["after"][n], report["runs"]["before"][n]
        ratio = {k: round(a[k]["p95"] / b[k]["p95"], 3) for k in
                 ("voice_to_voice_ms", "server_llm_first_token_ms")
                 if a[k].get("p95") and b[k].get("p95")}
        report.setdefault("ratios_p95_after_over_before", {})[n] = ratio
        print(f"      p95 after / before: {ratio}")
    if "sweep" in report:
        cap = report["sweep"]["capacity"]
        print(f"sweep: {cap['calls']} concurrent calls within p95 {cap['budget_ms']:.0f} ms "
              f"(stopped at {cap['stopped_at']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
