"""The supervisor console's API, as a browser's page or a script uses it, on a real server
with real calls: log-in and its cookie, one call followed live (events, listen-in),
whisper and end, tenant isolation, and every refusal (401/403/404/409/413) leaving the
call and its record as they were. The pages themselves: test_console_browser.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import httpx
import pytest
import websockets
from aiohttp.test_utils import make_mocked_request

from tests.conftest import CONSOLE_KEYS, ORDER_QUESTION, console_records, record_of, run
from voxline.client.connect import Connection
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.config import ConsoleSection, Settings
from voxline.console import auth as console_auth
from voxline.console.auth import COOKIE, ConsoleAuth
from voxline.records import describe
from voxline.transport.gate import Gate
from voxline.wer import wer

pytestmark = pytest.mark.own_server


def bearer(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {CONSOLE_KEYS[tenant]}"}


def test_log_in_sets_a_strict_http_only_cookie_and_a_wrong_key_is_refused(console):
    with httpx.Client(base_url=console.console_url) as http:
        assert http.get("/api/me").status_code == 401
        wrong = http.post("/api/login", json={"key": "not-a-key-of-this-server"})
        assert wrong.status_code == 401 and "key not recognised" in wrong.json()["error"]
        assert COOKIE not in http.cookies
        ok = http.post("/api/login", json={"key": CONSOLE_KEYS["acme"], "name": "Ann Lee"})
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"who": "Ann Lee (acme)", "tenant": "acme", "operator": False}
        flags = ok.headers["set-cookie"].lower()
        assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
        assert http.get("/api/me").json()["who"] == "Ann Lee (acme)"
        assert http.post("/api/logout").status_code == 204
        # the server forgot the session: the old cookie is worth nothing
        http.cookies.set(COOKIE, ok.cookies[COOKIE])
        again = http.get("/api/me")
        assert again.status_code == 401 and "log in again" in again.json()["error"]
    ops = httpx.get(f"{console.console_url}/api/me", headers=bearer("ops"))
    assert ops.json()["operator"] is True
    assert httpx.get(f"{console.console_url}/api/me",
                     headers={"Authorization": "Bearer nope"}).status_code == 401


def test_an_expired_session_is_refused(monkeypatch):
    """A log-in lasts console.session_minutes: after it the cookie gets 401."""
    settings = Settings()
    auth = ConsoleAuth(Gate(settings), ConsoleSection(session_minutes=1))
    viewer = auth.viewer_of_key(auth.local_key, "Sam")
    assert viewer is not None and viewer.operator
    token = auth.log_in(viewer)
    request = make_mocked_request("GET", "/api/me", headers={"Cookie": f"{COOKIE}={token}"})
    assert auth.viewer(request).who == "Sam"
    later = time.time() + 61
    monkeypatch.setattr(console_auth.time, "time", lambda: later)
    with pytest.raises(Exception) as refused:
        auth.viewer(request)
    assert refused.value.status == 401 and "expired" in refused.value.text  # type: ignore[attr-defined]


async def _sse(http: httpx.AsyncClient, path: str, into: list[dict]) -> None:
    async with http.stream("GET", path) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line[6:]))


async def _until(check, what: str, timeout_s: float = 60) -> None:
    """Until `check()` (a function or a coroutine function) is true."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = check()
        if asyncio.iscoroutine(done):
            done = await done
        if done:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def test_a_supervisor_follows_listens_whispers_and_ends_a_call(console, synth, logs):
    """A call of tenant acme: its row and live events (transcript, tool call, route and
    latencies), listen-in hearing both sides, a whisper the gateway gets as the agent's
    next turn, the end; globex sees none of it, the operator all; the refusals change
    nothing; the record has the supervisor's actions and who took them."""
    question = load_recording(synth(ORDER_QUESTION), 16000)
    call_id = f"console-{uuid.uuid4().hex[:8]}"
    opts = CallOptions(profile="order_status", call_id=call_id, stay_on_line_s=60,
                       metadata={"caller_id": "+1 555 0100"})
    whispered = "Your refund was approved this morning."
    url = console.console_url

    async def scenario():
        conn = Connection(console.address, api_key=CONSOLE_KEYS["acme"])
        gateway = asyncio.create_task(place_call(conn, [question], opts))
        acme = httpx.AsyncClient(base_url=url, headers=bearer("acme"), timeout=30)
        globex = httpx.AsyncClient(base_url=url, headers=bearer("globex"), timeout=30)
        ops = httpx.AsyncClient(base_url=url, headers=bearer("ops"), timeout=30)
        rows: list[dict] = []

        async def listed() -> bool:
            rows[:] = [r for r in (await acme.get("/api/calls")).json()["calls"]
                       if r["call_id"] == call_id]
            return bool(rows)

        await _until(listed, "the call in the live list")
        row = rows[0]
        sid = row["session_id"]
        assert (row["transport"], row["tenant"], row["profile"], row["caller"]) == \
            ("grpc", "acme", "order_status", "+1 555 0100"), row
        assert row["state"] in ("listening", "thinking", "speaking") and row["can_transfer"]

        events: list[dict] = []
        follower = asyncio.create_task(_sse(acme, f"/api/calls/{sid}/events", events))
        heard = {0: 0, 1: 0}
        ws = await websockets.connect(f"ws{url[4:]}/api/calls/{sid}/listen",
                                      additional_headers=bearer("acme"))
        hello = json.loads(await ws.recv())
        assert hello == {"sample_rate": 16000, "channels": ["caller", "agent"]}

        async def listen() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for msg in ws:
                    if isinstance(msg, bytes):
                        heard[msg[0]] += len(msg) - 1

        listener = asyncio.create_task(listen())

        def kinds(kind: str) -> list[dict]:
            return [e for e in events if e["kind"] == kind]

        def answered() -> bool:
            return any(m.get("turn_id") == 1 for m in kinds("turn_metrics"))

        await _until(answered, f"turn 1's metrics in {events}")
        tools = kinds("tool_call")
        assert [t["name"] for t in tools] == ["get_order_status"], tools
        assert "12345" in tools[0]["arguments_json"].replace(" ", ""), tools
        partials = [t for t in kinds("transcript") if not t.get("is_final")]
        finals = [t for t in kinds("transcript") if t.get("is_final") and t.get("turn_id")]
        assert partials and finals, kinds("transcript")
        assert wer(ORDER_QUESTION, finals[-1]["text"]) <= 0.35, finals
        metrics = next(m for m in kinds("turn_metrics") if m.get("turn_id") == 1)
        assert metrics["route"] and metrics.get("voice_to_voice_ms", 0) > 0, metrics
        await _until(lambda: heard[0] > 16000 and heard[1] > 16000,
                     "listen-in audio of both sides")

        # Another tenant sees nothing of it; the operator sees it.
        other = (await globex.get("/api/calls")).json()["calls"]
        assert all(r["session_id"] != sid for r in other), other
        for path in (f"/api/calls/{sid}", f"/api/calls/{sid}/events"):
            assert (await globex.get(path)).status_code == 404
        nope = await globex.post(f"/api/calls/{sid}/whisper", json={"text": "transfer now"})
        assert nope.status_code == 404
        with pytest.raises(websockets.InvalidStatus) as denied:
            await websockets.connect(f"ws{url[4:]}/api/calls/{sid}/listen",
                                     additional_headers=bearer("globex"))
        assert denied.value.response.status_code == 404
        assert any(r["session_id"] == sid for r in (await ops.get("/api/calls")).json()["calls"])

        # Refusals that change nothing: a cross-site post riding on a log-in cookie, an
        # oversized or empty whisper, a wrong key, an unknown call.
        async with httpx.AsyncClient(base_url=url, timeout=30) as browser:
            assert (await browser.post("/api/login", json={"key": CONSOLE_KEYS["acme"],
                                                           "name": "Ann"})).status_code == 200
            for headers in ({"Origin": "https://evil.example"},
                            {"Sec-Fetch-Site": "cross-site"}):
                forged = await browser.post(f"/api/calls/{sid}/end", json={}, headers=headers)
                assert forged.status_code == 403 and "cross-site" in forged.json()["error"]
        big = await acme.post(f"/api/calls/{sid}/whisper", json={"text": "word " * 200})
        assert big.status_code == 413 and "at most 500" in big.json()["error"]
        assert (await acme.post(f"/api/calls/{sid}/whisper", json={"text": " "})).status_code \
            == 400
        assert (await acme.post("/api/calls/no-such-call/end", json={})).status_code == 404
        wrong = httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer x" * 3})
        assert (await wrong.post(f"/api/calls/{sid}/end", json={})).status_code == 401
        await wrong.aclose()
        assert not gateway.done()  # the call goes on

        # The whisper: the agent says it as its next turn, and the gateway gets it.
        said = await acme.post(f"/api/calls/{sid}/whisper", json={"text": whispered})
        assert said.status_code == 202, said.text
        await _until(lambda: any(whispered in e.get("text", "") for e in kinds("agent_text")),
                     "the whispered turn")
        turn = next(e["turn_id"] for e in kinds("agent_text") if whispered in e.get("text", ""))
        await _until(lambda: any(m.get("turn_id") == turn for m in kinds("turn_metrics")),
                     "the whispered turn said to the end")
        assert kinds("supervisor")[0] | {"at": 0} == {"kind": "supervisor", "at": 0,
                                                       "action": "whisper", "who": "acme",
                                                       "text": whispered}
        ended = await acme.post(f"/api/calls/{sid}/end", json={})
        assert ended.status_code == 202, ended.text
        result = await asyncio.wait_for(gateway, 60)
        await asyncio.wait_for(follower, 30)  # the event stream ends with the call
        await asyncio.wait_for(listener, 30)  # and so does listen-in
        assert events[-1]["kind"] == "ended", events[-1]
        for client in (acme, globex, ops):
            await client.aclose()
        return result

    result = run(scenario())
    assert result.ended == "AGENT_HANGUP", result.events
    agent_said = " ".join(e["text"] for e in result.events if e["type"] == "agent_text")
    assert whispered in agent_said, agent_said
    rec = record_of(logs, call_id, records=console_records)
    assert [(a["action"], a["who"], a["text"]) for a in rec["supervisor"]] == \
        [("whisper", "acme", whispered), ("end", "acme", "")], rec["supervisor"]
    assert whispered in " ".join(t["agent_text"] for t in rec["turns"])
    printed = "\n".join(describe(rec))  # voxline calls --call ID
    assert f"supervisor acme: whisper: {whispered}" in printed and "supervisor acme: end" \
        in printed, printed

    sid = rec["session_id"]
    url = console.console_url
    mine = httpx.get(f"{url}/api/history", params={"q": "refund"}, headers=bearer("acme"))
    assert any(r["session_id"] == sid for r in mine.json()["records"]), mine.text
    assert httpx.get(f"{url}/api/history/{sid}", headers=bearer("acme")).status_code == 200
    theirs = httpx.get(f"{url}/api/history", headers=bearer("globex")).json()["records"]
    assert all(r["tenant"] == "globex" for r in theirs), theirs
    assert httpx.get(f"{url}/api/history/{sid}", headers=bearer("globex")).status_code == 404
    every = httpx.get(f"{url}/api/history", params={"tenant": "acme"}, headers=bearer("ops"))
    assert any(r["session_id"] == sid for r in every.json()["records"])
