"""The Riva-compatible API, driven by the unmodified nvidia-riva-client library against a
real `voxline serve` (default models, API keys on) on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import jiwer
import numpy as np
import pytest
import riva.client
import soxr
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from riva.client.proto import riva_asr_pb2 as rasr
from riva.client.proto import riva_tts_pb2 as rtts

from tests.conftest import DATA, ROOT
from voxline.audio.convert import encode
from voxline.audio.formats import Encoding
from voxline.bench import RIVA_BOOSTED, riva_references
from voxline.client.local_server import server_process
from voxline.wer import normalize, wer

pytestmark = pytest.mark.own_server

EXAMPLES = DATA / "riva_examples"
REFS = riva_references(EXAMPLES)
SAMPLE = EXAMPLES / "en-US_sample.wav"
KEY = "riva-test-key-0123456789abcdef"
NEWEST_CLIENT = "2.28.0"  # scripts/test.sh installs it
ASR, TTS = "nvidia.riva.asr.RivaSpeechRecognition", "nvidia.riva.tts.RivaSpeechSynthesis"


class Served:
    def __init__(self, address: str, metrics_url: str) -> None:
        self.address, self.metrics_url = address, metrics_url

    def auth(self, key: str | None = KEY) -> riva.client.Auth:
        return riva.client.Auth(uri=self.address,
                                metadata_args=[["x-api-key", key]] if key else None)

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.metrics_url, timeout=10).text
        return sum(s.value for family in text_string_to_metric_families(text)
                   for s in family.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def riva_server(tmp_path_factory) -> Served:
    """A server with an API key configured and the default message limits: a Riva
    client sends a whole file in one Recognize request (the 48 kHz example is 1.4 MB)."""
    tmp = tmp_path_factory.mktemp("riva")
    config = tmp / "config.yaml"
    config.write_text("""
server: {metrics_port: 0}
limits: {idle_timeout_s: 4}
auth:
  tenants:
    - {name: riva-user, api_key_env: VOXLINE_RIVA_TEST_KEY, profiles: [order_status]}
records: {enabled: false}
""")
    with server_process(config, tmp / "server.log", env={"VOXLINE_RIVA_TEST_KEY": KEY}) as s:
        yield Served(s.address, s.metrics_url)


def streaming_config(path: Path, boost: list[str] | None = None
                     ) -> rasr.StreamingRecognitionConfig:
    """What riva's scripts/asr/transcribe_file.py builds with its default arguments."""
    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(
            language_code="", model="", max_alternatives=1, profanity_filter=False,
            enable_automatic_punctuation=False, verbatim_transcripts=True,
            enable_word_time_offsets=False),
        interim_results=True)
    riva.client.add_word_boosting_to_config(config, boost, 4.0)
    riva.client.add_endpoint_parameters_to_config(config, -1, -1, -1, -1, -1, -1)
    riva.client.add_audio_file_specs_to_config(config, path)
    return config


def offline_config(boost: list[str] | None = None) -> rasr.RecognitionConfig:
    """What riva's scripts/asr/transcribe_file_offline.py builds: no encoding, no sample
    rate; the file's bytes, WAV header included, are the audio."""
    config = riva.client.RecognitionConfig(
        language_code="", max_alternatives=1, profanity_filter=False,
        enable_automatic_punctuation=False, verbatim_transcripts=True,
        enable_word_time_offsets=False)
    riva.client.add_word_boosting_to_config(config, boost, 4.0)
    return config


def stream(served: Served, chunks, config) -> list[rasr.StreamingRecognitionResult]:
    asr = riva.client.ASRService(served.auth())
    return [r for response in asr.streaming_response_generator(chunks, config)
            for r in response.results]


def joined_finals(results) -> str:
    return "".join(r.alternatives[0].transcript for r in results if r.is_final)


def check_examples(texts: dict[str, str]) -> None:
    """Each example within 15 % WER of its reference, and the three together."""
    names = sorted(texts)
    refs, hyps = [normalize(REFS[n]) for n in names], [normalize(texts[n]) for n in names]
    assert jiwer.wer(refs, hyps) <= 0.15, texts
    for name, ref, hyp in zip(names, refs, hyps, strict=True):
        assert jiwer.wer(ref, hyp) <= 0.15, (name, hyp)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return pcm.astype(np.float32) / 32768, w.getframerate()


