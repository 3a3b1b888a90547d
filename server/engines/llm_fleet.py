"""Several OpenAI-compatible LLM servers (a vLLM fleet) behind one LLMEngine.

Each request goes to the least loaded replica that is up; the requests of one
conversation stay on one replica, whose prefix cache already holds their prompt; a
replica that fails before the first token is marked down for a cool-down and the request
goes to another. Balancing and fallback wrap the engines: OpenAICompatibleLLM knows
nothing of them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
import urllib.request
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from voxline.engines.base import ChatMessage, LLMChunk, LLMEngine, ToolSpec
from voxline.engines.openai_llm import LLMServerError, OpenAICompatibleLLM

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "retried", "error")
# vLLM's own gauges of its queue; other servers simply have no /metrics to read.
_QUEUE_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def replica_label(url: str) -> str:
    """The URL as a metric label: no user, password or query (they may hold a key)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _retryable(exc: Exception) -> bool:
    """Failures another replica may not share: refused or reset connections, timeouts,
    an overloaded (429) or broken (5xx) server. Other 4xx are the request's own fault."""
    if isinstance(exc, LLMServerError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, httpx.TransportError)


class Replica:
    """One server of the fleet and what this process knows of it."""

    def __init__(self, engine: OpenAICompatibleLLM) -> None:
        self.engine = engine
        self.label = replica_label(engine.base_url)
        self.in_flight = 0  # requests from this process now
        self.others = 0  # requests from elsewhere, from the server's /metrics (0: unknown)
        self.keys = 0  # affinity keys that point here
        self.down = False
        self.retry_at = 0.0  # time.monotonic() when a down replica gets another try
        self.counts: Counter[str] = Counter()  # requests by outcome

    @property
    def load(self) -> int:
        return self.in_flight + self.others

    def available(self, now: float) -> bool:
        return not self.down or now >= self.retry_at


# Process-wide figures for /metrics (see metrics.py): counts outlive a reloaded fleet.
_COUNTS: Counter[tuple[str, str]] = Counter()
_LIVE: weakref.WeakSet[LLMFleet] = weakref.WeakSet()
_STATS_LOCK = threading.Lock()


def replica_counts() -> dict[tuple[str, str], int]:
    """Requests by (replica, outcome) since the process started, over every fleet."""
    with _STATS_LOCK:
        return dict(_COUNTS)


def replica_states() -> dict[str, tuple[bool, int]]:
    """(up, requests in flight) of each replica of the fleets now loaded."""
    states: dict[str, tuple[bool, int]] = {}
    with _STATS_LOCK:
        fleets = list(_LIVE)
    for fleet in fleets:
        for r in fleet.replicas:
            up, busy = states.get(r.label, (False, 0))
            states[r.label] = (up or not r.down, busy + r.in_flight)
    return states


