"""Whisper and the Piper voice over Triton against the same engines in-process, on the
same recordings: latency per utterance one at a time, and of N utterances at once (in
one transcribe_batch in-process; as N concurrent requests that Triton's dynamic batcher
joins), and TTS time to the first audio.

    .venv/bin/python scripts/bench_triton.py [--url HOST:PORT] [--rounds 5] [--n 8]
        [--json FILE]

Without --url it exports the default models into a temporary repository and starts a
Triton on a free port (scripts/triton_server.sh) for the run. Run it on an otherwise
idle machine: Triton and the in-process engines share its cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from voxline.bench import percentiles
from voxline.client.gateway import load_recording
from voxline.engines.base import STTEngine, TTSEngine
from voxline.engines.triton_backend import load_engine
from voxline.engines.triton_stt import TritonSTT
from voxline.engines.triton_tts import TritonTTS

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech" / "read_misc"
CLIPS = ["jfk.flac", "LJ002-0020.wav", "LJ002-0035.wav", "psx_cards_001.wav",
         "vosk_test_16k.wav", "libri_2412-153948-0000.flac"]
TEXT = "Your order shipped with UPS on Monday. It should arrive by Friday."


@contextlib.contextmanager
def triton() -> Iterator[str]:
    """A Triton serving a fresh export of the default models, on a free port."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        repo = Path(tmp) / "models"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "triton_export.py"), str(repo)],
                       check=True, stdout=subprocess.DEVNULL)
        log = open(Path(tmp) / "triton.log", "w")  # noqa: SIM115 - lives as long as Triton
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "triton_server.sh"),
                                 str(port), str(repo)], stdout=log, stderr=subprocess.STDOUT)
        url = f"127.0.0.1:{port}"
        try:
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    TritonTTS("piper-joe", url, url_env=None).close()
                    TritonSTT("whisper-tiny-en", url, url_env=None).close()
                    break
                except Exception:
                    if proc.poll() is not None:
                        raise RuntimeError(f"Triton exited with {proc.returncode}") from None
                    time.sleep(1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def measure(mode: str, url: str, audios: list[np.ndarray], rounds: int, n: int) -> dict:
    """One mode's figures, with only that mode's engines loaded (on 2 cores, an idle
    in-process model's thread pools would slow Triton's runs)."""
    if mode == "triton":
        stt: STTEngine = TritonSTT("whisper-tiny-en", url, url_env=None)
        tts: TTSEngine = TritonTTS("piper-joe", url, url_env=None)
    else:
        stt = load_engine(ROOT / "models" / "whisper-tiny-en", "stt")  # type: ignore[assignment]
        tts = load_engine(ROOT / "models" / "piper-joe", "tts")  # type: ignore[assignment]
    short = [a for a in audios if len(a) < 8 * 16000]
    group = [short[i % len(short)] for i in range(n)]  # one encoder window (10 s)
    try:
        before = stt.triton.counts() if mode == "triton" else (0, 0)  # type: ignore[attr-defined]
        single = [t for a in audios for t in timed(lambda a=a: stt.transcribe(a), rounds)]
        batch = timed(lambda: stt.transcribe_batch(group), rounds)
        row = {"stt_utterance_ms": percentiles(single),
               f"stt_{n}_at_once_ms": percentiles(batch),
               f"stt_{n}_at_once_per_utterance_ms": round(float(np.median(batch)) / n, 1)}
        if mode == "triton":
            after = stt.triton.counts()  # type: ignore[attr-defined]
            row["triton_inferences_per_execution"] = round(
                (after[0] - before[0]) / max(1, after[1] - before[1]), 2)
        row["tts_first_audio_ms"] = percentiles(
            timed(lambda: next(iter(tts.synthesize(TEXT))), rounds))
        return row
    finally:
        stt.close()
        tts.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running Triton with the exported models")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=8, help="utterances at once (default 8)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    audios = [load_recording(SPEECH / name, 16000) for name in CLIPS]
    with contextlib.ExitStack() as stack:
        url = args.url or stack.enter_context(triton())
        report = {mode: measure(mode, url, audios, args.rounds, args.n)
                  for mode in ("in_process", "triton")}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