def pcm16(audio: np.ndarray) -> bytes:
    return np.clip(np.round(audio * 32767), -32768, 32767).astype("<i2").tobytes()


def test_streaming_recognize_examples_at_real_time(riva_server):
    """The three example files streamed at real-time pace, concurrently, as riva's
    transcribe_file.py --simulate-realtime sends them (the WAV header in the first
    chunk): interim results come before the finals, and the finals are within 15 % WER."""

    def run(name: str):
        path = EXAMPLES / name
        with riva.client.AudioChunkFileIterator(path, 1600,
                                                riva.client.sleep_audio_length) as chunks:
            return stream(riva_server, chunks, streaming_config(path, RIVA_BOOSTED.get(name)))

    with ThreadPoolExecutor(3) as pool:
        outcomes = dict(zip(REFS, pool.map(run, REFS), strict=True))
    for name, results in outcomes.items():
        kinds = [r.is_final for r in results]
        assert True in kinds, (name, results)
        assert False in kinds[:kinds.index(True)], f"{name}: no interim result before a final"
        interim = [r for r in results if not r.is_final]
        assert all(0.0 <= r.stability < 1.0 and r.alternatives[0].transcript for r in interim)
        assert 0 < results[-1].audio_processed <= riva.client.get_wav_file_parameters(
            EXAMPLES / name)["duration"] + 0.1
    texts = {name: joined_finals(results) for name, results in outcomes.items()}
    check_examples(texts)


def test_recognize_examples_as_the_offline_script_sends_them(riva_server):
    """Recognize with the whole file (WAV header included) and neither encoding nor
    sample rate set, 16 kHz and 48 kHz: the header is read, the audio resampled."""
    asr = riva.client.ASRService(riva_server.auth())
    texts = {}
    for name in REFS:
        response = asr.offline_recognize((EXAMPLES / name).read_bytes(),
                                         offline_config(RIVA_BOOSTED.get(name)))
        texts[name] = "".join(r.alternatives[0].transcript for r in response.results)
        assert 0 < response.results[-1].audio_processed <= \
            riva.client.get_wav_file_parameters(EXAMPLES / name)["duration"] + 0.1
    check_examples(texts)


@pytest.mark.parametrize("client", ["pinned", "newest"])
def test_the_offline_script_with_default_settings(riva_server, client):
    """Riva's transcribe_file_offline.py, unmodified in what it sends, with the 48 kHz
    example (1.4 MB in one message), from the pinned client and the newest release
    (installed beside the project by scripts/test.sh)."""
    newest = ROOT / ".venv" / "riva-client-newest"
    if client == "newest" and not newest.is_dir():
        pytest.fail(f"{newest} is missing: scripts/test.sh installs the newest client")
    env = {**os.environ, "PYTHONPATH": str(newest) if client == "newest" else ""}
    name = "en-US_AntiBERTa_for_word_boosting_testing.wav"
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "riva_offline_script.py"), riva_server.address,
         KEY, str(EXAMPLES / name)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    reply = json.loads(out.stdout)
    if client == "newest":
        assert reply["client"].startswith(str(newest)) and reply["version"] == NEWEST_CLIENT
    assert wer(REFS[name], reply["transcript"]) <= 0.25, reply


def test_g711_input(riva_server):
    """8 kHz μ-law streamed as fast as it can be sent (the end of the stream flushes the
    utterance), and 8 kHz A-law through Recognize, without headers."""
    audio, rate = read_wav(SAMPLE)
    narrow = soxr.resample(audio, rate, 8000)
    ref = REFS[SAMPLE.name]
    mulaw = encode(narrow, Encoding.MULAW)
    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(encoding=riva.client.AudioEncoding.MULAW,
                                             sample_rate_hertz=8000, language_code="en-US"),
        interim_results=False)
    results = stream(riva_server, (mulaw[i:i + 160] for i in range(0, len(mulaw), 160)), config)
    assert results and all(r.is_final for r in results)
    assert wer(ref, joined_finals(results)) <= 0.2, joined_finals(results)

    asr = riva.client.ASRService(riva_server.auth())
    response = asr.offline_recognize(encode(narrow, Encoding.ALAW), riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.ALAW, sample_rate_hertz=8000))
    text = "".join(r.alternatives[0].transcript for r in response.results)
    assert wer(ref, text) <= 0.2, text


