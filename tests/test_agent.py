"""The agent with the real default models: the router, the knowledge base, built-in
transfer and hang-up, tools that are slow or hang, HTTP tools and their allowlist."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from tests.conftest import ROOT, run
from voxline.agent.profile import AgentProfile
from voxline.agent.stock_tools import business_hours
from voxline.agent.tools import Outcome, Toolbox
from voxline.client.gateway import CallOptions, load_recording, place_call


def _said(result, turn: int) -> str:
    return " ".join(e["text"] for e in result.of_type("agent_text")
                    if e["turn"] == turn and e["text"])


def _metrics(result, turn: int) -> dict:
    return next(e for e in result.of_type("server_turn") if e["turn"] == turn)


def test_router_takes_a_greeting_and_the_llm_an_open_question(server, synth):
    turns = [load_recording(synth("Hello, good morning."), 16000),
             load_recording(synth("Can you tell me something nice about your company?"), 16000)]
    result = run(place_call(server, turns, CallOptions(fast=True)))
    assert result.error is None
    assert _metrics(result, 1)["route"] == "greeting"
    assert _said(result, 1) == "Hello! I can check on your order. What is your order number?"
    assert _metrics(result, 1)["llm_first_token_ms"] == 0  # no LLM ran
    llm_turn = _metrics(result, 2)
    assert llm_turn["route"] == "" and llm_turn["llm_last_token_ms"] > 0 and _said(result, 2)
    ended = result.of_type("ended")[0]
    assert (ended["routed_turns"], ended["llm_turns"]) == (1, 1)


def test_first_agent_audio_leaves_before_the_llms_last_token(server, synth):
    """Speaking while thinking: the first clause is synthesised and sent while the LLM
    is still writing the rest of its answer."""
    question = load_recording(synth("Tell me about the weather and about your day."), 16000)
    result = run(place_call(server, [question], CallOptions(fast=True, profile="chatty")))
    m = _metrics(result, 1)
    assert m["route"] == "" and m["llm_last_token_ms"] > 0
    # On the one stream's order, no clocks: each clause's text goes out as the LLM
    # finishes it, so audio that arrives before the last clause's text left the server
    # while the LLM was still writing.
    clauses = [i for i, e in enumerate(result.events)
               if e["type"] == "agent_text" and e["turn"] == 1 and e["text"]]
    first_audio = next(e["position"] for e in result.audio_events if e["turn"] == 1)
    assert len(clauses) >= 2 and first_audio <= clauses[-1], (first_audio, clauses, m)


def test_spoken_question_answered_from_the_knowledge_base(server, synth):
    question = load_recording(synth("How many days do I have to return an item?"), 16000)
    result = run(place_call(server, [question], CallOptions(fast=True)))
    assert result.error is None
    assert _metrics(result, 1)["route"] == "knowledge:policies.md#Returns"
    assert "30 days" in _said(result, 1)
    ended = result.of_type("ended")[0]
    assert (ended["routed_turns"], ended["llm_turns"]) == (1, 0)  # read, not generated


def test_builtin_transfer_and_hang_up_reach_the_gateway(server, synth):
    async def both():
        return await asyncio.gather(
            place_call(server, [load_recording(synth("I'd like to speak to a person, please."),
                                               16000)], CallOptions(fast=True)),
            place_call(server, [load_recording(synth("No, that's all. Goodbye."), 16000)],
                       CallOptions(fast=True)))

    transfer, hangup = run(both())
    assert transfer.of_type("transfer")[0]["target"] == "queue:customer-care"
    assert transfer.ended == "TRANSFERRED"
    assert _said(transfer, 1).startswith("Let me transfer you")
    assert [t["name"] for t in transfer.of_type("tool_call")] == ["transfer_to_human"]
    assert hangup.of_type("hangup") and hangup.ended == "AGENT_HANGUP"
    assert _said(hangup, 1) == "Thank you for calling. Goodbye."


def test_slow_tool_gets_a_filler_and_a_hanging_tool_the_fallback(server, synth):
    """The caller is never left in silence: a filler phrase while a tool is slow; the
    fallback phrase when it hangs past its timeout; and the call goes on."""
    opts = CallOptions(fast=True, profile="faults")
    turns = [load_recording(synth(t), 16000) for t in
             ("Please check the slow system.", "Please check the broken system.",
              "Hello, good morning.")]
    result = run(place_call(server, turns, opts))
    assert result.error is None
    assert _said(result, 1) == ("One moment while I check that. "
                                "The slow system says everything is fine.")
    tools = result.of_type("tool_call")
    assert [(t["name"], t["outcome"]) for t in tools] == [
        ("slow_lookup", "ok"), ("hanging_lookup", "timeout")]
    assert _said(result, 2) == ("One moment while I check that. "
                                "Sorry, that system is not answering. Let's try something else.")
    assert 1400 <= tools[1]["duration_ms"] < 3000
    assert _said(result, 3) == "Hello again, the line still works."  # the call goes on
    assert result.of_type("ended")[0]["routed_turns"] == 3


# ---------------------------------------------------------------- tools, no server


class _Hook(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict]] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Hook.requests.append({"path": self.path, "body": body,
                               "auth": self.headers.get("Authorization")})
        status = 503 if _Hook.fail_first > 0 else 200
        _Hook.fail_first -= 1
        payload = json.dumps({"balance": 42, "say": "Your balance is 42 dollars."}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def webhook():
    httpd = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Hook.requests, _Hook.fail_first = [], 0
    yield httpd.server_address[1]
    httpd.shutdown()


def _profile(port: int, allowed: list[str]) -> AgentProfile:
    tool = {"parameters": {"type": "object", "properties": {"account": {"type": "string"}},
                           "required": ["account"]}, "timeout_s": 5}
    return AgentProfile.model_validate({
        "name": "hooks", "greeting": "hi", "instructions": "test",
        "http_allowed_hosts": allowed, "http_plain_hosts": ["127.0.0.1"],  # loopback
        "directory": ROOT,
        "tools": [
            {**tool, "name": "balance", "description": "balance",
             "http": {"url": f"http://127.0.0.1:{port}/balance", "retries": 1,
                      "headers_from_env": {"Authorization": "VOXLINE_TEST_TOKEN"}}},
            {**tool, "name": "elsewhere", "description": "not allowlisted",
             "http": {"url": f"http://localhost:{port}/other"}},
        ]})


def test_http_tool_allowlist_headers_and_retries(webhook, monkeypatch):
    monkeypatch.setenv("VOXLINE_TEST_TOKEN", "Bearer t0k3n")
    box = Toolbox(_profile(webhook, ["127.0.0.1"]))
    _Hook.fail_first = 1  # the first answer is a 503: retried once

    ok = run(box.run("balance", {"account": "A-1"}))
    assert ok.outcome is Outcome.OK and ok.result["balance"] == 42
    assert [r["body"] for r in _Hook.requests] == [{"account": "A-1"}] * 2
    assert _Hook.requests[0]["auth"] == "Bearer t0k3n"  # from the environment

    refused = run(box.run("elsewhere", {"account": "A-1"}))
    assert refused.outcome is Outcome.ERROR
    assert "not in the profile's http_allowed_hosts" in refused.result["error"]
    assert len(_Hook.requests) == 2  # no request was sent for it


def test_entry_point_tool_and_business_hours():
    profile = AgentProfile.model_validate({
        "name": "ep", "greeting": "hi", "instructions": "test", "directory": ROOT / "profiles"
        / "order_status", "tools": [{"name": "hours", "entry_point": "business_hours",
                                     "parameters": {"type": "object", "properties": {}}}]})
    result = run(Toolbox(profile).run("hours", {}))
    assert result.outcome is Outcome.OK and "say" in result.result
    ny = dt.timezone(dt.timedelta(hours=-5))
    folder = ROOT / "profiles" / "order_status"
    assert business_hours(folder, dt.datetime(2026, 11, 25, 10, 0, tzinfo=ny))["open"]
    closed = business_hours(folder, dt.datetime(2026, 11, 28, 10, 0, tzinfo=ny))  # Saturday
    assert not closed["open"] and "Monday to Friday" in closed["say"]
    with pytest.raises(Exception, match="no 'nope'"):
        Toolbox(AgentProfile.model_validate({
            "name": "ep", "greeting": "hi", "instructions": "t", "tools": [
                {"name": "x", "entry_point": "nope"}]}))


def test_memory_stays_within_its_budget_over_a_long_call():
    """Cost per turn stays flat: old turns leave the prompt, their tool results stay as
    notes, the caller's last words always go in."""
    from voxline.agent.agent import Agent, AgentKit, _tokens
    from voxline.agent.profile import load_profile
    from voxline.engines.base import ChatMessage

    profile = load_profile([ROOT / "profiles"], "order_status")
    agent = Agent(AgentKit(profile, Toolbox(profile)), chat=None)  # type: ignore[arg-type]
    agent.history += [
        ChatMessage("user", "where is my order 12345"),
        ChatMessage("assistant", tool_calls=[{"name": "get_order_status",
                                              "arguments": '{"order_id": "12345"}'}]),
        ChatMessage("tool", "Order 1 2 3 4 5 has shipped with UPS.\nReply to the caller."),
        ChatMessage("assistant", "Order 1 2 3 4 5 has shipped with UPS."),
    ]
    cost = []
    for i in range(60):
        agent.history += [ChatMessage("user", f"and another question, number {i}, about "
                                              "delivery times and returns and refunds"),
                          ChatMessage("assistant", f"Here is a fairly long answer {i} about "
                                                   "delivery, returns and refunds.")]
        agent.history.append(ChatMessage("user", f"last words {i}"))
        messages = agent._messages()
        agent.history.pop()
        cost.append(sum(_tokens(m) for m in messages))
        assert messages[-1].content == f"last words {i}"
        assert messages[0].content == profile.instructions  # the fixed prefix, unchanged
        assert next(m for m in messages if m.role != "system").role == "user"
    system_tokens = sum(_tokens(m) for m in messages if m.role == "system")
    assert max(cost) <= profile.llm.memory_tokens + system_tokens
    assert cost[59] <= cost[20] + 10  # flat, not growing with the call
    assert "Order 1 2 3 4 5 has shipped with UPS." in messages[1].content  # kept as a note


