"""Whisper and the Piper voice served by a real Triton Inference Server on this CPU:
exported by scripts/triton_export.py, served by scripts/triton_server.sh (its first run
installs pytriton in its own environment), used by the triton engines alone and by a
real `voxline serve` whose config selects them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import DATA, ROOT, config_copy, free_port, run
from voxline.audio.convert import InboundAudio
from voxline.audio.formats import CallAudioFormat, Encoding
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import local_server
from voxline.engines.repository import ModelError
from voxline.engines.triton_backend import STT_AUDIO, STT_PROMPT, load_engine
from voxline.engines.triton_client import TritonError, tensor
from voxline.engines.triton_stt import TritonSTT
from voxline.engines.triton_tts import TritonTTS
from voxline.wer import wer

# a first run installs pytriton (about a minute) inside the first fixture
pytestmark = [pytest.mark.external, pytest.mark.slow, pytest.mark.timeout(900)]

JFK = DATA / "read_misc" / "jfk.flac"


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "models"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "triton_export.py"),
                           str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@contextlib.contextmanager
def triton_server(repo: Path, log_path: Path, port: int = 0):
    """host:port of a Triton serving `repo` (scripts/triton_server.sh), once ready."""
    import tritonclient.grpc as grpcclient

    url = f"127.0.0.1:{port or free_port()}"
    with open(log_path, "a" if port else "w") as log:
        proc = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "triton_server.sh"), url.split(":")[1], str(repo)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        client = grpcclient.InferenceServerClient(url)
        try:
            deadline = time.time() + 600  # a first run installs pytriton
            while time.time() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"Triton exited with {proc.returncode}; see {log_path}")
                try:
                    if all(client.is_model_ready(m, client_timeout=2)
                           for m in ("whisper-tiny-en", "piper-joe")):
                        break
                except Exception:  # not listening yet
                    pass
                time.sleep(1)
            else:
                pytest.fail(f"Triton did not get ready; see {log_path}")
            yield url
        finally:
            client.close()
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def triton_url(triton_repo, logs):
    with triton_server(triton_repo, logs / "triton.log") as url:
        yield url


@pytest.fixture(scope="module")
def clips(synth) -> list[np.ndarray]:
    """Utterances of several lengths (three Whisper encoder windows), 16 kHz."""
    jfk = load_recording(JFK, 16000)
    said = load_recording(synth("Hi, can you tell me where my order is?"), 16000)
    return [jfk, jfk[: 3 * 16000], said, jfk[: 6 * 16000], np.concatenate([jfk, jfk])]


def test_export_writes_a_python_backend_repository(triton_repo):
    stt = (triton_repo / "whisper-tiny-en" / "config.pbtxt").read_text()
    assert 'backend: "python"' in stt and "max_batch_size: 8" in stt
    assert "max_queue_delay_microseconds: 5000" in stt and "allow_ragged_batch: true" in stt
    tts = (triton_repo / "piper-joe" / "config.pbtxt").read_text()
    assert 'string_value: "22050"' in tts  # the voice's rate, read from the voice
    for name in ("whisper-tiny-en", "piper-joe"):
        assert "TritonPythonModel" in (triton_repo / name / "1" / "model.py").read_text()
        # the model's own manifest (its weights come from a package: nothing to rewrite)
        frozen = yaml.safe_load((triton_repo / name / "1" / "manifest.yaml").read_text())
        assert frozen == yaml.safe_load((ROOT / "models" / name / "manifest.yaml").read_text())


def test_transcripts_over_triton_equal_the_in_process_engine(triton_url, clips):
    local = load_engine(ROOT / "models" / "whisper-tiny-en", "stt")  # as voxline serve does
    remote = TritonSTT("whisper-tiny-en", triton_url, url_env=None)
    try:
        over_triton = remote.transcribe_batch(clips)  # concurrent, of mixed windows
        assert len({local.batch_key(len(c)) for c in clips}) == 3
        for clip, got in zip(clips, over_triton, strict=True):
            want = local.transcribe(clip)
            assert got.text == want.text and got.text
            assert got.avg_logprob == pytest.approx(want.avg_logprob, abs=1e-3)
        # a vocabulary prompt goes along too
        hinted = remote.transcribe(clips[2], prompt="Acme order number")
        assert hinted.text == local.transcribe(clips[2], prompt="Acme order number").text
    finally:
        remote.close()
        local.close()


def test_concurrent_requests_are_batched_by_triton(triton_url, clips):
    remote = TritonSTT("whisper-tiny-en", triton_url, url_env=None)
    short = [clips[1], clips[2], clips[1][: 2 * 16000]]  # all in the 10 s window
    try:
        before = remote.triton.counts()
        # two callers at once, three utterances each: six requests in flight together
        with ThreadPoolExecutor(2) as pool:
            texts = list(pool.map(remote.transcribe_batch, [short, short]))
        # Triton counts a request a moment after it answers it: wait for the count.
        deadline = time.monotonic() + 15
        while (after := remote.triton.counts())[0] - before[0] < 6 \
                and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        remote.close()
    assert texts[0] == texts[1] and all(r.text for r in texts[0])
    inferences, executions = (a - b for a, b in zip(after, before, strict=True))
    assert inferences == 6
    assert 1 <= executions < inferences  # Triton's dynamic batcher joined them


def test_a_down_triton_a_missing_model_or_a_bad_request_is_a_clear_error(triton_url, clips, logs):
    start = time.perf_counter()
    with pytest.raises(ModelError, match=r"not reachable.*triton_server\.sh"):
        TritonSTT("whisper-tiny-en", f"127.0.0.1:{free_port()}", url_env=None)
    assert time.perf_counter() - start < 10  # bounded by connect_timeout_s
    with pytest.raises(ModelError, match=r"no model 'nope' ready.*triton_export"):
        TritonTTS("nope", triton_url, url_env=None)
    # a request the model cannot take gets its reason, and the model goes on serving
    stt = TritonSTT("whisper-tiny-en", triton_url, url_env=None)
    two_rows = [tensor(STT_AUDIO, np.zeros((2, 16000), np.float32), "FP32"),
                tensor(STT_PROMPT, np.zeros((2, 1), np.uint8), "UINT8")]
    with pytest.raises(TritonError, match="send one row per request"):
        stt.triton.infer_many([two_rows])
    assert stt.transcribe(clips[1]).text
    stt.close()
    # voxline serve says so and exits instead of serving without STT
    env = {**os.environ, "VOXLINE_TRITON_URL": f"127.0.0.1:{free_port()}"}
    out = subprocess.run([sys.executable, "-m", "voxline.cli", "serve", "--port", "0",
                          "--config", str(config_copy("config_triton", logs))],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and "not reachable" in out.stderr, out.stderr[-2000:]


def test_a_triton_that_goes_down_fails_requests_at_once_and_is_used_again_when_back(
        triton_repo, clips, logs):
    log_path = logs / "triton_restart.log"
    with triton_server(triton_repo, log_path) as url:
        stt = TritonSTT("whisper-tiny-en", url, url_env=None, timeout_s=5)
        first = stt.transcribe(clips[1]).text
    # the server is gone now (the engine stays loaded, as in a running voxline serve)
    start = time.perf_counter()
    with pytest.raises(TritonError, match=r"not reachable.*triton_server\.sh"):
        stt.transcribe(clips[1])
    assert time.perf_counter() - start < 6
    # back on the same port: the same engine gets answers again within seconds
    with triton_server(triton_repo, log_path, port=int(url.split(":")[1])):
        deadline = time.time() + 10
        while True:
            try:
                assert stt.transcribe(clips[1]).text == first
                break
            except TritonError:
                assert time.time() < deadline, "no answer from the restarted Triton"
                time.sleep(0.5)
    stt.close()


def test_a_call_through_triton_hears_and_speaks_like_in_process(triton_url, server, whisper,
                                                                   logs):
    """The same call against a server using Triton's engines and one running them
    in-process (the session's `server`): the same final transcript; the agent's audio,
    synthesised on Triton, says the agent's text."""
    # The caller speaks at once, over the greeting: waiting for it would put a varying
    # amount of silence first, and the utterance would start at another offset of the
    # VAD's 32 ms windows, which changes Whisper's words run to run on either server.
    opts = CallOptions(fast=True, end_of_turn_ms=1500, wait_greeting=False)
    turns = [load_recording(JFK, 16000)]
    stt = TritonSTT("whisper-tiny-en", triton_url, url_env=None)
    tts = TritonTTS("piper-joe", triton_url, url_env=None)
    before = [m.triton.counts()[0] for m in (stt, tts)]
    with local_server(config_copy("config_triton", logs),
                      logs / "server_triton.log",
                      env={"VOXLINE_TRITON_URL": triton_url}) as address:
        remote = run(place_call(address, turns, opts))
    after = [m.triton.counts()[0] for m in (stt, tts)]
    stt.close()
    tts.close()
    local = run(place_call(server, turns, opts))
    assert remote.error is None and local.error is None, (remote.error, local.error)
    # Triton did the listening and the speaking (and the fixed phrases at start)
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)

    def finals(result) -> list[str]:
        return [e["text"] for e in result.of_type("transcript") if e["final"]]

    assert len(finals(remote)) == 1 and finals(remote) == finals(local)
    said = " ".join(e["text"] for e in remote.of_type("agent_text") if e["turn"] == 1)
    audio = InboundAudio(CallAudioFormat(Encoding.PCM16, 16000))(bytes(remote.agent_audio[1]))
    heard = whisper.transcribe(audio).text
    assert said.strip() and wer(said, heard) <= 0.4, (said, heard)
