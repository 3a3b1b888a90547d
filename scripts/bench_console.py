"""Does watching calls slow them down? Voice-to-voice at 8 concurrent calls with the
supervisor console closed, then open, in one run:

    python scripts/bench_console.py --json bench/console.json

One fresh `voxline serve` (default CPU models) with the console on. Rounds alternate
(closed, open, closed, open...) so drift on a shared machine falls on both. With the
console open a supervisor (this script, speaking the page's protocol) keeps the
live-calls stream open, follows one busy call's live events, and listens in on it over
the WebSocket; when that call ends it opens the next one in progress. Each round is
`voxline bench` at 8 concurrent calls of 2 turns (16 calls, the latency set, real time,
the same seed). Figures are at the caller's side; the ratio is open / closed, pooled
over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np
import websockets
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from voxline.audio.formats import Encoding  # noqa: E402
from voxline.bench import LATENCY_SET, BenchConfig, percentiles, run_bench  # noqa: E402
from voxline.client.local_server import server_process  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "speech"


class Supervisor:
    """The console's part: the live list, one call's events and its listen-in."""

    def __init__(self, url: str, login: str) -> None:
        self.url, self.login = url, login
        self.events = 0
        self.audio_bytes = 0
        self.calls_watched = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=None) as http:
            await http.get(self.login)  # sets the session cookie
            cookie = "; ".join(f"{k}={v}" for k, v in http.cookies.items())
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._live_list(http))
                tg.create_task(self._follow(http, cookie))

    async def _live_list(self, http: httpx.AsyncClient) -> None:
        async with http.stream("GET", "/api/calls/stream") as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    self.events += 1

    async def _follow(self, http: httpx.AsyncClient, cookie: str) -> None:
        """One busy call at a time: its events and its audio, to its end."""
        while True:
            calls = (await http.get("/api/calls")).json()["calls"]
            busy = [c for c in calls if c["state"] != "ended"]
            if not busy:
                await asyncio.sleep(0.2)
                continue
            sid = max(busy, key=lambda c: c["duration_s"])["session_id"]
            self.calls_watched += 1
            with contextlib.suppress(httpx.HTTPError, websockets.WebSocketException):
                await asyncio.gather(self._events(http, sid), self._listen(sid, cookie))

    async def _events(self, http: httpx.AsyncClient, sid: str) -> None:
        async with http.stream("GET", f"/api/calls/{sid}/events") as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    self.events += 1

    async def _listen(self, sid: str, cookie: str) -> None:
        ws_url = f"ws{self.url[4:]}/api/calls/{sid}/listen"
        async with websockets.connect(ws_url, additional_headers={"Cookie": cookie},
                                      origin=self.url) as ws:  # type: ignore[arg-type]
            async for msg in ws:
                if isinstance(msg, bytes):
                    self.audio_bytes += len(msg)


async def one_round(cfg: BenchConfig, supervisor: Supervisor | None) -> list[float]:
    watching = asyncio.create_task(supervisor.run()) if supervisor else None
    try:
        report = await run_bench(cfg, progress=False)
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watching
    return [t["voice_to_voice_ms"] for t in report["turns"] if t.get("voice_to_voice_ms")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each condition")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="voxline-bench-console-"))
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump({
        "records": {"path": str(tmp / "calls.db")},
        "limits": {"max_concurrent_calls": 64},
        "console": {"port": 0},
    }))
    pooled: dict[str, list[float]] = {"closed": [], "open": []}
    watched = {"events": 0, "audio_bytes": 0, "calls_watched": 0}
    with server_process(config, tmp / "server.log") as server:
        cfg = BenchConfig(
            server=server.address, data=[DATA / "read_misc", DATA / "riva_examples"],
            files=LATENCY_SET, calls=args.calls, total_calls=2 * args.calls, turns=2,
            ramp_s=1.6, encoding=Encoding.MULAW, sample_rate=8000, seed=1)
        for n in range(args.rounds):
            for condition in ("closed", "open"):
                supervisor = Supervisor(server.console_url, server.console_login) \
                    if condition == "open" else None
                v2v = asyncio.run(one_round(cfg, supervisor))
                pooled[condition] += v2v
                p = percentiles(v2v)
                print(f"round {n + 1} console {condition:<6}: voice-to-voice p50 "
                      f"{p.get('p50', 0):.0f} p95 {p.get('p95', 0):.0f} ms (n={len(v2v)})"
                      + (f"; watched {supervisor.calls_watched} calls, {supervisor.events} "
                         f"events, {supervisor.audio_bytes // 1000} kB of audio"
                         if supervisor else ""), flush=True)
                if supervisor:
                    for k in watched:
                        watched[k] += getattr(supervisor, k)
    closed, opened = percentiles(pooled["closed"]), percentiles(pooled["open"])
    ratio = {k: round(opened[k] / closed[k], 3) for k in ("p50", "p95") if closed.get(k)}
    print(f"\n{args.calls} concurrent calls, {args.rounds} rounds each: console closed p95 "
          f"{closed['p95']:.0f} ms, open p95 {opened['p95']:.0f} ms: ratio {ratio['p95']:.3f} "
          f"(p50 ratio {ratio['p50']:.3f}); target: p95 ratio within 1.10")
    if not watched["audio_bytes"] or not watched["events"]:
        print("the supervisor received nothing: the comparison is void", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps({
            "calls": args.calls, "rounds": args.rounds,
            "closed": closed, "open": opened, "ratio_open_to_closed": ratio,
            "watched": watched, "turns": {k: len(v) for k, v in pooled.items()},
            "spread_ms": {k: float(np.std(v)) for k, v in pooled.items()},
        }, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
