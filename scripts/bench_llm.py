"""The in-process LLM under concurrent calls: the LLM scheduler (every call's generation
in one batched llama.cpp context, each call's KV kept between turns) against one
request at a time (the engine behind its lock, as before the scheduler), in one run.

N conversations at once (N = 1, 2, 4, 8, 16) of real caller turns: the transcripts of
the latency set's 16 recordings (bench/latency_set.txt) and three order requests,
against the default profile's agent on its LLM path (no router, no knowledge base:
every turn is a tool decision, then arguments or prose). Each conversation has
`--turns` turns, its texts drawn with a seed, the same in both modes.

    python scripts/bench_llm.py                      # N = 1, 2, 4, 8, 16
    python scripts/bench_llm.py --n 1,8 --json bench/llm.json --plot bench/llm.png

Reported per N and mode: first LLM output (a tool call or the first text token) after
the turn's request, p50 / p95; queue wait; completion tokens per second over the
level; prompt tokens evaluated and reused per turn; and the ratios scheduler /
one-at-a-time. Also how often the scheduler's answers at N equal the same
conversation's answers alone (tool calls, and the words said): batched llama.cpp
kernels may round differently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voxline.agent.agent import Agent, AgentKit, Say, ToolEvent, TurnOutcome  # noqa: E402
from voxline.agent.profile import load_profile  # noqa: E402
from voxline.agent.tools import Toolbox  # noqa: E402
from voxline.bench import LATENCY_SET, percentiles, select_recordings  # noqa: E402
from voxline.config import BatchingSection  # noqa: E402
from voxline.engines.repository import ModelRepository  # noqa: E402
from voxline.scheduling.chat import ThreadedLLM  # noqa: E402
from voxline.scheduling.llm import LLMScheduler  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "speech"
ORDERS = ["Where is my order 12345?", "Can you check order 4 8 2 1 7 for me?",
          "My order number is 55012."]


def conversations(n: int, turns: int, seed: int) -> list[list[str]]:
    recs = select_recordings([DATA / "read_misc", DATA / "riva_examples"], LATENCY_SET)
    texts = [r.transcript for r in recs] + ORDERS
    rng = random.Random(seed)
    return [[rng.choice(texts) for _ in range(turns)] for _ in range(n)]


async def converse(chat, key: str, texts: list[str], profile_name: str) -> list[dict]:
    profile = load_profile([ROOT / "profiles"], profile_name)
    agent = Agent(AgentKit(profile, Toolbox(profile)), chat, affinity=key)
    out = []
    for text in texts:
        tokens_out = agent.tokens_out
        start = time.perf_counter()
        events, said, outcome = [], [], TurnOutcome()
        async for event in agent.respond(text):
            if isinstance(event, ToolEvent):
                events.append(["tool", event.result.name, event.result.arguments])
            elif isinstance(event, Say):
                events.append(["say", event.text])
                said.append(event.text)
            elif isinstance(event, TurnOutcome):
                outcome = event
        agent.commit_reply(" ".join(said), False)
        out.append({"first_ms": outcome.first_token_ms, "queue_ms": outcome.llm_queue_ms,
                    "turn_ms": (time.perf_counter() - start) * 1000,
                    "completion_tokens": agent.tokens_out - tokens_out,
                    "prompt_evaluated": outcome.prompt_evaluated,
                    "prompt_reused": outcome.prompt_reused, "events": events})
    agent.close()
    return out


async def level(chat, convs: list[list[str]], tag: str, profile: str) -> dict:
    start = time.perf_counter()
    runs = await asyncio.gather(*(converse(chat, f"{tag}-{i}", c, profile)
                                  for i, c in enumerate(convs)))
    elapsed = time.perf_counter() - start
    turns = [t for r in runs for t in r]
    return {
        "conversations": len(convs), "turns": len(turns), "elapsed_s": round(elapsed, 2),
        "first_output_ms": percentiles([t["first_ms"] for t in turns]),
        "queue_ms": percentiles([t["queue_ms"] for t in turns]),
        "completion_tokens_per_s": round(sum(t["completion_tokens"] for t in turns)
                                         / elapsed, 1),
        "prompt_evaluated_per_turn": percentiles([t["prompt_evaluated"] for t in turns]),
        "prompt_reused_per_turn": percentiles([t["prompt_reused"] for t in turns]),
        "runs": runs,
    }


def agreement(runs: list[list[dict]], alone: list[list[dict]]) -> dict:
    pairs = [(a, b) for ra, rb in zip(runs, alone, strict=False)
             for a, b in zip(ra, rb, strict=True)]
    tools = [[e for e in p["events"] if e[0] == "tool"] for p, _ in pairs]
    tools_alone = [[e for e in q["events"] if e[0] == "tool"] for _, q in pairs]
    return {"turns": len(pairs),
            "same_tool_calls": sum(a == b for a, b in zip(tools, tools_alone, strict=True)),
            "same_answer": sum(a["events"] == b["events"] for a, b in pairs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="1,2,4,8,16", help="conversations at once, comma list")
    ap.add_argument("--turns", type=int, default=3, help="turns per conversation")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", default="order_status")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--plot", type=Path, help="write a plot (PNG) here")
    args = ap.parse_args()
    levels = [int(x) for x in args.n.split(",")]
    convs = conversations(max(levels), args.turns, args.seed)
    b = BatchingSection()
    llm = ModelRepository(ROOT / "models").load("smollm2-135m", "llm").engine
    batched = llm.batched(b.llm_slots + b.llm_prefix_slots, b.llm_slot_tokens,
                          b.llm_batch_tokens)

    async def run() -> dict:
        scheduler = LLMScheduler(batched, ThreadPoolExecutor(1), max_running=b.llm_max_running,
                                 prompt_chunk=b.llm_prompt_chunk,
                                 prefix_slots=b.llm_prefix_slots)
        # One at a time: the engine's own stream_chat behind its lock (enough threads
        # that every conversation waits on the lock, not on a thread).
        serial = ThreadedLLM(llm, ThreadPoolExecutor(max(levels)))
        await converse(scheduler, "warm", ["hello"], args.profile)  # the profile prefix
        await converse(serial, "warm", ["hello"], args.profile)
        alone = [await converse(scheduler, f"alone-{i}", c, args.profile)
                 for i, c in enumerate(convs)]
        report: dict = {"levels": []}
        for n in levels:
            print(f"N = {n}", file=sys.stderr)
            row = {"n": n}
            for mode, chat in (("scheduler", scheduler), ("one_at_a_time", serial)):
                row[mode] = await level(chat, convs[:n], f"{mode}-{n}", args.profile)
            row["scheduler"]["agreement_with_alone"] = agreement(row["scheduler"]["runs"],
                                                                  alone)
            s, o = row["scheduler"], row["one_at_a_time"]
            row["ratios"] = {
                "first_output_p95": round(s["first_output_ms"]["p95"]
                                          / max(o["first_output_ms"]["p95"], 1e-9), 3),
                "first_output_p50": round(s["first_output_ms"]["p50"]
                                          / max(o["first_output_ms"]["p50"], 1e-9), 3),
                "tokens_per_s": round(s["completion_tokens_per_s"]
                                      / max(o["completion_tokens_per_s"], 1e-9), 3),
                "prompt_evaluated_p50": round(
                    s["prompt_evaluated_per_turn"]["p50"]
                    / max(o["prompt_evaluated_per_turn"]["p50"], 1e-9), 3),
            }
            report["levels"].append(row)
        report["scheduler_summary"] = scheduler.summary() | scheduler.stats.summary()
        return report

    report = asyncio.run(run())
    print(f"{'N':>3} {'mode':<14}{'first p50':>10}{'p95':>8}{'queue p95':>10}{'tok/s':>8}"
          f"{'eval/turn':>10}{'reused':>8}   same tools / answers as alone")
    for row in report["levels"]:
        for mode in ("scheduler", "one_at_a_time"):
            r = row[mode]
            agree = r.get("agreement_with_alone")
            tail = (f"   {agree['same_tool_calls']}/{agree['turns']} / "
                    f"{agree['same_answer']}/{agree['turns']}") if agree else ""
            print(f"{row['n']:>3} {mode:<14}{r['first_output_ms']['p50']:>10.0f}"
                  f"{r['first_output_ms']['p95']:>8.0f}{r['queue_ms']['p95']:>10.0f}"
                  f"{r['completion_tokens_per_s']:>8.1f}"
                  f"{r['prompt_evaluated_per_turn']['p50']:>10.0f}"
                  f"{r['prompt_reused_per_turn']['p50']:>8.0f}{tail}")
        print(f"    ratios (scheduler / one at a time): {row['ratios']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        ns = [row["n"] for row in report["levels"]]
        for mode, style in (("scheduler", "o-"), ("one_at_a_time", "s--")):
            axes[0].plot(ns, [row[mode]["first_output_ms"]["p95"] for row in report["levels"]],
                         style, label=f"{mode} p95")
            axes[1].plot(ns, [row[mode]["completion_tokens_per_s"]
                              for row in report["levels"]], style, label=mode)
        for ax, label in ((axes[0], "first LLM output p95 (ms)"),
                          (axes[1], "completion tokens / s")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("conversations at once")
            ax.set_ylabel(label)
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
