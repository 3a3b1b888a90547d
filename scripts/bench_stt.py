"""STT capacity: N concurrent telephone callers through the VAD and STT schedulers,
once batched and once with batch size 1, in the same run.

Each caller plays real recordings one after another (with pauses between them) as
8 kHz mu-law at real-time pace in 20 ms frames. Every 20 ms the frames of all callers
are decoded (G.711 kernel) and resampled to 16 kHz (resampling kernel), as one batch
(batched) or one caller at a time (unbatched). Then each caller's audio goes through
the same Listener a call session uses: batched VAD, turn-taking, partial transcripts
every `--partial-ms`, and a final transcript when the turn ends.

    python scripts/bench_stt.py                    # N = 1, 2, 4, ... 32
    python scripts/bench_stt.py --n 1,4,16 --seconds 30 --json stt.json --plot stt.png

Reported per N and mode: final-transcript latency after the end of turn (p50 / p95),
the same counted from the end of speech (includes the end-of-turn silence), partial
cadence, real-time factor of the STT and VAD work, CPU use, WER of the finals and the
batched / unbatched ratios. `capacity` is the largest N whose p95 final latency after
the end of turn stays under `--budget-ms`. It also reports the model's time per
utterance at batch sizes 1-16 (where batching can pay on this device), and the WER and
cost of the fitted encoder window against Whisper's full 30 s window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from voxline.bench import percentiles, read_manifest
from voxline.client.gateway import load_recording
from voxline.config import PROJECT_ROOT, BatchingSection, TurnSection
from voxline.engines.base import STTEngine
from voxline.engines.repository import ModelRepository
from voxline.kernels import g711
from voxline.kernels.resample import Resampler
from voxline.scheduling.stt import STTScheduler
from voxline.scheduling.vad import VADScheduler
from voxline.session.listener import Listener
from voxline.session.turns import TurnEnded
from voxline.wer import normalize, wer

DATA = PROJECT_ROOT.parent / "shared" / "data" / "speech"
FOLDERS = ("asterisk_8k", "fsdd_8k", "read_misc")
FRAME_MS = 20
LINE_RATE = 8000


@dataclass
class Caller:
    """One caller's script: mu-law audio and where each recording ends."""

    codes: torch.Tensor  # uint8 mu-law at 8 kHz
    reference: str
    finals: list[str] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)  # end of turn -> final
    after_speech_ms: list[float] = field(default_factory=list)  # end of speech -> final


def make_callers(n: int, seconds: float, seed: int) -> list[Caller]:
    recs = [r for f in FOLDERS for r in read_manifest(DATA / f)]
    rng = random.Random(seed)
    callers = []
    for _ in range(n):
        parts, words, total = [], [], 0.0
        parts.append(np.zeros(int(LINE_RATE * rng.uniform(0.2, 1.0)), np.float32))
        while total < seconds:
            rec = rng.choice(recs)
            audio = load_recording(rec.path, LINE_RATE)
            if len(audio) > LINE_RATE * 12:
                continue
            gap = np.zeros(int(LINE_RATE * rng.uniform(1.2, 2.0)), np.float32)
            parts += [audio, gap]
            words.append(rec.transcript)
            total += (len(audio) + len(gap)) / LINE_RATE
        pcm = np.concatenate(parts)
        samples = torch.from_numpy((np.clip(pcm, -1, 1) * 32767).astype(np.int16))
        callers.append(Caller(g711.encode(samples, "mulaw"), " ".join(words)))
    return callers


