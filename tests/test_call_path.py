"""The call path's parts on their own, with the real models where they need one: the
codec tables, the bounded queues, tool isolation, a retracted turn's tools, metric
labels and a crashed scheduler."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import ROOT
from voxline.agent.agent import Agent, AgentKit, Say, ToolEvent, TurnOutcome
from voxline.agent.profile import load_profile
from voxline.agent.router import Router
from voxline.agent.tools import Outcome, Toolbox, ToolResult
from voxline.audio.convert import decode, encode
from voxline.audio.formats import CallAudioFormat, Encoding
from voxline.config import TracingSection, load_settings
from voxline.engines.repository import ModelRepository
from voxline.metrics import Metrics
from voxline.scheduling.batch import BatchRunner
from voxline.session.ledger import CallLedger
from voxline.session.spec import AgentTurn, CallSpec
from voxline.streams import Inbox
from voxline.tracing import Tracing

PROFILES = [ROOT / "profiles", ROOT / "tests" / "profiles"]


@pytest.fixture(scope="module")
def embedder():
    return ModelRepository(ROOT / "models").load("minilm-l6", "embed").engine


def _agent(embedder, tools: ThreadPoolExecutor, embed: ThreadPoolExecutor) -> Agent:
    profile = load_profile(PROFILES, "faults")
    toolbox = Toolbox(profile, tools)
    kit = AgentKit(profile, toolbox, embedder=embedder, executor=embed,
                   router=Router(profile.router, embedder, toolbox.configs))
    return Agent(kit, chat=None, affinity="test")  # type: ignore[arg-type]  # no LLM turn


def test_g711_tables_match_the_kernels():
    from voxline.kernels import g711

    rng = np.random.default_rng(0)
    samples = rng.uniform(-1.2, 1.2, 8000).astype(np.float32)
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")
    codes = bytes(range(256))
    for enc in (Encoding.MULAW, Encoding.ALAW):
        kernel = g711.decode(torch.frombuffer(bytearray(codes), dtype=torch.uint8), enc.value)
        assert np.array_equal(decode(codes, enc), kernel.numpy().astype(np.float32) / 32768)
        assert encode(samples, enc) == g711.encode(torch.from_numpy(pcm), enc.value
                                                   ).numpy().tobytes()


def test_the_inbox_holds_its_reader_back_and_has_one_idle_deadline():
    async def main():
        inbox: Inbox[int] = Inbox(maxsize=3, idle_s=0.3)
        read: list[int] = []

        async def source():
            for i in range(10):
                read.append(i)
                yield i

        inbox.start(source(), end="end")
        await asyncio.sleep(0.05)
        held = len(read)  # the reader waits once 3 wait in the queue
        got = [(await inbox.get())[0] for _ in range(11)]
        with pytest.raises(TimeoutError):
            await inbox.get()  # nothing more arrives: idle
        await inbox.close()
        return held, got, inbox.high_water

    held, got, high_water = asyncio.run(main())
    assert held == 4  # three queued, the fourth waiting for room
    assert got == [*range(10), "end"] and high_water == 3

    async def held_back():
        """The consumer is busy past the idle time while the client's items wait: the
        client was not idle."""
        inbox: Inbox[int] = Inbox(maxsize=3, idle_s=0.3)
        inbox.start(_counting(10), end="end")
        await asyncio.sleep(0.9)
        got = [(await inbox.get())[0] for _ in range(11)]
        await inbox.close()
        return got

    assert asyncio.run(held_back()) == [*range(10), "end"]

    async def stalled():
        """The loop cannot run for longer than the idle time while an item arrives (as
        when a thread holds the GIL): the item is read, not an idle timeout raised."""
        loop = asyncio.get_running_loop()
        sent = loop.create_future()

        async def source():
            item = await sent
            await asyncio.sleep(0)  # a transport takes a few hops to deliver it
            yield item

        inbox: Inbox[str] = Inbox(maxsize=3, idle_s=0.3)
        inbox.start(source(), end="end")
        await asyncio.sleep(0)
        threading.Timer(0.1, loop.call_soon_threadsafe, (sent.set_result, "sent")).start()
        time.sleep(1.8)  # blocks the loop
        got = [(await inbox.get())[0] for _ in range(2)]
        await inbox.close()
        return got

    assert asyncio.run(stalled()) == ["sent", "end"]


async def _counting(n: int):
    for i in range(n):
        yield i


def test_a_hung_tool_does_not_stall_routing(embedder):
    """Eight calls of a tool that hangs far past its timeout keep their threads, all of
    the tools pool; a routed turn (its embedding on the embed pool) is answered while
    they still hang."""
    tools = ThreadPoolExecutor(8, thread_name_prefix="hung-tools")
    embed = ThreadPoolExecutor(1)
    agent = _agent(embedder, tools, embed)

    async def main():
        results = await asyncio.gather(*(agent.toolbox.run("hanging_lookup", {})
                                         for _ in range(8)))
        events = [e async for e in agent.respond("hello")]
        return results, events

    results, events = asyncio.run(main())
    hung = [t for t in threading.enumerate() if t.name.startswith("hung-tools")]
    still_hanging = sum(t.is_alive() for t in hung)
    assert {r.outcome for r in results} == {Outcome.TIMEOUT}
    outcome = events[-1]
    assert isinstance(outcome, TurnOutcome) and outcome.route == "greeting"
    assert still_hanging == 8  # routing did not wait for any of them
    tools.shutdown(wait=False)


def test_a_tool_is_not_run_again_after_a_retracted_turn(embedder, tmp_path, monkeypatch):
    """The caller talks on before the reply's first audio: the turn is retracted and
    asked again with what they added. The tool it had started (a side effect) runs
    once, and the turn asked again speaks its result; a new turn runs it again."""
    count = tmp_path / "runs"
    monkeypatch.setenv("VOXLINE_TEST_COUNT_FILE", str(count))
    agent = _agent(embedder, ThreadPoolExecutor(2), ThreadPoolExecutor(1))

    async def main():
        turn = agent.respond("please place the refund")
        async for event in turn:
            if isinstance(event, Say):  # the filler: the tool is running
                break
        await turn.aclose()  # barge-in before any audio
        agent.retract_turn()
        again = [e async for e in agent.respond("please place the refund for me")]
        agent.commit_reply("The refund is placed.", False)
        new = [e async for e in agent.respond("please place the refund")]
        return again, new

    again, new = asyncio.run(main())
    tools = [e.result for e in again if isinstance(e, ToolEvent)]
    assert [(r.name, r.outcome) for r in tools] == [("counted_lookup", Outcome.OK)]
    assert "The refund is placed." in [e.text for e in again if isinstance(e, Say)]
    assert [e.result.name for e in new if isinstance(e, ToolEvent)] == ["counted_lookup"]
    assert count.read_text().splitlines() == ["ran", "ran"]  # once per request


def test_a_tool_name_the_llm_made_up_is_counted_as_unknown():
    metrics = Metrics()
    runtime = SimpleNamespace(metrics=metrics, settings=load_settings(),
                              services=SimpleNamespace(tracing=Tracing(TracingSection()),
                                                       records=None, executors={"records": None}))
    agent = SimpleNamespace(toolbox=SimpleNamespace(configs={"get_order_status": None}),
                            profile=SimpleNamespace(name="order_status"))
    spec = CallSpec("c1", CallAudioFormat(Encoding.PCM16, 16000), "order_status", {}, 500)
    sent: list = []
    ledger = CallLedger(runtime, spec, agent, {}, lambda **p: sent.append(p), None)  # type: ignore[arg-type]
    turn = AgentTurn(1, time.perf_counter())
    for name in ("get_order_status", "delete_all_orders", "x" * 200):
        ledger.tool_call(turn, ToolResult(name, {}, Outcome.INVALID_ARGUMENTS, {}, 0))
    samples = {tuple(sorted(s.labels.items())): s.value
               for family in metrics.registry.collect() if family.name == "voxline_tool_calls"
               for s in family.samples if s.name.endswith("_total")}
    assert samples == {
        (("outcome", "invalid_arguments"), ("tool", "get_order_status")): 1.0,
        (("outcome", "invalid_arguments"), ("tool", "unknown")): 2.0}
    assert [p["tool_call"].name for p in sent][1] == "delete_all_orders"  # the gateway hears it


def test_a_crashed_scheduler_fails_its_requests_and_recovers():
    """A worker that crashes between taking a batch and running it: every request it
    held fails with the error (none waits for ever), and the next request is served."""
    runner: BatchRunner[int, int] = BatchRunner(lambda xs: [x * 2 for x in xs],
                                                ThreadPoolExecutor(1))
    real = runner._dispatch

    async def crash(*args):
        raise ValueError("worker bug")

    async def main():
        runner._dispatch = crash  # type: ignore[method-assign]
        failed = await asyncio.gather(*(runner.run(i) for i in range(3)),
                                      return_exceptions=True)
        runner._dispatch = real  # type: ignore[method-assign]
        return failed, await asyncio.wait_for(runner.run(21), 10)

    failed, answer = asyncio.run(main())
    assert all(isinstance(f, RuntimeError) and "worker bug" in str(f) for f in failed)
    assert answer == 42 and runner.crashes == 1


def test_no_module_under_server_is_too_long_to_read():
    sizes = {p: len(p.read_text().splitlines()) for p in Path(ROOT / "server").rglob("*.py")
             if "v1" not in p.parts}
    assert max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda x: -x[1])[:3]


@pytest.mark.own_server
def test_a_profile_added_after_start_loads_off_the_event_loop(tmp_path, logs):
    """A profile put in place while a call runs is loaded for the first call that asks
    for it on the loading thread: its router examples embedded and a dozen new phrases
    rendered, seconds of work, while the event loop goes on serving the other call
    (voxline_event_loop_lag_seconds never sees the loop late by a second)."""
    import httpx
    import yaml
    from prometheus_client.parser import text_string_to_metric_families

    from tests.conftest import DATA, run
    from voxline.client.gateway import CallOptions, load_recording, place_call
    from voxline.client.local_server import server_process

    profiles = tmp_path / "profiles"
    profiles.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "extra_profiles_dirs": [str(profiles)], "server": {"metrics_port": 0},
        "records": {"path": str(tmp_path / "calls.db")}}))
    token = uuid.uuid4().hex[:8]  # phrases no cache has seen
    intents = [{"name": f"topic{i}", "examples": [f"tell me about topic {i}"],
                "say": f"Topic {i} of line {token} is covered in our booklet number {i}."}
               for i in range(12)]
    speech = load_recording(DATA / "read_misc" / "psx_goforward.wav", 16000)

    def lag() -> tuple[float, float]:
        text = httpx.get(server.metrics_url, timeout=10).text
        samples = {(s.name, s.labels.get("le")): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name.startswith("voxline_event_loop_lag_seconds")}
        return (samples[("voxline_event_loop_lag_seconds_count", None)],
                samples[("voxline_event_loop_lag_seconds_bucket", "1.0")])

    async def both():
        async def late():
            (profiles / "late_line").mkdir()
            (profiles / "late_line" / "profile.yaml").write_text(yaml.safe_dump({
                "name": "late_line", "greeting": f"Welcome to line {token}.",
                "instructions": "Answer in one sentence.",
                "router": {"threshold": 0.6, "intents": intents}}))
            return await place_call(server.address, [speech], CallOptions(
                profile="late_line", call_id="late"))
        return await asyncio.gather(
            place_call(server.address, [speech, speech], CallOptions(call_id="busy")), late())

    with server_process(config, logs / "server_late_profile.log",
                        env={"VOXLINE_CACHE": str(tmp_path / "cache")}) as server:
        busy, late = run(both())
        count, within = lag()
    assert busy.error is None and late.error is None, (busy.error, late.error)
    assert late.of_type("accepted")[0]["profile"] == "late_line"
    assert count > 5 and within == count  # every sample: the loop was never 1 s late


def test_an_interrupted_reply_keeps_only_what_was_heard():
    turn = AgentTurn(1, time.perf_counter())
    turn.spoken = ["Your order shipped on Monday.", "It arrives Thursday.", "Anything else?"]
    turn.clause_ends = [1800.0, 3100.0, 4200.0]
    assert turn.heard_text() == " ".join(turn.spoken)  # played out: all of it
    turn.heard_ms = 3050.0  # cut 50 ms before the second clause's end: it counts
    assert turn.heard_text() == "Your order shipped on Monday. It arrives Thursday."
    turn.heard_ms = 1200.0
    assert turn.heard_text() == ""  # the first clause was cut early: nothing was heard


def test_a_whisper_the_caller_cut_before_it_played_is_said_later():
    """A supervisor's whisper barged in on before any of its audio went out is queued
    again, ahead of later whispers, and the LLM is not told it was said; one the caller
    heard part of is not said twice."""
    from unittest.mock import MagicMock

    from voxline.session.replies import TurnControl

    def finish(chunks: int) -> SimpleNamespace:
        turn = AgentTurn(4, time.perf_counter(), supervisor="ann", chunks=chunks,
                         whispered="Your refund is approved.", cancelled=True)
        control = SimpleNamespace(over=False, _whispers=[("Anything else?", "bob")],
                                  agent=MagicMock(), speaker=MagicMock(), ledger=MagicMock(),
                                  _reply=None, _resumed=False,
                                  _after_failures=lambda turn: None)

        async def on_the_loop() -> None:  # as a reply task ends
            TurnControl._finish(control, turn)  # type: ignore[arg-type]

        asyncio.run(on_the_loop())
        return control

    cut = finish(chunks=0)
    assert cut._whispers == [("Your refund is approved.", "ann"), ("Anything else?", "bob")]
    cut.agent.commit_reply.assert_not_called()
    cut.speaker.emit.assert_called_once()  # the turn still ends with its metrics
    heard = finish(chunks=3)
    assert heard._whispers == [("Anything else?", "bob")]
    heard.agent.commit_reply.assert_called_once()


def test_playback_marks_say_what_was_heard():
    from voxline.session.replies import TurnControl
    from voxline.v1 import voice_agent_pb2 as pb

    turn = AgentTurn(3, time.perf_counter())
    control = SimpleNamespace(turn=turn)
    TurnControl.played(control, pb.PlaybackMark(turn_id=3, played_ms=900))  # type: ignore[arg-type]
    TurnControl.played(control, pb.PlaybackMark(turn_id=3, played_ms=400))  # late, older
    TurnControl.played(control, pb.PlaybackMark(turn_id=2, played_ms=5000))  # another turn
    assert turn.played_ms == 900.0
