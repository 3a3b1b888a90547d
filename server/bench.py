"""Load generator: many scripted callers at once against a running server, the way
gateways load it (real recordings in real-time 20 ms frames, silence in between), and
the figures a contact center asks for."""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import jiwer
import numpy as np

from voxline.audio.formats import Encoding
from voxline.client.connect import Connection
from voxline.client.gateway import CallOptions, GatewayCall, load_recording
from voxline.client.wire import place_wire_call, wire_rate
from voxline.wer import normalize, wer


@dataclass
class Recording:
    path: Path
    transcript: str


def manifest_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of a data folder's manifest.tsv (file, duration_s, transcript, ...)."""
    with open(folder / "manifest.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# Riva's example files (riva_examples), as Riva's own test takes them. The manifest holds
# its expected *streaming* output, which it reads from the last final only;
# en-US_percent.wav opens with a separate "hello", which its expected output for the whole
# file includes. Voxline's checks transcribe whole files.
RIVA_WHOLE_FILE = {"en-US_percent.wav": "hello 35 % of 40 equals 14"}
# The rare words Riva's test boosts in its word-boosting file.
RIVA_BOOSTED = {"en-US_AntiBERTa_for_word_boosting_testing.wav": ["AntiBERTa", "ABlooper"]}


def riva_references(folder: Path) -> dict[str, str]:
    """Each Riva example file's words, whole file."""
    return {row["file"]: RIVA_WHOLE_FILE.get(row["file"], row["transcript"])
            for row in manifest_rows(folder)}


def read_manifest(folder: Path) -> list[Recording]:
    """Recordings with a reference transcript from a folder's manifest.tsv."""
    rows = manifest_rows(folder)
    recs = [Recording(folder / r["file"], r["transcript"]) for r in rows
            if r.get("transcript") and (folder / r["file"]).is_file()]
    if not recs:
        raise ValueError(f"{folder}/manifest.tsv lists no recording with a transcript")
    return recs


# The 16 recordings the latency figures are measured on (docs/benchmarks/), in
# ../shared/data/speech/read_misc and riva_examples: `voxline bench --data read_misc
# --data riva_examples --file-list bench/latency_set.txt`.
LATENCY_SET = [
    *(f"psx_librivox_sense_and_sensibility_01_austen_64kb-0{n}"
      for n in (870, 880, 890, 920, 930)),
    *(f"psx_cards_00{n}" for n in range(1, 6)),
    "psx_goforward", "LJ002-0020", "LJ002-0035",
    "en-US_sample", "en-US_percent", "en-US_AntiBERTa_for_word_boosting_testing",
]


def select_recordings(folders: list[Path], files: list[str] | None = None) -> list[Recording]:
    """The recordings of several folders, or only the named ones (a name without an
    extension matches any), in the order named; an unknown name is an error."""
    recs = [r for folder in folders for r in read_manifest(folder)]
    if folders and any(f.name == "riva_examples" for f in folders):
        refs = {**{r.path.name: r.transcript for r in recs}, **RIVA_WHOLE_FILE}
        recs = [Recording(r.path, refs[r.path.name]) for r in recs]
    if not files:
        return recs
    chosen = []
    for name in files:
        found = [r for r in recs if name in (r.path.name, r.path.stem)]
        if not found:
            raise ValueError(f"no recording named {name!r} in {', '.join(map(str, folders))}")
        chosen += found
    return chosen


@dataclass
class BenchConfig:
    server: str | Connection = "127.0.0.1:50051"  # a Connection for TLS or an API key
    data: list[Path] = field(default_factory=lambda: [Path("../shared/data/speech/read_misc")])
    files: list[str] = field(default_factory=list)  # only these recordings (names)
    calls: int = 1  # concurrent calls
    total_calls: int = 0  # calls to place in all (0: `calls`)
    turns: int = 2  # caller turns per call
    ramp_s: float = 1.0  # spread of call starts
    rate: float = 0.0  # Poisson arrivals, calls per second (0: fixed concurrency)
    duration_s: float = 0.0  # stop starting calls after this long (0: by count)
    encoding: Encoding = Encoding.PCM16
    sample_rate: int = 16000
    barge_in_share: float = 0.0  # share of replies the caller talks over
    seed: int = 0
    fast: bool = False
    speed: float = 1.0  # caller audio at this many times real time
    reply_timeout_s: float = 60.0
    end_of_turn_ms: int = 0
    # The protocol the calls come in on, and its listener's HOST:PORT (grpc: `server`).
    transport: str = "grpc"
    transport_address: str = ""


@dataclass
class CallOutcome:
    index: int
    status: str  # completed, failed, rejected
    code: str = ""
    message: str = ""
    turns: list[dict] = field(default_factory=list)
    audio_lost_ms: float = 0.0  # caller audio sent that the server did not process


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": round(float(np.percentile(a, 50)), 1),
            "p95": round(float(np.percentile(a, 95)), 1),
            "p99": round(float(np.percentile(a, 99)), 1), "max": round(float(a.max()), 1)}


