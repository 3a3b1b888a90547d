"""The LLM scheduler on the real SmolLM2 model: batching does not change answers, a
barge-in frees its sequence within one decode step, and a long call's prompt evaluation
stays flat. Real turns: the transcripts of the latency set's recordings, and order
requests, against the default profile's agent (its LLM path: no router, no knowledge)."""

from __future__ import annotations

import asyncio
import statistics
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import DATA, ROOT

pytestmark = pytest.mark.slow

ORDERS = ["Where is my order 12345?", "Can you check order 4 8 2 1 7 for me?",
          "My order number is 55012, or maybe 90210."]


@pytest.fixture(scope="module")
def llm():
    from voxline.engines.repository import ModelRepository

    return ModelRepository(ROOT / "models").load("smollm2-135m", "llm").engine


def _scheduler(llm, **kwargs):
    from voxline.scheduling.llm import LLMScheduler

    # A fresh context each time: nothing cached from another test.
    llm._batched = None
    return LLMScheduler(llm.batched(20, 1536, 512), ThreadPoolExecutor(1), prefix_slots=2,
                        **kwargs)


def _caller_turns() -> list[str]:
    from voxline.bench import LATENCY_SET, select_recordings

    recs = select_recordings([DATA / "read_misc", DATA / "riva_examples"], LATENCY_SET)
    return [r.transcript for r in recs]


def _agent(chat, key: str, max_tokens: int | None = None):
    from voxline.agent.agent import Agent, AgentKit
    from voxline.agent.profile import load_profile
    from voxline.agent.tools import Toolbox

    profile = load_profile([ROOT / "profiles"], "order_status")
    if max_tokens is not None:
        profile.llm.max_tokens = max_tokens
    return Agent(AgentKit(profile, Toolbox(profile)), chat, affinity=key)


async def _turn(agent, text: str, outcomes: list | None = None) -> list[tuple]:
    """What the agent did: its tool calls (name, arguments) and what it said; the
    turn's TurnOutcome goes to `outcomes`."""
    from voxline.agent.agent import Say, ToolEvent, TurnOutcome

    out, said = [], []
    async for event in agent.respond(text):
        if isinstance(event, ToolEvent):
            out.append(("tool", event.result.name, event.result.arguments))
        elif isinstance(event, Say):
            out.append(("say", event.text))
            said.append(event.text)
        elif isinstance(event, TurnOutcome) and outcomes is not None:
            outcomes.append(event)
    agent.commit_reply(" ".join(said), False)
    return out


async def _conversation(chat, key: str, turns: list[str]) -> list[list[tuple]]:
    agent = _agent(chat, key)
    return [await _turn(agent, t) for t in turns]


def test_eight_conversations_at_once_answer_as_each_alone(llm):
    """Greedy decoding: 8 different two-turn conversations at once make the same tool
    calls with the same arguments as each one alone, and mostly say the same words.
    The prose of a turn can differ: the steps' other rows change llama.cpp's attention
    sums in the last bits, and at a near-tie the 135M model's greedy choice flips
    (docs/concepts/llm-scheduler.md gives how often over the benchmark's turns)."""
    texts = _caller_turns()
    conversations = [[ORDERS[i % 3] if i % 2 else texts[i], texts[(i + 5) % 16]]
                     for i in range(8)]

    async def main():
        s = _scheduler(llm)
        alone = [await _conversation(s, f"alone-{i}", c) for i, c in enumerate(conversations)]
        together = await asyncio.gather(*(_conversation(s, f"together-{i}", c)
                                          for i, c in enumerate(conversations)))
        return s, alone, together

    s, alone, together = asyncio.run(main())
    tools = [[[e for e in turn if e[0] == "tool"] for turn in c] for c in alone]
    assert any(turn for c in tools for turn in c), "no conversation called a tool"
    assert [[[e for e in turn if e[0] == "tool"] for turn in c] for c in together] == tools
    turns = [(a, t) for ca, ct in zip(alone, together, strict=True)
             for a, t in zip(ca, ct, strict=True)]
    same = sum(a == t for a, t in turns)
    assert same >= len(turns) * 0.6, f"only {same} of {len(turns)} turns said the same"
    assert max(s.stats.sizes) >= 4, f"the calls were not batched: {dict(s.stats.sizes)}"


