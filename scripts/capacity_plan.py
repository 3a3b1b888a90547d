"""Capacity planner: from a `voxline bench --sweep --json` report, how many calls one
machine carries and how many machines a stated peak needs. Optionally, on paper, a GPU
node from per-stage throughput figures given as inputs. Prints every assumption.

    python scripts/capacity_plan.py sweep.json --average-calls 40 --peak-factor 8
    python scripts/capacity_plan.py sweep.json --average-calls 40 \\
        --gpu-stt-streams 400 --gpu-llm-streams 120 --gpu-tts-streams 200
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def plan(report: dict, average_calls: float, peak_factor: float, headroom: float,
         gpu: dict[str, float]) -> dict:
    cap = report["capacity"]
    per_machine = math.floor(cap["calls"] * (1 - headroom))
    peak = math.ceil(average_calls * peak_factor)
    out = {
        "assumptions": {
            "measured capacity (calls within budget)": cap["calls"],
            "latency budget, p95 voice-to-voice (ms)": cap["budget_ms"],
            "headroom kept free per machine": f"{headroom:.0%}",
            "average concurrent calls": average_calls,
            "peak factor (plan for 5-10x the average)": peak_factor,
            "measured on": "the machine that ran the sweep (its cores and models)",
        },
        "peak_concurrent_calls": peak,
        "cpu": {
            "calls_per_machine": per_machine,
            "machines_for_peak": math.ceil(peak / per_machine) if per_machine else None,
        },
    }
    if gpu:
        # A call uses each stage for a share of its time; the node carries as many calls
        # as its scarcest stage allows.
        stage = {k: v for k, v in gpu.items() if v > 0}
        bottleneck = min(stage, key=stage.get)  # type: ignore[arg-type]
        per_node = math.floor(stage[bottleneck] * (1 - headroom))
        out["assumptions"]["GPU stage throughputs (concurrent streams, inputs)"] = stage
        out["gpu_on_paper"] = {
            "bottleneck": bottleneck,
            "calls_per_node": per_node,
            "nodes_for_peak": math.ceil(peak / per_node) if per_node else None,
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", type=Path, help="JSON from voxline bench --sweep --json")
    p.add_argument("--average-calls", type=float, required=True)
    p.add_argument("--peak-factor", type=float, default=8.0)
    p.add_argument("--headroom", type=float, default=0.2, help="share kept free (0..0.9)")
    p.add_argument("--gpu-stt-streams", type=float, default=0.0)
    p.add_argument("--gpu-llm-streams", type=float, default=0.0)
    p.add_argument("--gpu-tts-streams", type=float, default=0.0)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = p.parse_args()
    report = json.loads(args.report.read_text())
    if "capacity" not in report:
        print("capacity_plan: the report has no capacity; run voxline bench --sweep --json",
              file=sys.stderr)
        return 2
    gpu = {"stt": args.gpu_stt_streams, "llm": args.gpu_llm_streams,
           "tts": args.gpu_tts_streams}
    result = plan(report, args.average_calls, args.peak_factor, args.headroom,
                  {k: v for k, v in gpu.items() if v})
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("assumptions:")
    for k, v in result["assumptions"].items():
        print(f"  {k}: {v}")
    print(f"peak concurrent calls: {result['peak_concurrent_calls']}")
    cpu = result["cpu"]
    print(f"CPU default: {cpu['calls_per_machine']} calls per machine -> "
          f"{cpu['machines_for_peak'] or 'no machine meets the budget'} machines for the peak")
    if g := result.get("gpu_on_paper"):
        print(f"GPU node (on paper): {g['calls_per_node']} calls per node, limited by "
              f"{g['bottleneck']} -> {g['nodes_for_peak']} nodes for the peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