async def _one_call(cfg: BenchConfig, index: int, recordings: list[Recording],
                    audio_cache: dict[Path, np.ndarray], channel: grpc.aio.Channel,
                    metadata: tuple[tuple[str, str], ...] = ()) -> CallOutcome:
    rng = random.Random(cfg.seed * 100003 + index)
    script = [rng.choice(recordings) for _ in range(cfg.turns)]
    barge = {n for n in range(1, cfg.turns) if rng.random() < cfg.barge_in_share}
    turns = []
    rate = cfg.sample_rate if cfg.transport == "grpc" else wire_rate(cfg.transport)
    for rec in script:
        if rec.path not in audio_cache:
            audio_cache[rec.path] = load_recording(rec.path, rate)
        turns.append(audio_cache[rec.path])
    opts = CallOptions(encoding=cfg.encoding, rate=cfg.sample_rate, fast=cfg.fast,
                       speed=cfg.speed,
                       call_id=f"bench-{cfg.seed}-{index}", reply_timeout_s=cfg.reply_timeout_s,
                       barge_in_after_ms=500 if barge else None, barge_in_turns=barge,
                       end_of_turn_ms=cfg.end_of_turn_ms)
    if cfg.transport == "grpc":
        result = await GatewayCall(channel, opts, metadata=metadata).run(turns)
    else:  # the same script over a telephony protocol (its own rate, real time)
        result = await place_wire_call(cfg.transport, cfg.transport_address, turns, opts,
                                       api_key=Connection.of(cfg.server).api_key)
    for rec, turn in zip(script, result.turns, strict=False):
        turn["file"] = rec.path.name
        turn["reference"] = rec.transcript
        turn["barged_into_reply"] = turn["turn"] in barge
        if "transcript" in turn:
            turn["wer"] = round(wer(rec.transcript, turn["transcript"]), 3)
    errors = [(e["code"], e["message"]) for e in result.events if e["type"] == "error"]
    failure = result.error or (errors[0] if errors else None)
    lost = result.audio_lost_ms if result.ended else 0.0
    if failure and failure[0] in ("RESOURCE_EXHAUSTED", "REFUSED"):
        return CallOutcome(index, "rejected", *failure, turns=result.turns)
    if failure:
        return CallOutcome(index, "failed", *failure, turns=result.turns, audio_lost_ms=lost)
    if len(result.turns) < cfg.turns:
        return CallOutcome(index, "failed", "INCOMPLETE", "call ended before its script",
                           turns=result.turns, audio_lost_ms=lost)
    return CallOutcome(index, "completed", turns=result.turns, audio_lost_ms=lost)


def arrival_times(cfg: BenchConfig) -> list[float]:
    """Start offsets (s) of the calls. Poisson arrivals at `rate` calls/s (seeded), up to
    `total_calls` or `duration_s`; otherwise the fixed-concurrency ramp of the first
    `calls` (later calls start as earlier ones end)."""
    if cfg.rate > 0:
        rng = random.Random(cfg.seed)
        times, t = [], 0.0
        limit = cfg.total_calls or 10_000  # bounded even if only a duration is given
        while len(times) < limit:
            t += rng.expovariate(cfg.rate)
            if cfg.duration_s and t > cfg.duration_s:
                break
            times.append(t)
        return times
    n = cfg.calls if cfg.duration_s else cfg.total_calls or cfg.calls
    spread = cfg.ramp_s / (cfg.calls - 1) if cfg.calls > 1 else 0.0
    return [spread * i if i < cfg.calls else 0.0 for i in range(n)]