async def run_once(n: int, callers: list[Caller], engines: dict, batched: bool,
                   turn: TurnSection) -> dict:
    """Stream every caller at real-time pace through fresh schedulers."""
    b = BatchingSection()
    pool = ThreadPoolExecutor(2)
    stt = STTScheduler(engines["stt"], pool, b.stt_max_batch if batched else 1,
                       b.stt_max_wait_ms, b.partial_max_wait_ms, b.partial_max_batch)
    vad = VADScheduler(engines["vad"], pool, b.vad_max_batch if batched else 1,
                       b.vad_tick_ms if batched else 0)
    listeners = [Listener(vad, stt, turn, turn.end_of_turn_silence_ms, lambda p: None)
                 for _ in callers]
    resample = Resampler(LINE_RATE, 16000)
    history = resample.new_history(n)
    frame = LINE_RATE * FRAME_MS // 1000
    frames = min(len(c.codes) for c in callers) // frame
    inbox: list[asyncio.Queue] = [asyncio.Queue() for _ in callers]
    finals: list[asyncio.Task] = []
    lag_ms: list[float] = []
    start = time.perf_counter()

    async def final(i: int, event: TurnEnded, ended: float) -> None:
        c = callers[i]
        result = await listeners[i].final(event.audio)
        done = time.perf_counter()
        c.finals.append(result.text)
        c.latency_ms.append((done - ended) * 1000)
        c.after_speech_ms.append((done - (start + event.end_ms / 1000)) * 1000)

    async def listen(i: int) -> None:
        while (audio := await inbox[i].get()) is not None:
            for event in await listeners[i].feed(audio):
                if isinstance(event, TurnEnded):
                    finals.append(asyncio.create_task(final(i, event, time.perf_counter())))

    tasks = [asyncio.create_task(listen(i)) for i in range(n)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for k in range(frames):
        due = start + k * FRAME_MS / 1000
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        lag_ms.append((time.perf_counter() - due) * 1000)
        codes = torch.stack([c.codes[k * frame:(k + 1) * frame] for c in callers])
        # Batched: one decode and one resample for every caller's frame; unbatched: one
        # caller at a time.
        groups = [slice(0, n)] if batched else [slice(i, i + 1) for i in range(n)]
        outs = [resample(g711.decode(codes[g], "mulaw").float() / 32768, history[g])
                for g in groups]
        audio16 = torch.cat([y for y, _ in outs])
        history = torch.cat([h for _, h in outs])
        for i, q in enumerate(inbox):
            q.put_nowait(audio16[i].numpy())
    for q in inbox:
        q.put_nowait(None)
    await asyncio.gather(*tasks)
    await asyncio.gather(*finals)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    for lst in listeners:
        await lst.close()
    await stt.close()
    await vad.close()
    pool.shutdown()

    audio_s = n * frames * FRAME_MS / 1000
    asked = sum(lst.partials_asked for lst in listeners)
    shown = sum(lst.partials_shown for lst in listeners)
    in_turn_s = sum(lst.in_turn_ms for lst in listeners) / 1000
    stt_stats, vad_stats = stt.stats.summary(), vad.stats.summary()
    return {
        "n": n,
        "mode": "batched" if batched else "unbatched",
        "turns": sum(len(c.latency_ms) for c in callers),
        "final_ms": percentiles([x for c in callers for x in c.latency_ms]),
        "final_after_speech_ms": percentiles([x for c in callers for x in c.after_speech_ms]),
        "partials": {"asked": asked, "shown": shown, "dropped": stt.stats.dropped,
                     "per_s_of_speech": round(shown / in_turn_s, 2) if in_turn_s else 0.0},
        "stt_rtf": round(stt_stats["compute_ms_total"] / 1000 / audio_s, 4),
        "vad_rtf": round(vad_stats["compute_ms_total"] / 1000 / audio_s, 4),
        "cpu_cores_used": round(cpu / wall, 2),
        "cpu_share": round(cpu / wall / (os.cpu_count() or 1), 3),
        "feed_lag_ms": percentiles(lag_ms),
        "wer": round(float(np.mean([wer(c.reference, " ".join(c.finals)) for c in callers])),
                     3),
        "schedulers": {"stt": stt_stats, "vad": vad_stats},
    }


def window_check(model: str) -> dict:
    """Corpus WER and time per utterance of the fitted encoder window against Whisper's
    full 30 s window, one utterance at a time, on every recording with a transcript."""
    import jiwer

    from voxline.engines.faster_whisper_stt import FasterWhisperSTT
    from voxline.engines.repository import read_manifest as read_model
    from voxline.engines.repository import resolve_weights

    folder = PROJECT_ROOT / "models" / model
    manifest = read_model(folder)
    weights = resolve_weights(folder, manifest.source)
    recs = [r for f in FOLDERS for r in read_manifest(DATA / f)]
    audios = [load_recording(r.path, 16000) for r in recs]
    keep = [i for i, a in enumerate(audios) if len(a) < 16000 * 28]
    refs = [normalize(recs[i].transcript) for i in keep]
    out = {"utterances": len(keep)}
    for window in (30, manifest.options.get("min_window_s", 10)):
        engine = FasterWhisperSTT(weights, compute_type=manifest.compute_type,
                                  **{**manifest.options, "min_window_s": window})
        start = time.perf_counter()
        hyps = [normalize(engine.transcribe(audios[i]).text) for i in keep]
        ms = (time.perf_counter() - start) * 1000 / len(keep)
        out[f"min_window_{window}s"] = {"wer": round(float(jiwer.wer(refs, hyps)), 4),
                                         "ms_per_utterance": round(ms, 1)}
    return out


def batch_cost(engine: STTEngine) -> dict[int, float]:
    """Model time per utterance at each batch size, for 16 short real utterances (one
    encoder window): where batching can pay on this device and where it cannot."""
    recs = [r for r in read_manifest(DATA / "asterisk_8k")]
    audios = [a for a in (load_recording(r.path, 16000) for r in recs[:40])
              if engine.batch_key(len(a)) == engine.batch_key(0)][:16]
    engine.transcribe_batch(audios[:2])  # warm up
    cost = {}
    for size in (1, 2, 4, 8, 16):
        start = time.perf_counter()
        for i in range(0, len(audios), size):
            engine.transcribe_batch(audios[i:i + size])
        cost[size] = round((time.perf_counter() - start) * 1000 / len(audios), 1)
    return cost


def ratios(batched: dict, unbatched: dict) -> dict:
    def r(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    return {
        "final_ms_p50": r(batched["final_ms"].get("p50", 0), unbatched["final_ms"].get("p50", 0)),
        "final_ms_p95": r(batched["final_ms"].get("p95", 0), unbatched["final_ms"].get("p95", 0)),
        "cpu": r(batched["cpu_cores_used"], unbatched["cpu_cores_used"]),
        "stt_rtf": r(batched["stt_rtf"], unbatched["stt_rtf"]),
        "vad_rtf": r(batched["vad_rtf"], unbatched["vad_rtf"]),
        "partials_per_s": r(batched["partials"]["per_s_of_speech"],
                            unbatched["partials"]["per_s_of_speech"]),
    }


def passes(run: dict, budget_ms: float) -> bool:
    return run["turns"] > 0 and run["final_ms"].get("p95", float("inf")) < budget_ms


async def bench(args: argparse.Namespace) -> dict:
    repo = ModelRepository(PROJECT_ROOT / "models")
    engines = {"vad": repo.load("silero-vad", "vad").engine,
               "stt": repo.load(args.stt_model, "stt").engine}
    turn = TurnSection(partial_interval_ms=args.partial_ms)
    runs, by_n = [], {}
    broken = {"batched": False, "unbatched": False}
    for n in args.n:
        callers = make_callers(n, args.seconds, args.seed)
        pair = {}
        for batched in (False, True):
            for c in callers:
                c.finals, c.latency_ms, c.after_speech_ms = [], [], []
            result = await run_once(n, callers, engines, batched, turn)
            pair[result["mode"]] = result
            runs.append(result)
            print(_line(result), flush=True)
        by_n[n] = ratios(pair["batched"], pair["unbatched"])
        print(f"  N={n} batched/unbatched: {json.dumps(by_n[n])}", flush=True)
        for mode in broken:
            broken[mode] = broken[mode] or not passes(pair[mode], args.budget_ms)
        if all(broken.values()):
            break  # both modes are past the budget: higher N only takes longer
    capacity = {"budget_ms": args.budget_ms, "metric": "p95 final_ms"}
    for mode in ("batched", "unbatched"):
        ok = [r["n"] for r in runs if r["mode"] == mode and passes(r, args.budget_ms)]
        # largest N such that it and every smaller N measured passed
        cap = 0
        for n in args.n:
            if n in ok:
                cap = n
            elif any(r["n"] == n and r["mode"] == mode for r in runs):
                break
        capacity[mode] = cap
    capacity["ratio"] = (round(capacity["batched"] / capacity["unbatched"], 2)
                         if capacity["unbatched"] else None)
    check = {} if args.no_window_check else window_check(args.stt_model)
    if check:
        print(f"encoder window: {json.dumps(check)}")
    cost = batch_cost(engines["stt"])
    print(f"model ms per utterance by batch size: {json.dumps(cost)}")
    return {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
            "settings": {"seconds": args.seconds, "seed": args.seed,
                         "partial_ms": args.partial_ms, "stt_model": args.stt_model,
                         "batching": BatchingSection().model_dump(),
                         "end_of_turn_ms": turn.end_of_turn_silence_ms},
            "runs": runs, "ratios": by_n, "capacity": capacity, "encoder_window": check,
            "batch_cost_ms_per_utterance": cost}


def _line(r: dict) -> str:
    f = r["final_ms"]
    return (f"N={r['n']:>2} {r['mode']:<9} turns {r['turns']:>3}  final p50 {f.get('p50', 0):>6}"
            f" p95 {f.get('p95', 0):>6} ms  partials/s {r['partials']['per_s_of_speech']:>4}"
            f" dropped {r['partials']['dropped']:>3}  stt rtf {r['stt_rtf']:.3f}"
            f"  cpu {r['cpu_cores_used']:.2f} cores  lag p95 {r['feed_lag_ms'].get('p95', 0)} ms"
            f"  wer {r['wer']:.2f}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, color in (("batched", "tab:blue"), ("unbatched", "tab:orange")):
        rows = [r for r in report["runs"] if r["mode"] == mode]
        n = [r["n"] for r in rows]
        for key, style in (("p50", "o--"), ("p95", "s-")):
            ax.plot(n, [r["final_ms"].get(key, float("nan")) for r in rows], style,
                    color=color, label=f"{mode} {key}")
    cap = report["capacity"]
    ax.axhline(cap["budget_ms"], color="grey", ls=":", label="budget")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent callers")
    ax.set_ylabel("final transcript after end of turn (ms)")
    ax.set_title(f"Capacity: batched {cap['batched']}, unbatched {cap['unbatched']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 2, 4, 8, 16, 32], help="concurrent callers to try, in order")
    p.add_argument("--seconds", type=float, default=24.0, help="audio per caller")
    p.add_argument("--budget-ms", type=float, default=500.0)
    p.add_argument("--partial-ms", type=int, default=1000, help="partial interval (0: none)")
    p.add_argument("--stt-model", default="whisper-tiny-en", help="folder under models/")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-window-check", action="store_true",
                   help="skip the WER check of the fitted encoder window")
    p.add_argument("--json", type=Path, help="write the runs and capacity here")
    p.add_argument("--plot", type=Path, help="draw latency against N (PNG)")
    args = p.parse_args()
    report = asyncio.run(bench(args))
    cap = report["capacity"]
    print(f"capacity (p95 final < {cap['budget_ms']:.0f} ms): batched {cap['batched']}, "
          f"unbatched {cap['unbatched']}, ratio {cap['ratio']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
