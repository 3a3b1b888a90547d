"""The supervisor console in a real browser: Debian's chromium, driven by Selenium
through Debian's chromium-driver (scripts/test.sh installs both; a missing one fails
these tests, it skips none), against the `console` server.

The calls are real gRPC calls placed here with a tenant's key, in a background thread:
a synthesized question, then silence on the line until the console ends the call. The
page is checked the way a supervisor uses it: log in through the form, see the call in
the live table, open it (transcript, tool call, latency bar), listen in, whisper (the
gateway hears the agent say it), transfer, find the call in History; and a tenant never
sees another's calls, in the page or through the API.

The tests of the first call run in file order and share it (a module fixture), as a
supervisor's session would: opened, listened to, whispered into, transferred.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import CONSOLE_KEYS, ORDER_QUESTION, console_records, record_of, run
from voxline.client.connect import Connection
from voxline.client.gateway import CallOptions, CallResult, GatewayCall, load_recording
from voxline.wer import wer

pytestmark = pytest.mark.own_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WHISPER = "Your refund was approved this morning."
HOLD = "Thank you for holding."
NAME = "Dana Supervisor"
WAIT_S = 90  # a turn on the 2-core CI machine, with the other test process busy too


def launch_browser() -> webdriver.Chrome:
    """Headless chromium with its own driver, both from Debian: given by path, so
    Selenium Manager never looks for (or downloads) either."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run scripts/test.sh, which "
                    "installs Debian's chromium and chromium-driver")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1280,800",
                "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def page_errors(driver: webdriver.Chrome) -> list[str]:
    """Uncaught script errors and refused loads (CSP) the page logged since last asked;
    the API's own 4xx answers (a 404 the page shows as "not found") are not errors."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and e.get("source") in ("javascript", "security")]


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = launch_browser()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def no_script_errors(request):
    """After each test: the page threw nothing and the browser refused nothing."""
    yield
    if "browser" in request.fixturenames:
        errors = page_errors(request.getfixturevalue("browser"))
        assert not errors, errors


def wait(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], object],
         what: str, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.2,
                         ignored_exceptions=(NoSuchElementException,
                                             StaleElementReferenceException)).until(
        condition, f"{what} (waited {timeout:g} s)")


def find(driver: webdriver.Chrome, css: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, css)


def finds(driver: webdriver.Chrome, css: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, css)


def read_all(driver: webdriver.Chrome, css: str, attribute: str) -> dict[str, str]:
    """Each element `css` matches: its `attribute` and its own text, read in one script.
    The live tables redraw their rows as the streams update them (4 times a second): a
    script runs between two redraws, where an element-by-element read of a row can go
    stale at every try on a busy machine."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll(arguments[0])].map("
        "e => [e.getAttribute(arguments[1]), e.textContent.trim()]));", css, attribute)


def text_of(element: WebElement) -> str:
    """The element's own text (no CSS-generated labels), whether shown or not."""
    return (element.get_attribute("textContent") or "").strip()


def log_in(driver: webdriver.Chrome, console, who: str, name: str = NAME) -> None:
    """A fresh browser session (cookies cleared) logged in through the form."""
    driver.get(console.console_url + "/#/live")
    driver.delete_all_cookies()
    driver.refresh()  # a new page: it asks who is signed in, and nobody is
    key = wait(driver, lambda d: find(d, "#login-key"), "the login form")
    key.send_keys(CONSOLE_KEYS[who])
    find(driver, "#login-name").send_keys(name)
    find(driver, "#login-submit").click()
    wait(driver, lambda d: d.execute_script("return document.body.dataset.signedIn")
         == "true", f"logged in as {who}")
    wait(driver, lambda d: find(d, "#calls-body"), "the live calls table")


def go(driver: webdriver.Chrome, console, route: str) -> None:
    driver.get(f"{console.console_url}/#/{route}")


