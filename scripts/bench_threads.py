"""The thread budget: each engine's latency when every engine works at once, for a few
`threads:` settings, on this machine.

llama.cpp, CTranslate2, ONNX Runtime and torch each default to every core; on a small
CPU several of them running together then fight for the cores (llama.cpp's and
CTranslate2's workers spin while they wait). This runs the default engines side by side,
one worker each, in a loop for `--seconds`: an LLM turn (a 64-token prompt chunk and 16
decode steps), a Whisper final on a real 3 s utterance, a Piper sentence, a 64-stream
VAD batch; and reports each one's time per operation (p50 / p95) per setting, and the
ratio to the first setting (the defaults).

    python scripts/bench_threads.py --json bench/threads.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voxline.bench import percentiles  # noqa: E402
from voxline.client.gateway import load_recording  # noqa: E402
from voxline.engines.llama_batch import Row  # noqa: E402
from voxline.engines.repository import ModelRepository  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "speech"
SETTINGS = {  # name: threads section; the first is the baseline the ratios divide by
    "llm 2, stt 2, others 1 (before)": {"llm": 2, "llm_batch": 2, "stt": 2},
    "all 1": {"llm": 1, "llm_batch": 1, "stt": 1},
    "llm 2, stt 1 (default)": {"llm": 2, "llm_batch": 2, "stt": 1},
    "llm 1, stt 2": {"llm": 1, "llm_batch": 1, "stt": 2},
    "every engine 2": {"llm": 2, "llm_batch": 2, "stt": 2, "vad": 2, "tts": 2, "torch": 2},
}


def measure(threads: dict[str, int], seconds: float) -> dict[str, dict]:
    import torch

    torch.set_num_threads(threads.get("torch", 1))
    repo = ModelRepository(ROOT / "models", threads)
    llm = repo.load("smollm2-135m", "llm").engine
    stt = repo.load("whisper-tiny-en", "stt").engine
    tts = repo.load("piper-joe", "tts").engine
    vad = repo.load("silero-vad", "vad").engine
    context = llm.batched(2, 512, 128)
    utterance = load_recording(DATA / "riva_examples" / "en-US_sample.wav", 16000)
    states = [vad.new_state() for _ in range(64)]
    windows = np.zeros((64, vad.window), np.float32)
    sampler = context.sampler(None, 0.0, 0)

    def llm_turn() -> None:
        context.drop(0)
        token = context.step([Row(0, [100] * 64, 0, sampler)])[0]
        for i in range(16):
            token = context.step([Row(0, [token], 64 + i, sampler)])[0]

    work = {
        "llm_turn": llm_turn,
        "stt_final": lambda: stt.transcribe(utterance),
        "tts_sentence": lambda: list(tts.synthesize("Your order has shipped and should "
                                                    "arrive on Thursday.")),
        "vad_64_streams": lambda: vad.speech_probs(windows, states),
    }
    times: dict[str, list[float]] = {k: [] for k in work}
    stop = time.perf_counter() + seconds

    def loop(name: str) -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            work[name]()
            times[name].append((time.perf_counter() - start) * 1000)

    for fn in work.values():  # warm up alone
        fn()
    workers = [threading.Thread(target=loop, args=(name,)) for name in work]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    context.close()
    for m in (llm, stt, tts, vad):
        m.close()
    return {name: percentiles(values) for name, values in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = {name: measure(t, args.seconds) for name, t in SETTINGS.items()}
    base = next(iter(report.values()))
    print(f"{'setting':<34}" + "".join(f"{k + ' p50/p95':>24}" for k in base))
    for name, figures in report.items():
        cells = []
        for k in base:
            f, ratio = figures[k], figures[k]["p95"] / base[k]["p95"]
            cells.append(f"{f['p50']:>11.0f}/{f['p95']:<6.0f} x{ratio:<4.2f}")
        print(f"{name:<34}" + "".join(cells))
    if args.json:
        args.json.write_text(json.dumps({"settings": SETTINGS, "figures": report}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
