"""Several replicas sharing calls: conversation state in a real redis-server, and a call
whose stream breaks resumed on another replica with its history."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, ended_records, record_of, redis_server, run
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import server_process
from voxline.records import redact
from voxline.store import CallState
from voxline.store.memory import MemoryStore
from voxline.store.redis_store import RedisStore

pytestmark = pytest.mark.external

RESUMED = "Sorry, we got cut off. I'm still here."


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real redis-server on loopback for this module."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _state(turns: int = 1) -> CallState:
    return CallState("c1", "acme", "order_status", {}, 500, time.time(), ["s0"],
                     caller_turns=turns, history=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_store_ownership_and_expiry(backend, redis_url):
    """Both stores keep the same promises: only the owner writes, a claim takes the call
    over, an expired or deleted call is gone."""

    async def scenario() -> None:
        store = MemoryStore() if backend == "memory" else RedisStore(redis_url, "test:")
        assert await store.save("tok", "s1", _state(1), 60)
        assert (await store.peek("tok")).caller_turns == 1
        assert await store.claim("nope", "s2", 60) is None
        claimed = await store.claim("tok", "s2", 60)
        assert claimed is not None and claimed.history == [{"role": "user", "content": "hi"}]
        assert not await store.save("tok", "s1", _state(5), 60)  # taken over: refused
        assert await store.save("tok", "s2", _state(2), 60)
        await store.delete("tok", "s1")  # not the owner: nothing happens
        assert (await store.peek("tok")).caller_turns == 2
        await store.expire("tok", "s2", 0.2)
        deadline = time.monotonic() + 3  # until Redis lets it expire (0.2 s, not hours)
        while await store.peek("tok") is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await store.peek("tok") is None
        assert await store.save("tok2", "s3", _state(), 60)
        await store.delete("tok2", "s3")
        assert await store.peek("tok2") is None
        await store.close()

    run(scenario())


def _config(tmp: Path, name: str, redis_url: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"profiles_dir: {ROOT / 'profiles'}\n"
        f"records: {{path: {tmp / name}.db}}\n"
        f"store: {{backend: redis, redis_url: '{redis_url}', resume_window_s: 60}}\n")
    return path


def _said(result, turn: int) -> str:
    return " ".join(e["text"] for e in result.of_type("agent_text")
                    if e["turn"] == turn and e["text"])


def test_call_cut_on_one_replica_resumes_on_another(tmp_path, redis_url, synth, logs):
    question = load_recording(synth("Where is my order? The number is 1 2 3 4 5."), 16000)
    thanks = load_recording(synth("Thank you very much."), 16000)
    db = redis.Redis.from_url(redis_url, decode_responses=True)
    a_cfg, b_cfg = _config(tmp_path, "a", redis_url), _config(tmp_path, "b", redis_url)
    with server_process(a_cfg, logs / "server_replica_a.log") as a, \
            server_process(b_cfg, logs / "server_replica_b.log") as b:
        # Replica A: one turn (the tool looks the order up), then the connection breaks.
        first = run(place_call(a.address, [question],
                               CallOptions(call_id="resume-1", cut_at_end=True)))
        accepted = first.of_type("accepted")[0]
        token = accepted["resume_token"]
        assert len(token) >= 32 and not accepted["resumed"]
        assert [t["name"] for t in first.of_type("tool_call")] == ["get_order_status"]
        assert first.ended == ""  # no CallEnded: the stream was cut, not hung up

        # The conversation is in Redis under the token's hash, never the token itself.
        key = "voxline:call:" + hashlib.sha256(token.encode()).hexdigest()
        deadline = time.time() + 10
        while time.time() < deadline and db.ttl(key) > 60:
            time.sleep(0.1)  # A turns its long lease into the resume window
        assert 0 < db.ttl(key) <= 60
        assert not [k for k in db.keys("*") if token in k]
        state = json.loads(db.hget(key, "state"))
        roles = [m["role"] for m in state["history"]]
        assert roles[0] == "user" and "tool" in roles and roles[-1] == "assistant", roles
        assert "order" in state["history"][0]["content"].lower()
        first_reply = state["history"][-1]["content"]

        # Replica B takes the call up with the token: no greeting, the turns go on.
        second = run(place_call(b.address, [thanks],
                                CallOptions(call_id="reconnect", resume_token=token)))
        accepted = second.of_type("accepted")[0]
        assert accepted["resumed"] and accepted["call_id"] == "resume-1"
        assert accepted["resume_token"] == token
        assert _said(second, 0) == RESUMED
        finals = [e for e in second.of_type("transcript") if e["final"]]
        assert [e["turn"] for e in finals] == [2]  # caller turn 2: turn 1 happened on A
        assert second.ended == "CALLER_HANGUP"

        # The call ended cleanly: its state is gone, the token no longer resumes.
        deadline = time.time() + 10
        while time.time() < deadline and db.exists(key):
            time.sleep(0.1)
        assert not db.exists(key)
        again = run(place_call(a.address, [], CallOptions(resume_token=token)))
        assert again.error is not None and again.error[0] == "NOT_FOUND", again.error
        assert "resume_token" in again.error[1]

    # B's record covers the whole call, A's turn included; A's says its gateway went.
    record_b = record_of(tmp_path, "resume-1", records=lambda p: ended_records(p / "b.db"))
    assert record_b["call_id"] == "resume-1"
    assert record_b["resumed_from"] == first.of_type("accepted")[0]["session_id"]
    caller = [t["caller_text"] for t in record_b["turns"] if t["turn_id"]]
    assert len(caller) == 2 and "order" in caller[0].lower() and "thank" in caller[1].lower()
    assert redact(first_reply) in [t["agent_text"] for t in record_b["turns"]]
    openings = [(t["route"], t["agent_text"]) for t in record_b["turns"] if not t["turn_id"]]
    assert [route for route, _ in openings] == ["", "resumed"]  # A's greeting, B's return
    assert openings[1][1] == RESUMED
    record_a = record_of(tmp_path, "resume-1", records=lambda p: ended_records(p / "a.db"))
    assert record_a["reason"] == "gateway_lost"