class LiveCall:
    """A gRPC call placed with a tenant's key in a background thread: `turns` spoken
    after the greeting, then silence on the line (up to `stay_s`) until the console or
    the agent ends it. Every event the gateway gets is kept, to wait on."""

    def __init__(self, console, tenant: str, turns: list[np.ndarray], stay_s: float,
                 profile: str = "order_status", record: bool = False) -> None:
        self.call_id = f"console-{tenant}-{uuid.uuid4().hex[:8]}"
        self.opts = CallOptions(profile=profile, call_id=self.call_id, keep_audio=True,
                                stay_on_line_s=stay_s, reply_timeout_s=WAIT_S,
                                metadata={"caller": f"{tenant} caller"}, record=record)
        self.events: list[dict] = []
        self.gateway: GatewayCall | None = None  # its .result fills in as the call goes
        self.result: CallResult | None = None
        self.failure: BaseException | None = None
        self.done = False
        self._cond = threading.Condition()
        conn = Connection(console.address, api_key=CONSOLE_KEYS[tenant])
        self._thread = threading.Thread(target=self._run, args=(conn, turns), daemon=True)
        self._thread.start()

    def _run(self, conn: Connection, turns: list[np.ndarray]) -> None:
        async def call() -> CallResult:
            async with conn.channel() as channel:
                self.gateway = GatewayCall(channel, self.opts, self._seen, conn.metadata)
                return await self.gateway.run(list(turns))

        try:
            self.result = run(call())
        except BaseException as exc:  # reported by wait() and join()
            self.failure = exc
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    def _seen(self, event: dict) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[dict], bool], what: str,
             timeout: float = WAIT_S) -> dict:
        """The first event the gateway got that `predicate` accepts."""
        deadline = time.monotonic() + timeout
        with self._cond:
            checked = 0
            while True:
                for event in self.events[checked:]:
                    if predicate(event):
                        return event
                checked = len(self.events)
                if self.done:
                    raise AssertionError(f"call {self.call_id} ended before {what}: "
                                         f"{self.result and self.result.ended} {self.failure}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} on call {self.call_id} in {timeout:g} s")
                self._cond.wait(left)

    @property
    def session_id(self) -> str:
        return self.wait(lambda e: e["type"] == "accepted", "acceptance")["session_id"]

    def agent_audio(self, turn: int) -> np.ndarray:
        """The agent's audio of a finished turn as the gateway got it (float32)."""
        assert self.gateway is not None
        data = bytes(self.gateway.result.agent_audio.get(turn, b""))
        assert data, f"no agent audio for turn {turn} of call {self.call_id}"
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768

    def turns_so_far(self) -> int:
        with self._cond:
            return max((e["turn"] for e in self.events if e["type"] == "server_turn"),
                       default=0)

    def join(self, timeout: float = WAIT_S) -> CallResult:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"call {self.call_id} still going"
        assert self.failure is None, self.failure
        assert self.result is not None
        return self.result


@pytest.fixture(scope="module")
def acme_call(console, synth) -> Iterator[LiveCall]:
    """acme's call that the first tests share: the order question, then on the line."""
    call = LiveCall(console, "acme", [load_recording(synth(ORDER_QUESTION), 16000)], stay_s=300)
    yield call
    if not call.done:  # a test failed before the transfer: end it, as a supervisor would
        with contextlib.suppress(httpx.HTTPError):
            api(console, "ops", "POST", f"/api/calls/{call.session_id}/end")
        call.join()


def api(console, who: str, method: str, path: str, **kwargs) -> httpx.Response:
    return httpx.request(method, console.console_url + path, timeout=30,
                         headers={"Authorization": f"Bearer {CONSOLE_KEYS[who]}"}, **kwargs)


def caller_words(driver: webdriver.Chrome, root: str) -> str:
    """What the page shows the caller saying (final transcripts, turn by turn)."""
    return " ".join(text_of(p) for p in finds(driver, f"{root} .turn .caller[data-final='true']"))


