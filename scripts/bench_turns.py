"""Semantic end of turn against silence-only endpointing, on real recordings.

Each recording is one caller turn (a sentence, an order, a prompt read out). It is
played through the endpointer twice, on the audio clock: silence only (the turn ends
after `--silence-ms` of silence), and semantic (a pause of `semantic_check_ms` asks
Smart Turn whether the caller has finished: yes ends the turn at once, no waits
`semantic_incomplete_ms`). Twice more with a mid-thought pause: `--pause-ms` of silence
inserted at the quietest point in the middle of the sentence, where the caller has not
finished. Reported per mode: how often a turn is cut off early (ended before the
recording's last word), the delay from the last word to the end-of-turn decision
(p50 / p95 / mean), and the model's time per check.

    python scripts/bench_turns.py --json bench/turns.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from voxline.bench import manifest_rows, percentiles
from voxline.client.gateway import load_recording
from voxline.config import PROJECT_ROOT, TurnSection
from voxline.engines.repository import ModelRepository
from voxline.session.turns import Endpointer, PauseCheck, TurnEnded

DATA = PROJECT_ROOT.parent / "shared" / "data" / "speech"
FOLDERS = ("read_misc", "riva_examples", "picovoice_s2i", "asterisk_8k")
RATE = 16000


def recordings(limit: int) -> list[np.ndarray]:
    out = []
    for folder in FOLDERS:
        for row in manifest_rows(DATA / folder):
            audio = load_recording(DATA / folder / row["file"], RATE)
            if 1.5 * RATE <= len(audio) <= 20 * RATE:
                out.append(audio)
    return out[:limit] if limit else out


def with_pause(audio: np.ndarray, probs: np.ndarray, window: int, pause_ms: int) -> np.ndarray:
    """Insert silence at the quietest VAD window in the middle 30-70 % of the speech."""
    speech = np.flatnonzero(probs >= 0.5)
    if len(speech) < 4:
        return audio
    lo, hi = speech[0] + (speech[-1] - speech[0]) * 3 // 10, speech[0] + (
        speech[-1] - speech[0]) * 7 // 10
    at = (lo + int(np.argmin(probs[lo:hi + 1]))) * window
    return np.concatenate([audio[:at], np.zeros(RATE * pause_ms // 1000, np.float32),
                           audio[at:]])


def vad_probs(vad, audio: np.ndarray) -> np.ndarray:
    w = vad.window
    windows = audio[: len(audio) // w * w].reshape(-1, w)
    state = vad.new_state()
    return np.array([vad.speech_probs(x[None], [state])[0] for x in windows])


def endpoint(audio: np.ndarray, probs: np.ndarray, vad_window: int, cfg: TurnSection,
             silence_ms: int, turn_model, check_ms: list[float]) -> list[int]:
    """Audio-clock times (ms) at which turns ended; the model answers each pause check
    before the next window (its own time is reported apart)."""
    ep = Endpointer(cfg, vad_window, silence_ms, semantic=turn_model is not None)
    ended = []
    for i, prob in enumerate(probs):
        window = audio[i * vad_window:(i + 1) * vad_window]
        for event in ep.update(window, float(prob)):
            if isinstance(event, PauseCheck):
                start = time.perf_counter()
                p = float(turn_model.completion_probs([event.audio])[0])
                check_ms.append((time.perf_counter() - start) * 1000)
                ep.set_verdict(p >= cfg.semantic_threshold, event.pause)
            elif isinstance(event, TurnEnded):
                ended.append(ep.audio_ms)
    return ended


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--silence-ms", type=int, default=500, help="silence-only end of turn")
    p.add_argument("--pause-ms", type=int, default=700, help="inserted mid-thought pause")
    p.add_argument("--limit", type=int, default=0, help="only the first N recordings")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    repo = ModelRepository(PROJECT_ROOT / "models")
    vad = repo.load("silero-vad", "vad").engine
    turn_model = repo.load("smart-turn-v3", "turn").engine
    cfg = TurnSection()
    tail = np.zeros(RATE * 3, np.float32)  # the line stays open after the last word
    report: dict = {"recordings": 0, "settings": {
        "silence_ms": args.silence_ms, "pause_ms": args.pause_ms,
        "semantic_check_ms": cfg.semantic_check_ms,
        "semantic_incomplete_ms": cfg.semantic_incomplete_ms}}
    results: dict[str, dict[str, list]] = {}
    check_ms: list[float] = []
    for audio in recordings(args.limit):
        report["recordings"] += 1
        natural = np.concatenate([audio, tail])
        natural_probs = vad_probs(vad, natural)
        base_probs = natural_probs[: len(audio) // vad.window]  # the same stream's prefix
        paused = np.concatenate([with_pause(audio, base_probs, vad.window, args.pause_ms),
                                 tail])
        for variant, clip, probs in (("natural", natural, natural_probs),
                                     ("mid_pause", paused, vad_probs(vad, paused))):
            speech = np.flatnonzero(probs >= cfg.vad_threshold)
            last_word_ms = (speech[-1] + 1) * vad.window * 1000 / RATE if len(speech) else 0
            for mode, model in (("silence_only", None), ("semantic", turn_model)):
                ends = endpoint(clip, probs, vad.window, cfg, args.silence_ms, model, check_ms)
                r = results.setdefault(f"{variant}/{mode}", {"cut": [], "delay": []})
                early = [e for e in ends if e < last_word_ms]
                r["cut"].append(bool(early))
                final = [e for e in ends if e >= last_word_ms]
                if final:
                    r["delay"].append(final[0] - last_word_ms)
    for key, r in results.items():
        n = len(r["cut"])
        report[key] = {"turns": n, "cut_off_early": round(sum(r["cut"]) / n, 3),
                       "end_delay_ms": percentiles(r["delay"]),
                       "end_delay_ms_mean": round(float(np.mean(r["delay"])), 1)
                       if r["delay"] else None}
        print(f"{key:<24} cut off early {report[key]['cut_off_early']:.3f}  "
              f"delay after last word {report[key]['end_delay_ms']}")
    report["model_ms_per_check"] = percentiles(check_ms)
    print(f"{report['recordings']} recordings; model per check {report['model_ms_per_check']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