def test_enum_arguments_take_the_longest_phrase_once():
    from voxline.agent.router import _enums_in

    enums = {"size": ["small", "medium", "large", "twelve ounce"],
             "roast": ["light roast", "medium roast", "dark roast"],
             "milk": ["milk", "soy milk", "a lot of soy milk"]}
    assert _enums_in("A 12-ounce medium-roast latte with a lot of soy milk, please", enums) == {
        "size": "twelve ounce", "roast": "medium roast", "milk": "a lot of soy milk"}
    assert _enums_in("a medium latte", enums) == {"size": "medium"}
    assert _enums_in("just water", enums) == {}


def test_eval_agent_reports_router_accuracy_and_tool_exact_match(server, tmp_path):
    """scripts/eval_agent.py on the real labelled data: 2,000 of banking77's queries (2
    folds here) and the first spoken coffee orders through the whole server."""
    import subprocess
    import sys

    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "eval_agent.py"), "--folds", "2",
         "--router-queries", "2000", "--limit", "8", "--server", server, "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["router"]["queries"] == 2000 and report["router"]["intents"] == 77
    assert report["router_accuracy"] > 0.8
    assert report["tools"]["orders"] == 8 and report["tool_exact_match"] >= 0.5
    assert all(o["route"] == "order_drink" for o in report["tools"]["orders_detail"]
               if o["exact"])


