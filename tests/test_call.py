"""End to end over loopback gRPC against a real server with the default models: health
and reflection; JFK through `voxline call` within a WER bound, and every word of it
whatever the pace its audio arrives at; a spoken order question
answered by the `get_order_status` tool with its status spoken back; a caller hanging up
mid-sentence keeping those words in the record; 8 kHz μ-law as good as 16 kHz PCM16;
barge-in (`ClearPlayback` and no more audio of that turn); two calls sharing one copy of
each model; DTMF 0 transferring to a human; a pause mid-turn answered speculatively or
leaving no trace."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import DATA, ORDER_QUESTION, manifest, record_of, run, shared_records
from voxline.audio.formats import CallAudioFormat, Encoding
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc
from voxline.wer import wer

JFK = DATA / "read_misc" / "jfk.flac"
JFK_REF = manifest("read_misc")["jfk.flac"]["transcript"]


def finals(result) -> list[str]:
    return [e["text"] for e in result.of_type("transcript") if e["final"]]


def test_health_and_reflection(server):
    async def check():
        async with grpc.aio.insecure_channel(server) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for name in ("", "voxline.v1.VoiceAgent"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request])):
                names = {s.name for s in reply.list_services_response.service}
                assert "voxline.v1.VoiceAgent" in names
                break

    run(check())


def test_cli_call_transcribes_jfk(server):
    """`voxline call --json` on the JFK clip: final transcript within 25 % WER."""
    out = subprocess.run(
        [sys.executable, "-m", "voxline.cli", "call", "--server", server, "--fast", "--json",
         "--end-of-turn-ms", "1500", str(JFK)], capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in out.stdout.splitlines()]
    types = {e["type"] for e in events}
    assert {"transcript", "agent_text", "turn"} <= types, types
    final = [e["text"] for e in events if e["type"] == "transcript" and e["final"]]
    assert len(final) == 1
    assert wer(JFK_REF, final[0]) <= 0.25, final[0]
    v2v = [e["voice_to_voice_ms"] for e in events if e["type"] == "turn"]
    assert len(v2v) == 1 and 0 < v2v[0] < 30000


def test_order_status_question_calls_the_tool_and_speaks_the_status(server, synth, whisper):
    question = synth("Hi, can you tell me where my order is? The number is 1 2 3 4 5.")
    opts = CallOptions(fast=True)
    result = run(place_call(server, [load_recording(question, 16000)], opts))
    assert result.error is None and result.ended == "CALLER_HANGUP"
    tools = result.of_type("tool_call")
    assert [t["name"] for t in tools] == ["get_order_status"], tools
    assert json.loads(tools[0]["arguments"]) == {"order_id": "12345"}
    assert tools[0]["outcome"] == "ok"
    said = " ".join(e["text"] for e in result.of_type("agent_text") if e["turn"] == 1)
    assert "shipped with UPS" in said and "Friday" in said, said
    # and the audio says it: transcribed back, it matches the text within tiny.en's
    # errors on synthetic speech ("UPS" heard as "ubs", "shipped" as "a ship")
    reply_audio = bytes(result.agent_audio[1])
    heard = whisper.transcribe(
        _to_16k(reply_audio, CallAudioFormat(Encoding.PCM16, 16000))).text
    assert wer(said, heard) <= 0.4 and "friday" in heard.lower(), (said, heard)


def _to_16k(data: bytes, fmt: CallAudioFormat) -> np.ndarray:
    from voxline.audio.convert import InboundAudio

    return InboundAudio(fmt)(data)


def test_a_caller_hanging_up_mid_sentence_keeps_their_words_in_the_record(server, synth,
                                                                          logs):
    """The gateway hangs up as the caller's last word leaves it, before the silence that
    would end the turn: the record still has what they said (and no answer to it)."""
    opts = CallOptions(call_id=f"mid-sentence-{uuid.uuid4().hex[:8]}", profile="order_status",
                       await_last_reply=False)
    result = run(place_call(server, [load_recording(synth(ORDER_QUESTION), 16000)], opts))
    assert result.error is None, result.error
    assert not finals(result)  # the turn never ended on the stream
    rec = record_of(logs, opts.call_id, records=shared_records)
    assert rec["reason"] == "CALLER_HANGUP", rec
    last = rec["turns"][-1]
    assert last["turn_id"] == 1 and not last["agent_text"], rec["turns"]
    assert wer(ORDER_QUESTION, last["caller_text"]) <= 0.35, last


def test_every_word_arrives_whatever_the_pace_of_the_audio(server, logs):
    """JFK with the pauses it has (the default end-of-turn silence), sent in real time,
    at 4x, and as fast as possible (a gateway's burst after network jitter): the finals
    that stand and the record hold every word. Before, a burst cut several turns before
    their tasks ran and one turn's words ("what your country can do for you") were
    lost."""
    audio = load_recording(JFK, 16000)
    for pace in ({"speed": 1.0}, {"speed": 4.0}, {"fast": True}):
        opts = CallOptions(call_id=f"jfk-pace-{uuid.uuid4().hex[:8]}", **pace)
        result = run(place_call(server, [audio], opts))
        assert result.error is None, (pace, result.error)
        heard = " ".join(text for _, text in sorted(result.finals().items()))
        assert wer(JFK_REF, heard) <= 0.25, (pace, heard)
        rec = record_of(logs, opts.call_id, records=shared_records)
        recorded = " ".join(t["caller_text"] for t in rec["turns"] if t["turn_id"])
        assert wer(JFK_REF, recorded) <= 0.25, (pace, recorded)


def test_mulaw_8k_works_as_well_as_pcm16(server):
    async def both():
        calls = []
        for enc, rate in ((Encoding.PCM16, 16000), (Encoding.MULAW, 8000)):
            opts = CallOptions(encoding=enc, rate=rate, fast=True, end_of_turn_ms=1500)
            calls.append(place_call(server, [load_recording(JFK, rate)], opts))
        return await asyncio.gather(*calls)

    pcm, mulaw = run(both())
    errors = [wer(JFK_REF, r_finals[0]) for r_finals in (finals(pcm), finals(mulaw))]
    assert all(e <= 0.25 for e in errors), (finals(pcm), finals(mulaw))
    assert abs(errors[0] - errors[1]) <= 0.15
    # and the agent's audio came back in each call's format: 100 ms chunks are 800 bytes
    # of 8 kHz mu-law and 3,200 bytes of 16 kHz PCM16
    for result, size in ((mulaw, 800), (pcm, 3200)):
        chunks = [e["bytes"] for e in result.audio_events if e["turn"] == 0]
        assert len(chunks) > 20 and set(chunks[:-1]) == {size}, chunks
        assert 0 < chunks[-1] <= size


def test_barge_in_clears_playback_and_stops_the_turn(server, synth):
    question = load_recording(synth("Where is my order 1 2 3 4 5?"), 16000)
    interruption = load_recording(synth("Sorry, wait, I have another question."), 16000)
    opts = CallOptions(fast=False, barge_in_after_ms=300)
    result = run(place_call(server, [question, interruption], opts))
    assert result.error is None
    clears = [i for i, e in enumerate(result.events) if e["type"] == "clear_playback"]
    assert clears, [e["type"] for e in result.events]
    assert result.events[clears[0]]["turn"] == 1
    metrics = {e["turn"]: e for e in result.of_type("server_turn")}
    assert metrics[1]["interrupted"]
    assert not metrics[2]["interrupted"]
    # The interrupted turn sent less audio than a full reply, and none after the clear.
    turn1 = [e for e in result.audio_events if e["turn"] == 1]
    assert turn1 and turn1[0]["position"] <= clears[0]  # it had started speaking
    assert [e for e in turn1 if e["position"] > clears[0]] == []
    assert metrics[1]["audio_ms"] < 3000


def test_two_calls_share_one_copy_of_each_model(server, synth):
    async def scenario():
        async with grpc.aio.insecure_channel(server) as ch:
            stub = pb_grpc.VoiceAgentStub(ch)
            before = await stub.GetServerInfo(pb.ServerInfoRequest())
            q = load_recording(synth("Where is my order 5 5 0 1 2?"), 16000)
            jfk = load_recording(JFK, 16000)
            a, b = await asyncio.gather(
                place_call(server, [q], CallOptions(fast=True)),
                place_call(server, [jfk], CallOptions(fast=True, end_of_turn_ms=1500)),
            )
            after = await stub.GetServerInfo(pb.ServerInfoRequest())
            return before, a, b, after

    before, a, b, after = run(scenario())
    assert a.error is None and b.error is None
    # Both heard and answered. tiny.en sometimes hears "550112" under load (seen on an
    # AVX2-only CPU), so the order is checked against what was heard: the tool gets
    # that number, and the right order's status when it was heard right.
    heard = finals(a)[0]
    spelled_out = heard.lower().replace("where's", "where is")  # both are right
    assert wer("Where is my order 5 5 0 1 2?", spelled_out) <= 0.25, heard
    (tool,) = a.of_type("tool_call")
    order = json.loads(tool["arguments"])["order_id"]
    assert order == re.sub(r"\D", "", heard), (order, heard)
    if order == "55012":
        assert "processing" in json.loads(tool["result"])["status"]
    assert wer(JFK_REF, finals(b)[0]) <= 0.25
    assert {m.kind for m in after.models} == {"vad", "stt", "llm", "tts", "embed"}
    for m_before, m_after in zip(before.models, after.models, strict=True):
        assert m_after.load_count == 1, m_after
        assert m_after.instance_id == m_before.instance_id
        assert m_after.calls_served >= m_before.calls_served + 2


def test_dtmf_zero_transfers_to_a_human(server, synth):
    """Pressing 0 while the agent answers: the answer stops, the transfer phrase is
    spoken, then a TransferRequest and a clean end with reason TRANSFERRED."""
    question = load_recording(synth("Where is my order 1 2 3 4 5?"), 16000)
    opts = CallOptions(fast=True, barge_in_after_ms=200)
    result = run(place_call(server, [question, "0"], opts))
    assert result.error is None
    transfers = result.of_type("transfer")
    assert transfers == [{"type": "transfer", "target": "queue:customer-care",
                          "reason": "caller asked for a human (DTMF)"}]
    assert result.ended == "TRANSFERRED"
    assert result.of_type("clear_playback")[0]["turn"] == 1
    spoken = [e["text"] for e in result.of_type("agent_text") if e["turn"] == 2]
    assert spoken[0].startswith("Let me transfer you")
    assert len(result.agent_audio[2]) > 16000  # the phrase was sent as audio


def _trimmed(path, rate: int = 16000) -> np.ndarray:
    """A recording without its leading and trailing silence."""
    audio = load_recording(path, rate)
    loud = np.flatnonzero(np.abs(audio) > 0.05 * np.abs(audio).max())
    return audio[loud[0]:loud[-1] + 1]


def test_a_pause_is_answered_speculatively_or_leaves_no_trace(server):
    """The reply is prepared when the caller stops (SPEECH_STOPPED). A caller who pauses
    mid-turn and goes on: that work is cancelled and nothing of it reaches the stream
    (one final transcript with both halves, no agent event in the pause). A turn that
    ends after the pause: the prepared reply is used (TurnMetrics.speculative)."""
    async def counts():
        async with grpc.aio.insecure_channel(server) as ch:
            info = await pb_grpc.VoiceAgentStub(ch).GetServerInfo(pb.ServerInfoRequest())
            return info.speculations_used, info.speculations_wasted

    first = _trimmed(DATA / "read_misc" / "psx_cards_001.wav")  # "ten of clubs"
    second = _trimmed(DATA / "read_misc" / "psx_goforward.wav")  # "go forward ten meters"
    # 450 ms of silence: past speech_stop_ms (250), short of this call's end of turn.
    paused = np.concatenate([first, np.zeros(int(0.45 * 16000), np.float32), second])
    question = load_recording(DATA / "riva_examples" / "en-US_sample.wav", 16000)
    used0, wasted0 = run(counts())
    result = run(place_call(server, [paused, question], CallOptions(end_of_turn_ms=800)))
    used1, wasted1 = run(counts())
    assert result.error is None
    assert wasted1 - wasted0 >= 1 and used1 - used0 >= 1

    events = result.events
    finals_at = [i for i, e in enumerate(events) if e["type"] == "transcript" and e["final"]]
    assert len(finals_at) == 2, finals(result)
    joined = events[finals_at[0]]["text"].lower()
    assert re.match(r"\W*(10|ten) of\b", joined) and "forward" in joined, joined
    # In the pause: SPEECH_STOPPED, then SPEECH_STARTED, and nothing of a reply between.
    speech = [(i, e["kind"]) for i, e in enumerate(events) if e["type"] == "speech"]
    stop, start = speech[1], speech[2]
    assert (stop[1], start[1]) == ("speech_stopped", "speech_started")
    between = {e["type"] for e in events[stop[0]:start[0]]}
    assert between <= {"speech", "transcript"}, between
    assert not [e for e in events[stop[0]:start[0]] if e["type"] == "transcript" and e["final"]]
    assert not [e for e in result.audio_events if stop[0] <= e["position"] <= start[0]]
    metrics = {e["turn"]: e for e in result.of_type("server_turn")}
    # (Its stt_ms is the wait for the transcript begun in the pause: 0 when that was
    # done before the turn ended, more on a busy machine, so not checked.)
    assert metrics[2]["speculative"]
