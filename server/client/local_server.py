"""Start a `voxline serve` process on a free loopback port (tests, evaluations)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServerProcess:
    address: str  # HOST:PORT of the gRPC server
    proc: subprocess.Popen
    metrics_url: str = ""  # when the config serves metrics
    # Telephony listeners that are on: transport -> port ("sip", "twilio", ...).
    ports: dict[str, int] = field(default_factory=dict)
    console_url: str = ""  # the supervisor console, when the config serves it
    console_login: str = ""  # its log-in link, when no tenants are configured


@contextlib.contextmanager
def server_process(config: Path | None = None, log: Path | None = None,
                   start_timeout_s: float = 120, env: dict[str, str] | None = None,
                   program: list[str] | None = None) -> Iterator[ServerProcess]:
    """Run `voxline serve` (or `program` taking the same arguments) until the block ends.
    """
    args = [*(program or [sys.executable, "-m", "voxline.cli"]), "serve", "--port", "0"]
    if config is not None:
        args += ["--config", str(config)]
    with open(log or os.devnull, "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            address, metrics, ports, console, login = None, "", {}, "", ""
            deadline = time.time() + start_timeout_s
            assert proc.stdout is not None
            while time.time() < deadline and address is None:
                line = proc.stdout.readline()
                if not line:
                    break
                if m := re.search(r"metrics on (\S+)", line):
                    metrics = m.group(1)
                if m := re.search(r"telephony (\w+) on \S+:(\d+)", line):
                    ports[m.group(1)] = int(m.group(2))
                if m := re.search(r"console on (\S+)", line):
                    console = m.group(1)
                if m := re.search(r"console log-in link .*: (\S+)", line):
                    login = m.group(1)
                if m := re.search(r"listening on (\S+)", line):
                    address = m.group(1)
            if address is None:
                raise RuntimeError(f"voxline serve did not start (log: {log or 'none'})")
            yield ServerProcess(address, proc, metrics, ports, console, login)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=60)  # SIGTERM drains: calls in progress say goodbye
            except subprocess.TimeoutExpired:
                proc.kill()


@contextlib.contextmanager
def local_server(config: Path | None = None, log: Path | None = None,
                 start_timeout_s: float = 120,
                 env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield HOST:PORT of a server that runs until the block ends."""
    with server_process(config, log, start_timeout_s, env) as server:
        yield server.address
