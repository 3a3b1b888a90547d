"""The schedulers with the real models: batched work gives what one-at-a-time work
gives, finals go before partials, partials are thinned under load."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import DATA, manifest, run
from voxline.client.gateway import load_recording
from voxline.engines.faster_whisper_stt import _repeats
from voxline.scheduling.stt import STTScheduler
from voxline.scheduling.vad import VADScheduler
from voxline.session.listener import Stabilizer
from voxline.wer import wer


def _recordings() -> list[np.ndarray]:
    """Real recordings of every kind in the data: prompts, digits, read speech, Riva's
    test files (up to Whisper's 30 s)."""
    files = [f"asterisk_8k/{f}" for f in list(manifest("asterisk_8k"))[:14]]
    files += [f"fsdd_8k/{f}" for f in list(manifest("fsdd_8k"))[::10]]
    files += [f"read_misc/{f}" for f, row in manifest("read_misc").items()
              if float(row["duration_s"]) < 28]
    files += [f"riva_examples/{f}" for f, row in manifest("riva_examples").items()
              if float(row["duration_s"]) < 28]
    return [load_recording(DATA / f, 16000) for f in files]


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(2) as ex:
        yield ex


def test_batched_finals_equal_one_at_a_time(whisper, pool):
    audios = _recordings()
    assert len(audios) >= 30
    alone = [whisper.transcribe(a).text for a in audios]

    async def batched() -> tuple[list[str], STTScheduler]:
        sched = STTScheduler(whisper, pool, max_batch=8, max_wait_ms=50)
        results = await asyncio.gather(*(sched.transcribe(a) for a in audios))
        return [r.text for r in results], sched

    together, sched = run(batched())
    assert together == alone
    # they really ran in batches, of more than one encoder window length
    assert max(sched.stats.sizes) == 8 and sched.stats.batches < len(audios) / 2
    assert len({whisper.batch_key(len(a)) for a in audios}) > 1
    assert sum(bool(t) for t in alone) >= len(alone) - 2  # and they are words, not blanks


def test_a_loop_in_the_decoder_is_caught_and_redone(whisper, synth):
    """tiny.en sometimes says a short question two or three times over ("Where's my
    order 55012? Where's my order 55012?", depending on the silence around it); such a
    result is redone with the full window, and the caller's words come back once."""
    assert _repeats("10 of clubs 10 of clubs 10 of clubs")
    assert _repeats("Where is my order 550 1012. Where is my order 550 012. Where is my")
    assert _repeats("no no no no")
    assert not _repeats("yes please yes please")
    assert not _repeats("Please press 1 to mute or unmute yourself, 2 to lock or unlock")
    question = load_recording(synth("Where is my order 5 5 0 1 2?"), 16000)
    variants = [np.concatenate([np.zeros(int(lead * 16000), np.float32), question,
                                np.zeros(int(tail * 16000), np.float32)])
                for lead in (0.0, 0.1, 0.2, 0.3) for tail in (0.0, 0.2, 0.5, 0.8)]
    for text in (r.text for r in whisper.transcribe_batch(variants)):
        assert not _repeats(text), text
        assert wer("Where is my order 55012", text.replace("Where's", "Where is")) <= 0.2


async def _taken(sched: STTScheduler) -> None:
    """Until the scheduler has taken everything queued (one event-loop turn at a time)."""
    await asyncio.sleep(0)  # the submitting task queues its job
    while sched.pending:
        await asyncio.sleep(0)


def test_finals_go_first_and_partials_are_thinned(whisper, pool):
    jfk = load_recording(DATA / "read_misc/jfk.flac", 16000)
    short = jfk[: 16000 * 3]

    async def scenario() -> tuple[list[str], list, STTScheduler]:
        sched = STTScheduler(whisper, pool, max_batch=1, partial_max_wait_ms=5000)
        order: list[str] = []

        async def job(name: str, audio: np.ndarray, final: bool, stream: object = None):
            result = await sched.transcribe(audio, final=final, stream=stream)
            order.append(name)
            return result

        busy = asyncio.create_task(job("busy", jfk, True))
        await _taken(sched)  # the worker is now on "busy"
        old = asyncio.create_task(job("partial-a1", short, False, "a"))
        await asyncio.sleep(0)
        new = asyncio.create_task(job("partial-a2", short, False, "a"))
        other = asyncio.create_task(job("partial-b", short, False, "b"))
        await asyncio.sleep(0)
        final = asyncio.create_task(job("final", short, True))
        results = await asyncio.gather(busy, old, new, other, final)
        return order, results, sched

    order, results, sched = run(scenario())
    assert results[1] is None  # replaced by the same stream's newer partial
    assert all(r is not None and r.text for r in results[2:])
    # the final, queued last, ran before both partials still waiting
    assert order.index("final") < order.index("partial-a2")
    assert order.index("final") < order.index("partial-b")
    assert sched.stats.dropped == 1

    async def stale() -> list:
        sched = STTScheduler(whisper, pool, max_batch=1, partial_max_wait_ms=0)
        busy = asyncio.create_task(sched.transcribe(jfk))
        await _taken(sched)
        late = await sched.transcribe(short, final=False, stream="a")
        return [await busy, late]

    busy, late = run(stale())
    assert busy.text and late is None  # waited past its limit: dropped, never the final


def test_vad_batched_equals_one_stream_at_a_time(pool):
    from tests.conftest import ROOT
    from voxline.engines.repository import ModelRepository

    vad = ModelRepository(ROOT / "models").load("silero-vad", "vad").engine
    streams = [load_recording(DATA / f, 16000)[: 16000 * 2] for f in
               ("read_misc/jfk.flac", "asterisk_8k/wav/activated.wav", "fsdd_8k/3_theo_0.wav")]
    streams = [np.pad(s, (0, 32000 - len(s))) for s in streams]
    windows = [s[: len(s) // 512 * 512].reshape(-1, 512) for s in streams]
    expected = []
    for w in windows:
        state = vad.new_state()
        expected.append(np.array([vad.speech_probs(x[None], [state])[0] for x in w]))

    async def batched() -> tuple[list[np.ndarray], VADScheduler]:
        sched = VADScheduler(vad, pool, max_batch=64, tick_ms=5)
        states = [vad.new_state() for _ in streams]

        async def stream(i: int) -> np.ndarray:
            # 3 windows at a time, as frames arrive
            parts = [await sched.speech_probs(states[i], windows[i][j:j + 3])
                     for j in range(0, len(windows[i]), 3)]
            return np.concatenate(parts)

        return list(await asyncio.gather(*(stream(i) for i in range(3)))), sched

    got, sched = run(batched())
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)
    assert max(sched.stats.sizes) == 3  # the three streams shared model runs
    assert expected[0].max() > 0.9  # and the speech was heard


def test_stable_text_never_flips():
    s = Stabilizer()
    shown = [s.update(h) for h in ["I want", "I want to check", "I want to check my order",
                                   "I wanted to check my order one", "I want to check my"]]
    stables = [st for _, st in shown]
    assert stables == ["", "I want", "I want to check", "I want to check", "I want to check"]
    for (text, stable), (_, earlier) in zip(shown[1:], shown, strict=False):
        assert text.startswith(stable) and stable.startswith(earlier)
    assert shown[3][0] == "I want to check"  # contradicts the stable words: only they show


def test_bench_stt_reports_both_modes_and_capacity(tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    out, png = tmp_path / "stt.json", tmp_path / "stt.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_stt.py"), "--n", "1,2", "--seconds",
         "8", "--no-window-check", "--json", str(out), "--plot", str(png)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(r["n"], r["mode"]) for r in report["runs"]] == [
        (1, "unbatched"), (1, "batched"), (2, "unbatched"), (2, "batched")]
    for r in report["runs"]:
        assert r["turns"] >= 2 and 0 < r["final_ms"]["p50"] <= r["final_ms"]["p95"]
        assert r["final_after_speech_ms"]["p50"] > r["final_ms"]["p50"]  # + end-of-turn wait
        assert r["partials"]["shown"] > 0 and 0 < r["stt_rtf"] < 1 and r["wer"] < 0.8
        assert r["schedulers"]["vad"]["batches"] > 0
        if r["mode"] == "unbatched":  # batch size 1 really means one at a time
            assert set(r["schedulers"]["stt"]["batch_sizes"]) == {"1"}
            assert set(r["schedulers"]["vad"]["batch_sizes"]) == {"1"}
    cap = report["capacity"]
    assert cap["budget_ms"] == 500 and {cap["batched"], cap["unbatched"]} <= {0, 1, 2}
    assert set(report["ratios"]["2"]) >= {"final_ms_p95", "cpu", "stt_rtf"}
    assert png.stat().st_size > 10_000