def test_a_profile_chooses_its_voice_and_llm():
    """A profile may name its own TTS voice and LLM from models/; they load once and an
    unknown or wrong-kind model is refused when the profile loads, with its name."""
    import yaml

    from voxline.agent.profile import ProfileError
    from voxline.config import Settings
    from voxline.runtime import Runtime

    settings = Settings(extra_profiles_dirs=[ROOT / "tests" / "profiles"])
    rt = Runtime.load(settings)
    try:
        kit = rt.agent("faults")
        assert kit.llm is None and kit.tts is None  # the server's
        tmp = ROOT / "tests" / "profiles" / "faults"
        data = yaml.safe_load((tmp / "profile.yaml").read_text())
        for name, change, error in (
                ("voiced", {"voice": "piper-joe", "llm": {"model": "smollm2-135m"}}, None),
                ("badvoice", {"voice": "no-such-voice"}, "no-such-voice"),
                ("wrongkind", {"voice": "whisper-tiny-en"}, "not tts")):
            folder = ROOT / "tests" / "profiles" / f"tmp_{name}"
            folder.mkdir(exist_ok=True)
            try:
                (folder / "profile.yaml").write_text(yaml.safe_dump(
                    {**data, **change, "name": f"tmp_{name}", "tools": []}))
                if error is None:
                    kit = rt.agent(f"tmp_{name}")
                    assert kit.tts is rt.tts and kit.llm is rt.llm  # loaded once, shared
                else:
                    with pytest.raises(ProfileError, match=error):
                        rt.agent(f"tmp_{name}")
            finally:
                (folder / "profile.yaml").unlink()
                folder.rmdir()
        assert rt.repository.load_counts["piper-joe"] == 1
    finally:
        rt.close()