def test_endpointing_config_maps_onto_turn_taking(riva_server, synth):
    """The sample, then a synthesised sentence about 1.2 s later: stop_history 600 ms ends
    the first at the pause (two finals); 2500 ms hears one utterance (its final comes
    when the stream ends), and stop_history_eou 300 ms gives the first-pass interim
    result (stability 1) at the pause."""
    audio, _ = read_wav(SAMPLE)
    second = "Please check the status of my order."
    voice, rate = read_wav(synth(second))
    data = pcm16(np.concatenate([audio, soxr.resample(voice, rate, 16000)]))

    def run(**endpointing):
        config = riva.client.StreamingRecognitionConfig(
            config=riva.client.RecognitionConfig(
                encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000),
            interim_results=True)
        riva.client.add_endpoint_parameters_to_config(
            config, -1, -1, endpointing.get("stop_history", -1),
            endpointing.get("stop_history_eou", -1), -1, -1)
        chunks = (data[i:i + 3200] for i in range(0, len(data), 3200))
        return stream(riva_server, chunks, config)

    split = run(stop_history=600)
    assert sum(r.is_final for r in split) == 2, split
    joined = run(stop_history=2500, stop_history_eou=300)
    finals = [r for r in joined if r.is_final]
    assert len(finals) == 1, joined
    first_pass = [r for r in joined if not r.is_final and r.stability == 1.0]
    assert first_pass, joined
    assert wer(REFS[SAMPLE.name], first_pass[0].alternatives[0].transcript) <= 0.2
    # Both sentences are in the one final (tiny.en may repeat the second: its own loop
    # check does not always catch two sentences with a long pause between them).
    heard = normalize(finals[0].alternatives[0].transcript)
    assert heard.startswith(normalize(REFS[SAMPLE.name])) and normalize(second) in heard, heard


def test_synthesize_online_speaks_its_text(riva_server, whisper):
    """SynthesizeOnline, bidirectional: text sent in three pieces comes back as a stream
    of audio chunks (the first before the end) that transcribes back to the text."""
    tts = riva.client.SpeechSynthesisService(riva_server.auth())
    # (Common words: Piper's speech varies a little from run to run, and tiny.en heard
    # "Acme" as "that me" once.)
    pieces = ["Your order has shipped", " and will arrive on Monday.",
              " Thank you for calling."]
    chunks = [r.audio for r in tts.synthesize_online(pieces, sample_rate_hz=22050)]
    assert len(chunks) >= 2
    audio = np.frombuffer(b"".join(chunks), "<i2").astype(np.float32) / 32768
    heard = whisper.transcribe(soxr.resample(audio, 22050, 16000)).text
    assert wer("".join(pieces), heard) <= 0.2, heard


def test_synthesize_at_requested_rate_and_encoding(riva_server, whisper):
    """Synthesize at 16 kHz returns 16 kHz audio (same duration as the voice's own
    22,050 Hz), which transcribes back; μ-law at 8 kHz is one byte a sample."""
    tts = riva.client.SpeechSynthesisService(riva_server.auth())
    text = "Our store opens at nine in the morning."
    native = tts.synthesize(text, sample_rate_hz=22050).audio
    narrow = tts.synthesize(text, sample_rate_hz=16000)
    assert narrow.meta.text == text
    # Piper's durations vary a little between runs; a wrong rate would be 38 % off.
    seconds = len(narrow.audio) / 2 / 16000
    assert seconds == pytest.approx(len(native) / 2 / 22050, rel=0.1)
    audio = np.frombuffer(narrow.audio, "<i2").astype(np.float32) / 32768
    heard = whisper.transcribe(audio).text
    assert wer(text, heard) <= 0.2, heard
    mulaw = tts.synthesize(text, sample_rate_hz=8000,
                           encoding=riva.client.AudioEncoding.MULAW).audio
    assert len(mulaw) / 8000 == pytest.approx(seconds, rel=0.1)