# ------------------------------------------------------------------ the first call, live


def test_the_call_appears_live_and_its_page_shows_words_tool_and_latency(
        console, browser, acme_call):
    log_in(browser, console, "acme")
    sid = acme_call.session_id
    row = wait(browser, lambda d: find(d, f"tr[data-session-id='{sid}']"),
               "the call's row in the live table")
    cells = wait(browser, lambda d: read_all(d, f"tr[data-session-id='{sid}'] td", "data-field"),
                 "the call's row's cells")
    assert cells["transport"] == "grpc" and cells["profile"] == "order_status", cells
    assert cells["state"] in {"listening", "thinking", "speaking"}, cells
    assert cells["caller"] == "acme caller", cells
    assert "tenant" not in cells  # a tenant's view has no tenant column
    assert wait(browser, lambda d: int(text_of(find(d, "#active-calls"))) >= 1,
                "the active calls count")
    schedulers = wait(browser, lambda d: set(read_all(d, "#schedulers-body tr",
                                                      "data-scheduler")), "the schedulers' load")
    assert {"vad", "stt", "llm"} <= schedulers, schedulers

    row.click()
    wait(browser, lambda d: find(d, f"#call[data-session-id='{sid}']"), "the call's page")
    assert browser.current_url.endswith(f"#/call/{sid}")
    # the tool call, with its arguments, once the caller's question is answered
    tool = wait(browser, lambda d: find(d, "#tools tr[data-tool='get_order_status']"),
                "the get_order_status tool call")
    assert json.loads(text_of(tool.find_element(By.CSS_SELECTOR, "[data-field='arguments']"))
                      ) == {"order_id": "12345"}
    assert text_of(tool.find_element(By.CSS_SELECTOR, "[data-field='outcome']")) == "ok"
    turn = int(tool.get_attribute("data-turn-id"))
    # the caller's words, as transcribed (the partials were replaced by the final)
    wait(browser, lambda d: caller_words(d, "#transcript"), "the caller's final words")
    said = caller_words(browser, "#transcript")
    assert wer(ORDER_QUESTION, said) <= 0.35, said
    # the turn's latency bar, split into its four stages, each labelled
    # (the list is drawn again at each turn's metrics: read it whole inside the wait)
    def latency_bar(d: webdriver.Chrome) -> tuple[dict[str, int], str]:
        bar = find(d, f"#latency .turn-latency[data-turn-id='{turn}']")
        return ({s.get_attribute("data-stage"): int(s.get_attribute("data-ms"))
                 for s in bar.find_elements(By.CSS_SELECTOR, ".latency-bar .stage")},
                text_of(bar.find_element(By.CSS_SELECTOR, ".latency-legend")))

    stages, legend = wait(browser, latency_bar, "the turn's latency bar")
    assert set(stages) == {"endpoint", "stt", "llm", "tts"}, stages
    # ...the figures the gateway got in the turn's TurnMetrics
    metrics = acme_call.wait(lambda e: e["type"] == "server_turn" and e["turn"] == turn,
                             "the turn's metrics")
    assert stages == {"endpoint": metrics["endpoint_ms"], "stt": metrics["stt_ms"],
                      "llm": metrics["llm_first_token_ms"],
                      "tts": metrics["tts_first_chunk_ms"]}, (stages, metrics)
    assert stages["endpoint"] > 0 and stages["tts"] > 0, stages
    assert "end of turn" in legend and "STT" in legend and "first TTS chunk" in legend
    assert f"{stages['stt']} ms" in legend, legend
    # and its route, beside the turn in the transcript
    route = wait(browser, lambda d: text_of(find(
        d, f"#transcript .turn[data-turn-id='{turn}'] [data-field='route']")), "the route")
    assert route.startswith("route:"), route
    # the agent's answer streamed in: it says the order's status
    answer = text_of(wait(browser, lambda d: find(
        d, f"#transcript .turn[data-turn-id='{turn}'] .agent[data-final='true']"),
        "the agent's finished answer"))
    spoken = " ".join(e["text"] for e in acme_call.events
                      if e["type"] == "agent_text" and e["turn"] == turn)
    assert answer and wer(spoken, answer) == 0, (spoken, answer)