async def run_bench(cfg: BenchConfig, progress: bool = True) -> dict:
    """Place the calls and return every turn plus a summary."""
    recordings = select_recordings(cfg.data, cfg.files)
    starts = arrival_times(cfg)
    total = len(starts)
    audio_cache: dict[Path, np.ndarray] = {}
    outcomes: list[CallOutcome] = []
    # fixed concurrency: at most `calls` at once; Poisson arrivals are not held back
    slots = asyncio.Semaphore(cfg.calls if cfg.rate <= 0 else max(total, 1))
    start = time.perf_counter()

    def show() -> None:
        if progress:
            done = len(outcomes)
            bar = "#" * min(30, int(30 * done / max(total, 1)))
            failed = sum(o.status != "completed" for o in outcomes)
            print(f"\r[{bar:<30}] {done}/{total} calls, {failed} not completed, "
                  f"{time.perf_counter() - start:5.0f} s", end="", file=sys.stderr, flush=True)

    conn = Connection.of(cfg.server)
    async with conn.channel() as channel:
        before = await _server_counts(channel, conn.metadata)

        async def place(i: int) -> None:
            try:
                outcome = await _one_call(cfg, i, recordings, audio_cache, channel,
                                          conn.metadata)
            except grpc.aio.AioRpcError as exc:
                outcome = CallOutcome(i, "failed", exc.code().name, exc.details() or "")
            outcomes.append(outcome)
            show()

        async def launch(i: int) -> None:
            if cfg.rate > 0:
                await asyncio.sleep(starts[i])
            async with slots:
                if cfg.rate <= 0:
                    await asyncio.sleep(starts[i])  # the ramp-up of the first calls
                await place(i)

        next_index = itertools.count()

        async def keep_busy(slot: int) -> None:
            # fixed concurrency for a duration: each slot places calls back to back
            await asyncio.sleep(starts[slot])
            while time.perf_counter() - start < cfg.duration_s:
                await place(next(next_index))

        show()
        if cfg.rate <= 0 and cfg.duration_s > 0:
            await asyncio.gather(*(keep_busy(w) for w in range(cfg.calls)))
        else:
            await asyncio.gather(*(launch(i) for i in range(total)))
        after = await _server_counts(channel, conn.metadata)
    if progress:
        print(file=sys.stderr)
    elapsed = time.perf_counter() - start
    report = summarize(cfg, outcomes, elapsed)
    if before and after:
        report["summary"]["server"] = {k: after[k] - before[k] for k in after}
    return report


async def _server_counts(channel: grpc.aio.Channel,
                         metadata: tuple[tuple[str, str], ...]) -> dict[str, int]:
    """The server's running totals the bench reports the change of ({} when the server
    cannot be asked: the calls will say why)."""
    from voxline.v1 import voice_agent_pb2 as pb
    from voxline.v1 import voice_agent_pb2_grpc as pb_grpc

    try:
        info = await pb_grpc.VoiceAgentStub(channel).GetServerInfo(
            pb.ServerInfoRequest(), metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError:
        return {}
    return {"speculations_used": info.speculations_used,
            "speculations_wasted": info.speculations_wasted,
            "llm_prompt_tokens_evaluated": info.llm_prompt_tokens_evaluated,
            "llm_prompt_tokens_reused": info.llm_prompt_tokens_reused}


def summarize(cfg: BenchConfig, outcomes: list[CallOutcome], elapsed: float) -> dict:
    turns = [dict(t, call=o.index) for o in sorted(outcomes, key=lambda o: o.index)
             for t in o.turns]

    def values(key: str, source: list[dict] | None = None) -> list[float]:
        return [t[key] for t in (source or turns) if key in t]

    server = [t["server"] for t in turns if "server" in t]
    refs = [(t["reference"], t["transcript"]) for t in turns if "transcript" in t]
    corpus_wer = (float(jiwer.wer([normalize(r) for r, _ in refs],
                                  [normalize(h) for _, h in refs])) if refs else None)
    summary = {
        "calls": {s: sum(o.status == s for o in outcomes)
                  for s in ("completed", "failed", "rejected")},
        "concurrency": cfg.calls,
        "transport": cfg.transport,
        "turns": len(turns),
        "elapsed_s": round(elapsed, 1),
        "voice_to_voice_ms": percentiles(values("voice_to_voice_ms")),
        "transcript_ms": percentiles(values("transcript_ms")),
        "barge_in_ms": percentiles(values("barge_in_ms")),
        "server_stt_ms": percentiles(values("stt_ms", server)),
        "server_llm_first_token_ms": percentiles(values("llm_first_token_ms", server)),
        "server_llm_queue_ms": percentiles(values("llm_queue_ms", server)),
        "server_llm_prompt_tokens_evaluated": percentiles(
            [t["llm_prompt_tokens_evaluated"] for t in server
             if t.get("llm_prompt_tokens_evaluated")]),
        "speculative_turns": sum(bool(t.get("speculative")) for t in server),
        "server_tts_first_chunk_ms": percentiles(values("tts_first_chunk_ms", server)),
        "wer": round(corpus_wer, 3) if corpus_wer is not None else None,
        "audio_lost_ms": round(sum(o.audio_lost_ms for o in outcomes), 1),
        "failures": [{"call": o.index, "status": o.status, "code": o.code,
                      "message": o.message} for o in outcomes if o.status != "completed"],
    }
    config = {k: str(v) for k, v in vars(cfg).items()}
    config["server"] = Connection.of(cfg.server).target  # never the API key
    return {"config": config, "turns": turns,
            "summary": summary}


def print_summary(report: dict) -> None:
    s = report["summary"]
    c = s["calls"]
    print(f"calls: {c['completed']} completed, {c['failed']} failed, {c['rejected']} rejected "
          f"({s['concurrency']} concurrent, {s['turns']} turns, {s['elapsed_s']} s)")
    print(f"{'figure (ms)':<28}{'n':>5}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}")
    for key in ("voice_to_voice_ms", "transcript_ms", "barge_in_ms", "server_stt_ms",
                "server_llm_queue_ms", "server_llm_first_token_ms",
                "server_tts_first_chunk_ms", "server_llm_prompt_tokens_evaluated"):
        p = s[key]
        if p["n"]:
            print(f"{key.removesuffix('_ms'):<28}{p['n']:>5}{p['p50']:>9}{p['p95']:>9}"
                  f"{p['p99']:>9}{p['max']:>9}")
    print(f"word error rate: {s['wer']}; caller audio lost: {s['audio_lost_ms']} ms")
    if srv := s.get("server"):
        print(f"speculative replies: {srv['speculations_used']} used, "
              f"{srv['speculations_wasted']} wasted; LLM prompt tokens: "
              f"{srv['llm_prompt_tokens_evaluated']} evaluated, "
              f"{srv['llm_prompt_tokens_reused']} reused")
    for f in s["failures"]:
        print(f"call {f['call']} {f['status']}: {f['code']} {f['message']}")


def write_json(report: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2))