def test_configs_health_and_reflection(riva_server):
    asr = riva.client.ASRService(riva_server.auth())
    reply = asr.stub.GetRivaSpeechRecognitionConfig(
        rasr.RivaSpeechRecognitionConfigRequest(), metadata=[("x-api-key", KEY)])
    kinds = {c.parameters["type"] for c in reply.model_config}
    assert kinds == {"online", "offline"}
    assert {c.model_name for c in reply.model_config} == {"whisper-tiny-en"}
    assert reply.model_config[0].parameters["language_code"] == "en-US"
    tts = riva.client.SpeechSynthesisService(riva_server.auth())
    voices = tts.stub.GetRivaSynthesisConfig(rtts.RivaSynthesisConfigRequest(),
                                             metadata=[("x-api-key", KEY)])
    joe = next(c for c in voices.model_config if c.model_name == "piper-joe")
    assert joe.parameters["sample_rate"] == "22050"
    assert joe.parameters["voice_name"] == "piper-joe"

    with grpc.insecure_channel(riva_server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in (ASR, TTS):
            status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        listing = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for s in next(listing).list_services_response.service}
        assert {ASR, TTS, "voxline.v1.VoiceAgent"} <= names


def test_bad_input_gets_a_status_and_the_server_goes_on(riva_server):
    """Unsupported encodings, FLAC bytes, missing rate, a stream without its config, a
    bad endpointing share, unsupported TTS output, empty text, no or a wrong API key:
    each its own status with a message, while a streaming recognition keeps running."""
    asr = riva.client.ASRService(riva_server.auth())
    tts = riva.client.SpeechSynthesisService(riva_server.auth())
    flac = (DATA / "read_misc" / "jfk.flac").read_bytes()
    raw = pcm16(read_wav(SAMPLE)[0])
    enc = riva.client.AudioEncoding

    def cfg(**kw) -> rasr.RecognitionConfig:
        return riva.client.RecognitionConfig(language_code="en-US", **kw)

    def bad_endpointing() -> rasr.RecognitionConfig:
        config = cfg(encoding=enc.LINEAR_PCM, sample_rate_hertz=16000)
        riva.client.add_endpoint_parameters_to_config(config, -1, -1, 800, -1, 1.5, -1)
        return config

    # A stream that runs through it all and must still come out right.
    background: dict[str, list] = {}
    worker = threading.Thread(target=lambda: background.setdefault("r", stream(
        riva_server, riva.client.AudioChunkFileIterator(SAMPLE, 1600,
                                                        riva.client.sleep_audio_length),
        streaming_config(SAMPLE))))
    worker.start()

    cases = {
        "FLAC bytes": (lambda: asr.offline_recognize(flac, cfg(encoding=enc.FLAC)),
                       grpc.StatusCode.INVALID_ARGUMENT, "FLAC"),
        "OGGOPUS declared": (lambda: asr.offline_recognize(raw, cfg(
            encoding=enc.OGGOPUS, sample_rate_hertz=16000)),
                             grpc.StatusCode.INVALID_ARGUMENT, "OGGOPUS is not supported"),
        "streamed FLAC": (lambda: stream(riva_server, [flac[:4096], flac[4096:8192]],
                                         riva.client.StreamingRecognitionConfig(
                                             config=cfg(encoding=enc.FLAC))),
                          grpc.StatusCode.INVALID_ARGUMENT, "FLAC"),
        "no sample rate": (lambda: asr.offline_recognize(raw, cfg(encoding=enc.LINEAR_PCM)),
                           grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hertz"),
        "empty audio": (lambda: asr.offline_recognize(b"", cfg()),
                        grpc.StatusCode.INVALID_ARGUMENT, "audio is empty"),
        "audio before config": (lambda: list(asr.stub.StreamingRecognize(
            iter([rasr.StreamingRecognizeRequest(audio_content=raw[:3200])]),
            metadata=[("x-api-key", KEY)])),
                                grpc.StatusCode.INVALID_ARGUMENT, "streaming_config"),
        "bad threshold": (lambda: asr.offline_recognize(raw, bad_endpointing()),
                          grpc.StatusCode.INVALID_ARGUMENT, "stop_threshold"),
        "Spanish": (lambda: asr.offline_recognize(raw, riva.client.RecognitionConfig(
            language_code="es-US", encoding=enc.LINEAR_PCM, sample_rate_hertz=16000)),
                    grpc.StatusCode.INVALID_ARGUMENT, "language_code"),
        "over 64 MiB": (lambda: asr.offline_recognize(b"\0" * ((64 << 20) + 2), cfg(
            encoding=enc.LINEAR_PCM, sample_rate_hertz=16000)),
                        grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        "TTS OGGOPUS": (lambda: tts.synthesize("Hello.", encoding=enc.OGGOPUS),
                        grpc.StatusCode.INVALID_ARGUMENT, "OGGOPUS"),
        "TTS empty text": (lambda: tts.synthesize("  "),
                           grpc.StatusCode.INVALID_ARGUMENT, "text is empty"),
        "TTS odd rate": (lambda: tts.synthesize("Hello.", sample_rate_hz=1000),
                         grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
        "no API key": (lambda: riva.client.ASRService(riva_server.auth(None)).offline_recognize(
            raw, cfg(encoding=enc.LINEAR_PCM, sample_rate_hertz=16000)),
                       grpc.StatusCode.UNAUTHENTICATED, "missing API key"),
        "wrong API key": (lambda: riva.client.SpeechSynthesisService(
            riva_server.auth("x" * 32)).synthesize("Hello."),
                          grpc.StatusCode.UNAUTHENTICATED, "not recognised"),
    }
    invalid_before = riva_server.metric("voxline_riva_requests_total",
                                        code="INVALID_ARGUMENT")
    for label, (call, code, words) in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code, (label, err.value.code(), err.value.details())
        assert words in err.value.details(), (label, err.value.details())
    worker.join(timeout=60)
    assert wer(REFS[SAMPLE.name], joined_finals(background["r"])) <= 0.15
    assert riva_server.metric("voxline_riva_requests_total", code="INVALID_ARGUMENT") >= \
        invalid_before + 11
    # Still serving, and counting the Riva traffic in the server's own metrics.
    response = asr.offline_recognize(SAMPLE.read_bytes(), offline_config())
    assert wer(REFS[SAMPLE.name], response.results[0].alternatives[0].transcript) <= 0.15
    assert riva_server.metric("voxline_audio_seconds_total", direction="in") > 10
    assert riva_server.metric("voxline_tts_characters_total") > 0
    assert riva_server.metric("voxline_riva_requests_total", method="Recognize",
                              code="OK") >= 1



def test_text_and_speech_contexts_are_capped(riva_server):
    """limits.max_synthesize_chars (4000) on Synthesize and on a SynthesizeOnline stream,
    limits.max_speech_context_phrases (100) and _phrase_chars (100) on recognition:
    INVALID_ARGUMENT naming the cap, before the work is done."""
    asr = riva.client.ASRService(riva_server.auth())
    tts = riva.client.SpeechSynthesisService(riva_server.auth())
    raw = pcm16(read_wav(SAMPLE)[0])

    def boosted(phrases: list[str]) -> rasr.RecognitionConfig:
        config = riva.client.RecognitionConfig(
            language_code="en-US", encoding=riva.client.AudioEncoding.LINEAR_PCM,
            sample_rate_hertz=16000)
        riva.client.add_word_boosting_to_config(config, phrases, 4.0)
        return config

    def online(pieces: list[str]) -> int:
        return sum(len(r.audio) for r in tts.synthesize_online(pieces, sample_rate_hz=22050))

    many = [f"word{i}" for i in range(101)]
    long_phrase = ["antibody " * 12]  # 108 characters
    streaming = riva.client.StreamingRecognitionConfig(config=boosted(many))
    cases = {
        "Synthesize": (lambda: tts.synthesize("Hello there. " * 308),  # 4004 characters
                       "4003 characters, over the cap of 4000 (limits.max_synthesize_chars); "
                       "split the text"),
        "SynthesizeOnline": (lambda: online(["Hello there. " * 120] * 3),  # 4680 in all
                             "the stream's text has 4680 characters, over the cap of 4000"),
        "phrases": (lambda: asr.offline_recognize(raw, boosted(many)),
                    "101 phrases; at most 100 are accepted (limits.max_speech_context_phrases)"),
        "streamed phrases": (lambda: stream(riva_server, [raw[:3200]], streaming),
                             "limits.max_speech_context_phrases"),
        "long phrase": (lambda: asr.offline_recognize(raw, boosted(long_phrase)),
                        "has 107 characters; at most 100 "
                        "(limits.max_speech_context_phrase_chars)"),
    }
    for label, (call, words) in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, err.value.details())
        assert words in err.value.details(), (label, err.value.details())
    # Within the caps, the same requests are served.
    assert online(["Hello there."]) > 0
    asr.offline_recognize(raw, boosted(many[:100]))