def listen_counts(driver: webdriver.Chrome) -> dict:
    return driver.execute_script("return window.voxlineListen || {}")


def test_listen_in_receives_both_sides(console, browser, acme_call):
    sid = acme_call.session_id
    go(browser, console, f"call/{sid}")
    wait(browser, lambda d: find(d, f"#call[data-session-id='{sid}']"), "the call's page")
    find(browser, "#listen").click()
    wait(browser, lambda d: listen_counts(d).get("state") == "listening", "listen-in open")
    assert listen_counts(browser)["sample_rate"] == 16000
    first = wait(browser, lambda d: listen_counts(d).get("caller", 0) >= 10 and
                 listen_counts(d), "the caller's side (silence on the line)")
    # the agent side carries audio while the agent speaks: make it speak
    find(browser, "#whisper-text").send_keys(HOLD)
    find(browser, "#whisper-send").click()
    wait(browser, lambda d: listen_counts(d).get("agent", 0) > 0, "the agent's side")
    counter = find(browser, "#listen-counts")
    assert int(counter.get_attribute("data-agent")) > 0
    assert int(counter.get_attribute("data-caller")) > first["caller"]  # still flowing
    # the whisper was said on the call: the gateway got its text as the agent's
    acme_call.wait(lambda e: e["type"] == "agent_text" and e["text"].strip() == HOLD,
                   "the agent saying the first whisper")


def test_whisper_is_said_to_the_caller(console, browser, acme_call, whisper):
    sid = acme_call.session_id
    go(browser, console, f"call/{sid}")
    wait(browser, lambda d: find(d, f"#call[data-session-id='{sid}']"), "the call's page")
    # the first whisper's turn is over before this one is sent (so its audio is its own)
    hold = acme_call.wait(lambda e: e["type"] == "agent_text" and e["text"].strip() == HOLD,
                          "the first whisper")
    acme_call.wait(lambda e: e["type"] == "server_turn" and e["turn"] == hold["turn"],
                   "the end of the first whisper's turn")
    before = acme_call.turns_so_far()
    box = find(browser, "#whisper-text")
    box.send_keys(WHISPER)
    find(browser, "#whisper-send").click()
    wait(browser, lambda d: box.get_attribute("value") == "", "the whisper accepted")
    # the gateway hears it: the agent's next turn is the sentence, as audio
    done = acme_call.wait(lambda e: e["type"] == "server_turn" and e["turn"] > before,
                          "the whispered turn")
    turn = done["turn"]
    said = " ".join(e["text"] for e in acme_call.events
                    if e["type"] == "agent_text" and e["turn"] == turn).strip()
    assert said == WHISPER, said
    heard = whisper.transcribe(acme_call.agent_audio(turn)).text
    assert wer(WHISPER, heard) <= 0.3, heard
    # and the page shows who whispered what, and the agent saying it
    note = wait(browser, lambda d: [n for n in finds(d, "#transcript .supervisor-note")
                                    if WHISPER in text_of(n)], "the whisper in the transcript")
    assert NAME in text_of(note[0])
    wait(browser, lambda d: text_of(find(
        d, f"#transcript .turn[data-turn-id='{turn}'] .agent")) == WHISPER,
        "the whispered turn in the transcript")


