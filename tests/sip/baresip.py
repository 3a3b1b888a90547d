"""Drives Debian's baresip (a real SIP phone) for the SIP tests: one process per call with
its own config folder, a WAV file as its microphone (aufile), what it hears recorded by
sndfile, and its ctrl_tcp socket (netstring-framed JSON) to dial, send DTMF, hang up and
report call events (CALL_ESTABLISHED, CALL_CLOSED...)."""

from __future__ import annotations

import json
import queue
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from string import Template

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
INSTALL_HINT = ("scripts/test.sh installs it (`apt-get install baresip sip-tester`), "
                "as CI does")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}")
    return path


def write_microphone(path: Path, speech: np.ndarray, rate: int, lead_s: float,
                     tail_s: float) -> Path:
    """The WAV aufile plays: `lead_s` of silence (the greeting plays over it), the speech
    (float32 mono at `rate`), then `tail_s` of silence (baresip hangs up at the end)."""
    silence = np.zeros(int(rate * lead_s), np.float32)
    audio = np.concatenate([silence, speech, np.zeros(int(rate * tail_s), np.float32)])
    sf.write(str(path), np.clip(audio, -1, 1), rate, subtype="PCM_16")
    return path


def read_growing_wav(path: Path) -> np.ndarray:
    """The int16 samples of a WAV that sndfile is still writing (its header's sizes are
    filled in only when the call ends, so read past the data chunk's header)."""
    data = path.read_bytes()
    at = data.find(b"data")
    if at < 0:
        return np.zeros(0, np.int16)
    body = data[at + 8:]
    return np.frombuffer(body[: len(body) // 2 * 2], "<i2")


class Baresip:
    """One baresip process on loopback. Use as a context manager; `events` holds every
    ctrl_tcp event so far, `wait_event` blocks until one of a type arrives."""

    def __init__(self, folder: Path, microphone: Path, auto_answer: bool = False) -> None:
        self.folder = folder
        self.records = folder / "heard"
        self.records.mkdir(parents=True, exist_ok=True)
        self.sip_port, self.ctrl_port = free_port(), free_port()
        rtp = random.randrange(40000, 59000, 2)
        (folder / "config").write_text(Template((HERE / "baresip.conf").read_text()).substitute(
            sip_port=self.sip_port, rtp_min=rtp, rtp_max=rtp + 198, source=microphone,
            player=folder / "player.wav", records=self.records, ctrl_port=self.ctrl_port))
        answer = ";answermode=auto" if auto_answer else ""
        (folder / "accounts").write_text(f"<sip:caller@127.0.0.1:{self.sip_port}>"
                                         f";regint=0{answer}\n")
        self.log = folder / "baresip.log"
        self.events: list[dict] = []
        self._queue: queue.Queue[dict] = queue.Queue()
        self._responses: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._tokens = 0

    def __enter__(self) -> Baresip:
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([binary("baresip"), "-f", str(self.folder)],
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:  # ctrl_tcp listens once baresip is ready
            if self.proc.poll() is not None:
                pytest.fail(f"baresip exited with {self.proc.returncode}: {self.tail()}")
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), 1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.proc.kill()
                    pytest.fail(f"baresip's ctrl_tcp did not listen: {self.tail()}")
                time.sleep(0.05)
        self.sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            try:
                self._send("quit")
                # quit waits for calls still being set up, such as the one baresip places
                # to a REFER's target (nobody answers it here): do not wait long for them
                self.proc.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.sock.close()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    # -- ctrl_tcp: each message is a netstring ("LEN:JSON,")
    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b":" in buf:
                size, rest = buf.split(b":", 1)
                if len(rest) < int(size) + 1:
                    break
                message = json.loads(rest[: int(size)])
                buf = rest[int(size) + 1:]
                with self._cond:
                    if message.get("response"):
                        self._responses[str(message.get("token"))] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def _send(self, command: str, params: str = "") -> str:
        self._tokens += 1
        token = f"t{self._tokens}"
        body = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(b"%d:%s," % (len(body), body))
        return token

    def command(self, command: str, params: str = "", timeout_s: float = 10) -> dict:
        """Run a baresip command; its response (ok, data)."""
        token = self._send(command, params)
        with self._cond:
            if not self._cond.wait_for(lambda: token in self._responses, timeout_s):
                pytest.fail(f"baresip did not answer {command!r}: {self.tail()}")
            reply = self._responses.pop(token)
        assert reply.get("ok"), (command, reply)
        return reply

    def wait_event(self, kind: str, timeout_s: float, call: str = "") -> dict:
        """The first event of this type (CALL_ESTABLISHED, CALL_CLOSED...), of this call
        (its SIP Call-ID) when given, waiting for it."""
        def found() -> dict | None:
            return next((e for e in self.events if e.get("type") == kind
                         and (not call or e.get("id") == call)), None)

        with self._cond:
            if not self._cond.wait_for(lambda: found() is not None, timeout_s):
                seen = [e.get("type") for e in self.events]
                pytest.fail(f"baresip reported no {kind} within {timeout_s:g} s (saw {seen}): "
                            f"{self.tail()}")
            return found()  # type: ignore[return-value]

    def dial(self, uri: str) -> None:
        self.command("dial", uri)

    def send_digit(self, digit: str) -> None:
        self.command("sndcode", digit)  # an RFC 4733 telephone-event when the SDP has one

    def hangup(self) -> None:
        self.command("hangup")

    def heard_file(self) -> Path | None:
        """The WAV sndfile writes with what the call hears (None before the call's audio
        starts)."""
        return next(iter(sorted(self.records.glob("dump-*-dec.wav"))), None)

    def heard(self) -> np.ndarray:
        path = self.heard_file()
        return np.zeros(0, np.int16) if path is None else read_growing_wav(path)