class LLMFleet(LLMEngine):
    def __init__(self, engines: Sequence[OpenAICompatibleLLM], max_tries: int = 3,
                 cooldown_s: float = 10.0, affinity_keys: int = 10_000,
                 poll_metrics_s: float = 2.0, poll_timeout_s: float = 0.5) -> None:
        """`max_tries`: replicas one request may try (each at most once); `cooldown_s`:
        how long a failed replica gets no requests; `affinity_keys`: conversations
        remembered (least recently used forgotten first); `poll_metrics_s`: how often
        each replica's /metrics is read for its queue (0: never)."""
        if len(engines) < 2:
            raise ValueError("an LLM fleet needs at least two replicas")
        self.replicas = [Replica(e) for e in engines]
        self.max_tries = max(1, min(max_tries, len(self.replicas)))
        self.cooldown_s = cooldown_s
        self.affinity_keys = affinity_keys
        self._affinity: OrderedDict[str, Replica] = OrderedDict()
        self._lock = threading.Lock()
        self._turn = itertools.count()  # rotates the first choice among equals
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if poll_metrics_s > 0:
            self._poller = threading.Thread(
                target=self._poll_loop, args=(poll_metrics_s, poll_timeout_s),
                name="voxline-llm-fleet-poll", daemon=True)
            self._poller.start()
        with _STATS_LOCK:
            _LIVE.add(self)

    def close(self) -> None:
        self._stop.set()
        with _STATS_LOCK:
            _LIVE.discard(self)
        if self._poller is not None:
            self._poller.join(timeout=5)
        for r in self.replicas:
            r.engine.close()

    def replica_for(self, affinity: str) -> Replica | None:
        """The replica a conversation is kept on, if it has one."""
        with self._lock:
            return self._affinity.get(affinity)

    def stream_chat(self, messages: list[ChatMessage], tools: list[ToolSpec] | None = None,
                    tool_choice: str = "auto", max_tokens: int = 128,
                    temperature: float = 0.0, *, affinity: str = "") -> Iterator[LLMChunk]:
        tried: list[Replica] = []
        while True:
            replica = self._acquire(affinity, tried)
            tried.append(replica)
            streamed = False
            outcome = "ok"
            try:
                with contextlib.closing(replica.engine.stream_chat(
                        messages, tools, tool_choice, max_tokens, temperature)) as stream:
                    for chunk in stream:
                        if chunk.text or chunk.tool_name:
                            streamed = True
                        yield chunk
            except Exception as exc:
                retry = _retryable(exc)
                if retry:
                    self._mark_down(replica, exc)
                # Once tokens have reached the caller a failure is NOT retried: part of
                # an answer may already be spoken, and a second answer would follow it.
                # The agent's fault handling says the profile's apology instead.
                retry = retry and not streamed and len(tried) < self.max_tries
                outcome = "retried" if retry else "error"
                if not retry:
                    raise
                log.warning("LLM replica %s failed before the first token (%s); "
                            "trying another", replica.label, exc)
            finally:
                # A consumer that stops early (barge-in, enough sentences) closes this
                # generator: that request still counts as served.
                self._release(replica, outcome)
            if outcome == "ok":
                return

    def _acquire(self, affinity: str, tried: list[Replica]) -> Replica:
        now = time.monotonic()
        with self._lock:
            free = [r for r in self.replicas if r not in tried]
            kept = self._affinity.get(affinity) if affinity else None
            if kept is not None and kept in free and kept.available(now):
                self._affinity.move_to_end(affinity)
                choice = kept
            else:
                # All down: the one due back first gets a try rather than failing the turn.
                up = [r for r in free if r.available(now)] or [min(free, key=lambda r:
                                                                   r.retry_at)]
                first = next(self._turn)
                n = len(self.replicas)
                choice = min(up, key=lambda r: (
                    r.load, r.keys, (self.replicas.index(r) - first) % n))
                if affinity:
                    self._bind(affinity, choice)
            choice.in_flight += 1
            return choice

    def _bind(self, key: str, replica: Replica) -> None:
        """Keep `key` on `replica` from now on; forget the least recently used keys past
        the bound (calls that ended, whose keys are never used again)."""
        old = self._affinity.pop(key, None)
        if old is not None:
            old.keys -= 1
        self._affinity[key] = replica
        replica.keys += 1
        while len(self._affinity) > self.affinity_keys:
            _, gone = self._affinity.popitem(last=False)
            gone.keys -= 1

    def _release(self, replica: Replica, outcome: str) -> None:
        with self._lock:
            replica.in_flight -= 1
            replica.counts[outcome] += 1
            if outcome == "ok" and replica.down:
                replica.down = False
                log.info("LLM replica %s is up again", replica.label)
        with _STATS_LOCK:
            _COUNTS[replica.label, outcome] += 1

    def _mark_down(self, replica: Replica, exc: Exception) -> None:
        with self._lock:
            if not replica.down:
                log.warning("LLM replica %s is down for %.0f s: %r", replica.label,
                            self.cooldown_s, exc)
            replica.down = True
            replica.retry_at = time.monotonic() + self.cooldown_s

    def _poll_loop(self, every_s: float, timeout_s: float) -> None:
        """Read each replica's queue from its /metrics, off the request path, so that
        requests from other processes count in its load."""
        while not self._stop.wait(every_s):
            for r in self.replicas:
                # vLLM serves /metrics without the API key: no credentials sent
                queued = _queue_length(r.label, timeout_s)
                with self._lock:
                    # The server's count includes this process's own requests.
                    r.others = max(0, queued - r.in_flight) if queued is not None else 0


def _queue_length(base_url: str, timeout_s: float) -> int | None:
    """Requests running and waiting on a vLLM server; None when it does not say. (urllib:
    httpx would log every poll at INFO.)"""
    try:
        with urllib.request.urlopen(f"{base_url}/metrics", timeout=timeout_s) as response:
            text = response.read(4 << 20).decode("utf-8", "replace")
        total, seen = 0.0, False
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in _QUEUE_METRICS:
                    total += sample.value
                    seen = True
        return int(total) if seen else None
    except (OSError, ValueError):  # URLError, HTTPError and timeouts are OSErrors
        return None


def openai_llm(base_url: str = "", base_urls: Sequence[str] = (),
               base_url_env: str | None = "VOXLINE_LLM_URL",
               base_urls_env: str | None = "VOXLINE_LLM_URLS", max_tries: int = 3,
               cooldown_s: float = 10.0, affinity_keys: int = 10_000,
               poll_metrics_s: float = 2.0, **options: Any) -> LLMEngine:
    """The `openai` engine of a manifest: one server, or a fleet of several. The
    environment replaces the manifest's URLs per deployment: `base_urls_env`
    (comma-separated) first, else `base_url_env` (one URL). Other options go to each
    OpenAICompatibleLLM (model, api_key_env, timeout_s...)."""
    urls = [u.strip() for u in os.environ.get(base_urls_env or "", "").split(",")]
    urls = [u for u in urls if u]
    if not urls and (one := os.environ.get(base_url_env or "", "").strip()):
        urls = [one]
    if not urls:
        if isinstance(base_urls, str):  # a YAML string rather than a list
            base_urls = base_urls.split(",")
        urls = [u.strip() for u in base_urls if u.strip()] or ([base_url] if base_url else [])
    urls = list(dict.fromkeys(u.rstrip("/") for u in urls))  # one replica per server
    if not urls:
        raise ValueError("openai LLM: set options.base_url or options.base_urls in the "
                         f"manifest, or {base_urls_env or base_url_env}")
    engines = [OpenAICompatibleLLM(u, base_url_env=None, **options) for u in urls]
    if len(engines) == 1:
        return engines[0]
    return LLMFleet(engines, max_tries, cooldown_s, affinity_keys, poll_metrics_s)
