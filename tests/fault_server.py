"""`voxline serve` whose STT, LLM and TTS engines can be made to fail, for the
fault-injection tests (a fake only to force the fault: the real engines do all the work
until the switch file named by VOXLINE_TEST_FAULTS says otherwise).

Switch file lines: `stt=raise`, `llm=hang`, `tts=raise`... (empty: no fault); `vad=slow`
makes each VAD batch take 100 ms longer (a server that cannot keep up)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from voxline.engines import repository
from voxline.engines.base import LLMEngine, STTEngine, TTSEngine, VADEngine

SWITCH = Path(os.environ["VOXLINE_TEST_FAULTS"])


def _mode(kind: str) -> str:
    try:
        lines = SWITCH.read_text().splitlines()
    except OSError:
        return ""
    return next((line.split("=", 1)[1] for line in lines if line.startswith(f"{kind}=")), "")


def _maybe_fail(kind: str) -> None:
    mode = _mode(kind)
    if mode == "raise":
        raise RuntimeError(f"injected {kind} failure")
    if mode == "hang":
        while _mode(kind) == "hang":  # until the test lifts the switch
            time.sleep(0.05)
        raise RuntimeError(f"injected {kind} hang")


class FaultySTT(STTEngine):
    def __init__(self, inner: STTEngine) -> None:
        self.inner, self.sample_rate = inner, inner.sample_rate

    def transcribe(self, audio, prompt=""):
        _maybe_fail("stt")
        return self.inner.transcribe(audio, prompt)

    def batch_key(self, samples):
        return self.inner.batch_key(samples)

    def transcribe_batch(self, audios, prompt=""):
        _maybe_fail("stt")
        return self.inner.transcribe_batch(audios, prompt)


class FaultyVAD(VADEngine):
    def __init__(self, inner: VADEngine) -> None:
        self.inner, self.sample_rate, self.window = inner, inner.sample_rate, inner.window

    def new_state(self):
        return self.inner.new_state()

    def speech_probs(self, windows, states):
        if _mode("vad") == "slow":
            time.sleep(0.1)
        return self.inner.speech_probs(windows, states)


class FaultyLLM(LLMEngine):
    def __init__(self, inner: LLMEngine) -> None:
        self.inner = inner

    def stream_chat(self, *args, affinity="", **kwargs):
        _maybe_fail("llm")
        yield from self.inner.stream_chat(*args, affinity=affinity, **kwargs)

    def batched(self, *args):
        """The LLM scheduler's context, with every decode step under the fault switch."""
        context = self.inner.batched(*args)
        step = context.step
        if not getattr(step, "faulty", False):
            def faulty_step(rows):
                _maybe_fail("llm")
                return step(rows)
            faulty_step.faulty = True
            context.step = faulty_step
        return context


class FaultyTTS(TTSEngine):
    def __init__(self, inner: TTSEngine) -> None:
        self.inner, self.sample_rate = inner, inner.sample_rate

    def synthesize(self, text):
        _maybe_fail("tts")
        yield from self.inner.synthesize(text)


for engine, wrapper in (("faster-whisper", FaultySTT), ("llama-cpp", FaultyLLM),
                        ("piper", FaultyTTS), ("silero-onnx", FaultyVAD)):
    make = repository.ENGINES[engine]
    repository.ENGINES[engine] = lambda m, p, t, make=make, wrapper=wrapper: wrapper(make(m, p, t))

if __name__ == "__main__":
    from voxline.cli import main

    sys.exit(main(sys.argv[1:]))