def test_transfer_ends_the_call_and_history_finds_it(console, browser, acme_call, logs):
    sid = acme_call.session_id
    go(browser, console, f"call/{sid}")
    button = wait(browser, lambda d: find(d, "#transfer"), "the Transfer button")
    wait(browser, lambda d: button.is_enabled(), "Transfer enabled (the profile has a target)")
    button.click()
    result = acme_call.join()
    assert result.ended == "TRANSFERRED", result.events[-5:]
    assert result.of_type("transfer")[0]["target"] == "queue:customer-care"
    wait(browser, lambda d: find(d, "#call-state").get_attribute("data-state") == "ended",
         "the page showing the call ended")
    assert finds(browser, "#activity li[data-kind='transfer']")

    rec = record_of(logs, acme_call.call_id, records=console_records)
    assert rec["reason"] == "TRANSFERRED" and rec["tenant"] == "acme"
    actions = [(a["action"], a["text"]) for a in rec["supervisor"]]
    assert actions == [("whisper", HOLD), ("whisper", WHISPER), ("transfer", "")], actions
    assert all(a["who"].startswith(NAME) for a in rec["supervisor"]), rec["supervisor"]

    # History: the search by profile and words finds it; its timeline tells the call
    go(browser, console, "history")
    form = wait(browser, lambda d: find(d, "#history-form"), "the History search")
    form.find_element(By.CSS_SELECTOR, "#h-profile").send_keys("order_status")
    form.find_element(By.CSS_SELECTOR, "#h-q").send_keys("refund")
    find(browser, "#h-search").click()
    row = wait(browser, lambda d: find(d, f"#history-results tr[data-session-id='{sid}']"),
               "the call in the search results")
    assert text_of(row.find_element(By.CSS_SELECTOR, "[data-field='reason']")) == "transferred"
    assert wer(ORDER_QUESTION, text_of(row.find_element(By.CSS_SELECTOR, "[data-field='snippet']"))
               ) <= 0.35
    row.click()
    wait(browser, lambda d: find(d, f"#record[data-session-id='{sid}']"), "the record")
    turns = finds(browser, "#timeline .turn")
    assert len(turns) >= 4, [text_of(t) for t in turns]  # greeting, answer, 2 whispers...
    assert wer(ORDER_QUESTION, caller_words(browser, "#timeline")) <= 0.35
    assert finds(browser, "#timeline .turn [data-tool='get_order_status']")
    assert finds(browser, "#timeline .turn .latency .stage[data-stage='stt']")
    agent = [text_of(a) for a in finds(browser, "#timeline .turn .agent")]
    assert WHISPER in agent and HOLD in agent, agent
    shown = [(a.get_attribute("data-action"), text_of(a))
             for a in finds(browser, "#supervisor-actions li")]
    assert [s[0] for s in shown] == ["whisper", "whisper", "transfer"], shown
    assert all(NAME in s[1] for s in shown) and WHISPER in shown[1][1], shown
    if rec.get("recording"):  # recorded (consent, and the tenant or profile opts in)
        audio = find(browser, "#recording")
        assert audio.get_attribute("src").endswith(f"/api/history/{sid}/recording")
    else:
        assert finds(browser, "#no-recording")


# ------------------------------------------------------------------ tenants


