"""Bad input from a gateway: each stream gets a clear status (or a clean end with a
reason) while another call on the same server carries on unharmed."""

from __future__ import annotations

import asyncio
import time

import grpc

from tests.conftest import DATA, manifest, run
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.v1 import voice_agent_pb2 as pb
from voxline.v1 import voice_agent_pb2_grpc as pb_grpc
from voxline.wer import wer


def start(encoding=pb.AUDIO_ENCODING_PCM16, rate=16000, profile="") -> pb.CallInput:
    return pb.CallInput(start=pb.CallStart(
        call_id="bad-input-test", agent_profile=profile,
        audio_format=pb.AudioFormat(encoding=encoding, sample_rate_hz=rate)))


def audio(data: bytes, seq: int = 1) -> pb.CallInput:
    return pb.CallInput(audio=pb.AudioChunk(audio=data, sequence_number=seq))


async def converse(stub, messages, hold_open_s: float = 0.0):
    """Send `messages`, keep the stream open `hold_open_s` more, collect the outcome."""

    async def requests():
        for m in messages:
            yield m
        await asyncio.sleep(hold_open_s)

    events: list[str] = []
    call = stub.Converse(requests())
    try:
        async for out in call:
            events.append(out.WhichOneof("payload"))
            if out.WhichOneof("payload") == "ended":
                events.append(pb.CallEnded.Reason.Name(out.ended.reason))
    except grpc.aio.AioRpcError as exc:
        return events, exc.code(), exc.details()
    return events, grpc.StatusCode.OK, ""


CASES = {
    "audio before start": ([audio(b"\0" * 640)], grpc.StatusCode.INVALID_ARGUMENT,
                           "first message"),
    "unknown encoding": ([start(encoding=7)], grpc.StatusCode.INVALID_ARGUMENT,
                         "unknown audio encoding 7"),
    "encoding not set": ([start(encoding=0)], grpc.StatusCode.INVALID_ARGUMENT,
                         "unknown audio encoding 0"),
    "unsupported rate": ([start(rate=44100)], grpc.StatusCode.INVALID_ARGUMENT,
                         "unsupported sample rate 44100"),
    "odd PCM16 bytes": ([start(), audio(b"\0" * 321)], grpc.StatusCode.INVALID_ARGUMENT,
                        "odd number of bytes"),
    "frame too long": ([start(), audio(b"\0" * 16000)], grpc.StatusCode.INVALID_ARGUMENT,
                       "at most 200 ms"),
    "chunk over 1 MiB": ([start(), audio(b"\0" * ((1 << 20) + 2))],
                         grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    "unknown profile": ([start(profile="no_such_agent")], grpc.StatusCode.NOT_FOUND,
                        "unknown agent profile 'no_such_agent'"),
    "second start": ([start(), start()], grpc.StatusCode.FAILED_PRECONDITION,
                     "already started"),
}


def test_bad_input_is_refused_while_another_call_goes_on(server):
    jfk = DATA / "read_misc" / "jfk.flac"
    reference = manifest("read_misc")["jfk.flac"]["transcript"]

    async def scenario():
        async with grpc.aio.insecure_channel(server) as ch:
            stub = pb_grpc.VoiceAgentStub(ch)
            greeting = asyncio.Event()
            good = asyncio.create_task(place_call(
                server, [load_recording(jfk, 16000)], CallOptions(end_of_turn_ms=1500),
                lambda e: greeting.set() if e["type"] == "agent_text" else None))
            await asyncio.wait_for(greeting.wait(), 60)  # the good call is under way
            outcomes = {}
            for name, (messages, _, _) in CASES.items():
                outcomes[name] = await converse(stub, messages, hold_open_s=2.0)
            # A stream that goes quiet: started, then nothing (no audio, no hang-up).
            t0 = time.monotonic()
            quiet = await converse(stub, [start()], hold_open_s=30.0)
            quiet_s = time.monotonic() - t0
            return outcomes, quiet, quiet_s, await good

    outcomes, quiet, quiet_s, good = run(scenario())
    for name, (_, code, text) in CASES.items():
        _events, got_code, details = outcomes[name]
        assert got_code == code, (name, got_code, details)
        assert text in details, (name, details)
    events, code, _ = quiet
    assert code == grpc.StatusCode.OK
    assert events[-2:] == ["ended", "IDLE_TIMEOUT"], events
    assert 3.5 < quiet_s < 15  # tests/config.yaml sets a 4 s idle timeout
    # the good call went on as if nothing happened
    assert good.error is None and good.ended == "CALLER_HANGUP"
    final = [e["text"] for e in good.of_type("transcript") if e["final"]]
    assert final and wer(reference, final[-1]) <= 0.25