def test_barge_in_frees_the_sequence_within_one_step(llm):
    """A consumer that stops reading (barge-in) during the tool decision, and during
    prose, leaves the batch by the next decode step; that call's next turn and another
    call running meanwhile answer as they would have without it."""
    from voxline.engines.base import ChatMessage
    from voxline.scheduling.chat import ChatRequest

    s = _scheduler(llm)
    steps: list[set[int]] = []
    step = s.engine.step

    def recording_step(rows):
        steps.append({r.slot for r in rows})
        return step(rows)

    s.engine.step = recording_step
    profile_agent = _agent(s, "probe")
    tools = profile_agent.toolbox.specs("order 12345")

    async def cut(key: str, text: str, after_tokens: int) -> int:
        """Open a stream and stop reading after `after_tokens` text chunks (0: right at
        admission, during the decision); returns the steps taken at that moment."""
        request = ChatRequest([ChatMessage("system", profile_agent.profile.instructions),
                               ChatMessage("user", text)], tools, "auto", 60, 0.0, key)
        stream = s.stream(request)
        seen = 0
        async for chunk in stream:
            if chunk.queue_ms is not None and after_tokens == 0:
                break
            seen += bool(chunk.text)
            if after_tokens and seen >= after_tokens:
                break
        await stream.aclose()
        return len(steps)

    async def main():
        reference = await _conversation(s, "ref-other", ["Tell me about your store."])
        other = asyncio.create_task(_conversation(s, "other", ["Tell me about your store."]))
        marks = []
        for key, text, after in (("cut-decide", "Where is my order 12345?", 0),
                                 ("cut-prose", "Hello, who are you and what can you do?", 3)):
            marks.append((key, await cut(key, text, after)))
        slots = {key: s._conversations[key].slot for key, _ in marks}
        theirs = await other
        resumed_at = len(steps)
        # The cut call goes on: its next turn answers as a fresh call with that history.
        agent = _agent(s, "cut-prose")
        agent.history = [ChatMessage("user", "Hello, who are you and what can you do?"),
                         ChatMessage("assistant", "I am ...")]
        fresh = _agent(s, "fresh")
        fresh.history = list(agent.history)
        return marks, slots, resumed_at, reference, theirs, await _turn(agent, ORDERS[0]), \
            await _turn(fresh, ORDERS[0])

    marks, slots, resumed_at, reference, theirs, after_cut, as_fresh = asyncio.run(main())
    for key, at in marks:
        later = [i for i, slot_set in enumerate(steps[at:resumed_at]) if slots[key] in slot_set]
        # The step in flight when it was cut may still carry it; none after that.
        assert later in ([], [0]), f"{key}: still in steps {later} after the barge-in"
    assert theirs == reference
    assert after_cut and after_cut == as_fresh


def test_a_long_call_evaluates_a_flat_prompt_per_turn(llm):
    """60 turns: each evaluates only what it adds (its turn and the last reply), not
    the history; old turns leave the window in large steps, so only a few turns
    re-read what remains."""
    texts = _caller_turns()

    async def main():
        s = _scheduler(llm)
        agent = _agent(s, "long", max_tokens=12)
        outcomes: list = []
        for i in range(60):
            await _turn(agent, texts[i % len(texts)], outcomes)
        assert len(outcomes) == 60
        return [o.prompt_evaluated for o in outcomes], [o.prompt_reused for o in outcomes]

    evaluated, reused = asyncio.run(main())
    typical = statistics.median(evaluated)
    assert typical < 120, evaluated
    assert statistics.median(evaluated[40:]) <= statistics.median(evaluated[5:20]) + 16
    # Re-reading the window happens when old turns are dropped: rarely.
    rereads = [i for i, n in enumerate(evaluated) if n > 3 * typical]
    assert len(rereads) <= 8, (rereads, evaluated)
    assert statistics.median(reused[40:]) > 3 * typical  # the history is reused