def test_a_tenant_sees_only_its_calls_and_the_operator_sees_all(console, browser, logs,
                                                                acme_call, synth):
    # each caller says hello first (GatewayCall keeps the server's turns per caller turn)
    hello = [load_recording(synth("Hello there."), 16000)]
    acme = LiveCall(console, "acme", hello, stay_s=120)
    globex = LiveCall(console, "globex", hello, stay_s=120)
    mine, theirs = globex.session_id, acme.session_id
    try:
        log_in(browser, console, "globex", "Gil Globex")
        wait(browser, lambda d: find(d, f"tr[data-session-id='{mine}']"),
             "globex's own call in its live table")
        shown = wait(browser, lambda d: set(read_all(d, "#calls-body tr", "data-session-id")),
                     "the live rows")
        assert theirs not in shown and shown == {mine}, shown
        go(browser, console, f"call/{theirs}")
        wait(browser, lambda d: find(d, f"#not-found[data-session-id='{theirs}']"),
             "acme's call as not found")
        go(browser, console, f"record/{acme_call.session_id}")
        wait(browser, lambda d: find(d, f"#not-found[data-session-id='{acme_call.session_id}']"),
             "acme's record as not found")

        assert api(console, "globex", "GET", f"/api/calls/{theirs}").status_code == 404
        assert api(console, "globex", "POST", f"/api/calls/{theirs}/whisper",
                   json={"text": "hello"}).status_code == 404
        listed = api(console, "globex", "GET", "/api/calls").json()["calls"]
        assert [c["session_id"] for c in listed] == [mine], listed
        # the operator sees both, in the API and in the page (with a tenant column)
        every = {c["session_id"]: c["tenant"]
                 for c in api(console, "ops", "GET", "/api/calls").json()["calls"]}
        assert every.get(mine) == "globex" and every.get(theirs) == "acme", every
        log_in(browser, console, "ops", "Olu Operator")
        for sid, tenant in ((mine, "globex"), (theirs, "acme")):
            shown_as = wait(browser, lambda d, s=sid: text_of(find(
                d, f"tr[data-session-id='{s}'] [data-field='tenant']")),
                f"{tenant}'s call in the operator's table")
            assert shown_as == tenant, shown_as
    finally:
        for call in (acme, globex):
            if not call.done:
                api(console, "ops", "POST", f"/api/calls/{call.session_id}/end")
    for call in (acme, globex):
        assert call.join().ended == "AGENT_HANGUP"
        record_of(logs, call.call_id, records=console_records)
    # History: globex's key finds globex's records and none of acme's
    records = api(console, "globex", "GET", "/api/history?limit=500").json()["records"]
    assert mine in {r["session_id"] for r in records}
    assert {r["tenant"] for r in records} == {"globex"}, records
    for sid in (theirs, acme_call.session_id):
        assert api(console, "globex", "GET", f"/api/history/{sid}").status_code == 404
        assert api(console, "globex", "GET", f"/api/history/{sid}/recording").status_code == 404
    tenants = {r["tenant"] for r in api(console, "ops", "GET",
                                        "/api/history?limit=500").json()["records"]}
    assert {"acme", "globex"} <= tenants, tenants



def test_a_recorded_call_plays_from_its_record(console, browser, logs, synth):
    """A consented call on a profile that records: the live row says so, and the
    record's <audio> loads the WAV through the console (the browser's own request,
    with its session cookie) and knows its length."""
    call = LiveCall(console, "acme", [load_recording(synth("Hello there."), 16000)],
                    stay_s=60, profile="recorded", record=True)
    sid = call.session_id
    log_in(browser, console, "acme")
    # read inside the wait: the live table draws a row's cells again at each update
    shown = wait(browser, lambda d: text_of(find(
        d, f"tr[data-session-id='{sid}'] [data-field='recording']")), "the call live")
    assert "recording" in shown, shown
    call.wait(lambda e: e["type"] == "server_turn" and e["turn"] == 1, "the answer")
    assert api(console, "acme", "POST", f"/api/calls/{sid}/end").status_code == 202
    assert call.join().ended == "AGENT_HANGUP"
    rec = record_of(logs, call.call_id, records=console_records)
    assert rec["recording"] and rec["recording_s"] > 1, rec
    go(browser, console, f"record/{sid}")
    audio = wait(browser, lambda d: find(d, f"#record[data-session-id='{sid}'] #recording"),
                 "the record's audio player")
    assert audio.get_attribute("controls") is not None
    length = wait(browser, lambda d: d.execute_script(
        "const a = document.getElementById('recording');"
        "return a.readyState >= 1 && a.duration > 0 ? a.duration : 0;"), "the WAV loaded")
    assert abs(length - rec["recording_s"]) < 0.05, (length, rec["recording_s"])