async def run_sweep(cfg: BenchConfig, budget_ms: float = 1000.0, max_calls: int = 64,
                    progress: bool = True) -> dict:
    """Double the concurrency from 1 until p95 voice-to-voice passes `budget_ms` or a
    call fails; the capacity is the last level that held."""
    steps: list[dict] = []
    capacity = 0
    calls = 1
    while calls <= max_calls:
        if progress:
            print(f"sweep: {calls} concurrent calls", file=sys.stderr)
        report = await run_bench(replace(cfg, calls=calls, total_calls=0), progress)
        s = report["summary"]
        p95 = s["voice_to_voice_ms"].get("p95")
        held = (s["calls"]["failed"] == 0 and s["calls"]["rejected"] == 0
                and p95 is not None and p95 <= budget_ms)
        report["summary"]["held"] = held
        steps.append(report)
        if not held:
            break
        capacity = calls
        calls *= 2
    last_held = next((r for r in reversed(steps) if r["summary"]["held"]), steps[-1])
    return {
        "config": steps[0]["config"],
        "steps": steps,
        "turns": [dict(t, concurrency=r["summary"]["concurrency"])
                  for r in steps for t in r["turns"]],
        "capacity": {"calls": capacity, "budget_ms": budget_ms,
                     "stopped_at": steps[-1]["summary"]["concurrency"]},
        "summary": last_held["summary"],
    }


def plot(report: dict, path: Path) -> None:
    """Voice-to-voice distribution; for a sweep also p50 / p95 against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report.get("steps")
    fig, axes = plt.subplots(1, 2 if steps else 1, figsize=(11 if steps else 6, 4))
    ax = axes[0] if steps else axes
    v2v = [t["voice_to_voice_ms"] for t in report["turns"] if "voice_to_voice_ms" in t]
    ax.hist(v2v, bins=min(30, max(5, len(v2v))), color="tab:blue")
    ax.set_xlabel("voice-to-voice latency (ms)")
    ax.set_ylabel("turns")
    ax.set_title("Voice-to-voice distribution")
    if steps:
        n = [r["summary"]["concurrency"] for r in steps]
        for key, style in (("p50", "o-"), ("p95", "s-")):
            axes[1].plot(n, [r["summary"]["voice_to_voice_ms"].get(key, float("nan"))
                             for r in steps], style, label=key)
        axes[1].axhline(report["capacity"]["budget_ms"], color="grey", ls="--", label="budget")
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("concurrent calls")
        axes[1].set_ylabel("voice-to-voice (ms)")
        axes[1].set_title(f"Capacity: {report['capacity']['calls']} calls")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
