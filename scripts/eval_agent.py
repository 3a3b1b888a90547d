"""Evaluate the agent on real labelled data.

1. Router intent accuracy, with banking77 `train.csv` (10,003 customer queries, 77
   intents) as the intent source: k-fold cross-validation, each fold's training queries
   are the router's example utterances and its held-out queries are routed with the
   router's own code. Reported: top-1 accuracy over every query, and at the router's
   confidence threshold the share of queries it would take without the LLM and the
   accuracy on those.
2. Tool-argument exact match for the spoken coffee orders of `picovoice_s2i`, through
   the whole pipeline: each recording is one call to a real `voxline serve` (16 kHz
   PCM16 over gRPC, VAD, endpointing, batched STT, the `coffee_shop` agent), and the
   arguments of its `order_drink` tool call are compared with the labelled slots.

    python scripts/eval_agent.py --json eval.json [--folds 5] [--threshold 0.75]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from voxline.agent.profile import Intent, RouterSettings
from voxline.agent.router import Router
from voxline.bench import manifest_rows
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import local_server
from voxline.config import PROJECT_ROOT
from voxline.engines.repository import ModelRepository
from voxline.wer import normalize

DATA = PROJECT_ROOT.parent / "shared" / "data"


def router_accuracy(folds: int, threshold: float, seed: int, sample: int = 0) -> dict:
    with open(DATA / "text" / "banking77" / "train.csv", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    if sample:  # a seeded random share of the queries (quicker, e.g. in the tests)
        rows = random.Random(seed).sample(rows, min(sample, len(rows)))
    embedder = ModelRepository(PROJECT_ROOT / "models").load("minilm-l6", "embed").engine
    start = time.perf_counter()
    vectors = embedder.embed([t for t, _ in rows])
    embed_s = time.perf_counter() - start
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    correct = routed = routed_correct = 0
    for k in range(folds):
        test = set(order[k::folds])
        by_intent: dict[str, list[int]] = defaultdict(list)
        for i in order:
            if i not in test:
                by_intent[rows[i][1]].append(i)
        settings = RouterSettings(threshold=threshold, intents=[
            Intent(name=name, examples=[rows[i][0] for i in idx], say=name)
            for name, idx in sorted(by_intent.items())])
        router = Router(settings, embedder, {}, vectors=np.stack(
            [vectors[i] for name in sorted(by_intent) for i in by_intent[name]]))
        for i in test:
            intent, score = router.nearest(vectors[i])
            hit = intent is not None and intent.name == rows[i][1]
            correct += hit
            if score >= threshold:
                routed += 1
                routed_correct += hit
    n = len(rows)
    return {"queries": n, "intents": len({c for _, c in rows}), "folds": folds,
            "accuracy": round(correct / n, 4), "threshold": threshold,
            "routed_share": round(routed / n, 4),
            "routed_accuracy": round(routed_correct / routed, 4) if routed else None,
            "embed_sentences_per_s": round(n / embed_s, 1)}


def _gold(slots_json: str) -> dict[str, str]:
    return {k: normalize(v) for k, v in json.loads(slots_json).items()}


async def tool_exact_match(server: str, concurrency: int, limit: int = 0) -> dict:
    folder = DATA / "speech" / "picovoice_s2i"
    rows = manifest_rows(folder)
    rows = rows[:limit] if limit else rows
    opts = CallOptions(profile="coffee_shop", fast=True, end_of_turn_ms=1200,
                       reply_timeout_s=60)
    results, per_slot = [], Counter()
    slot_total = Counter()
    slots = asyncio.Semaphore(concurrency)

    async def one(r: dict) -> object:
        async with slots:
            return await place_call(server, [load_recording(folder / r["file"], 16000)], opts)

    calls = await asyncio.gather(*(one(r) for r in rows))
    for r, call in zip(rows, calls, strict=True):
        orders = [e for e in call.of_type("tool_call") if e["name"] == "order_drink"]
        got = {k: normalize(v) for k, v in json.loads(orders[0]["arguments"]).items()} \
            if orders else {}
        gold = _gold(r["slots_json"])
        heard = " ".join(call.finals().values())
        route = next((e["route"] for e in call.of_type("server_turn") if e["turn"] == 1), "")
        for k, v in gold.items():
            slot_total[k] += 1
            per_slot[k] += got.get(k) == v
        results.append({"file": r["file"], "heard": heard, "gold": gold, "arguments": got,
                        "exact": got == gold, "route": route or "llm",
                        "error": call.error})
        print(f"{'ok  ' if got == gold else 'MISS'} {heard!r} -> {got}", flush=True)
    n = len(results)
    return {"orders": n, "exact_match": round(sum(r["exact"] for r in results) / n, 4),
            "slot_accuracy": {k: round(per_slot[k] / slot_total[k], 3) for k in slot_total},
            "routed_share": round(sum(r["route"] != "llm" for r in results) / n, 3),
            "orders_detail": results}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--threshold", type=float, default=0.75,
                   help="router confidence threshold for the routed share")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--server", help="HOST:PORT of a running server (default: start one)")
    p.add_argument("--concurrency", type=int, default=4, help="coffee-order calls at once")
    p.add_argument("--limit", type=int, default=0, help="only the first N coffee orders")
    p.add_argument("--router-queries", type=int, default=0,
                   help="route only this many of banking77's queries (default: all)")
    p.add_argument("--skip-router", action="store_true")
    p.add_argument("--skip-tools", action="store_true")
    args = p.parse_args()
    report: dict = {}
    if not args.skip_router:
        report["router"] = router_accuracy(args.folds, args.threshold, args.seed,
                                           args.router_queries)
        report["router_accuracy"] = report["router"]["accuracy"]
        print(f"router: {json.dumps(report['router'])}", flush=True)
    if not args.skip_tools:
        if args.server:
            tools = asyncio.run(tool_exact_match(args.server, args.concurrency, args.limit))
        else:
            with local_server() as address:
                tools = asyncio.run(tool_exact_match(address, args.concurrency, args.limit))
        report["tools"] = tools
        report["tool_exact_match"] = tools["exact_match"]
        print(f"tools: exact match {tools['exact_match']}, per slot "
              f"{json.dumps(tools['slot_accuracy'])}, routed {tools['routed_share']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
