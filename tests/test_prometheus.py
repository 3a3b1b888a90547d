"""The Grafana dashboard (deploy/grafana/voxline.json) and the alerting rules
(deploy/prometheus/rules.yaml) against the server's real metrics.

promtool (Debian's `prometheus` package, which scripts/test.sh installs) checks the rules
and runs their unit tests (tests/prometheus/rules_test.yaml) and parses every dashboard
expression; every metric and label the dashboard names is one the `telephony` server
exports; and a real Prometheus, scraping that server every second with the rules loaded,
sees a call placed with real recordings in the series the dashboard draws, and answers
every dashboard expression. A missing binary fails these tests, it skips none.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DATA, ROOT, free_port, metric, run
from voxline.audio.formats import Encoding
from voxline.client.gateway import CallOptions, load_recording, place_call

DASHBOARD = ROOT / "deploy" / "grafana" / "voxline.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
RULES_TEST = ROOT / "tests" / "prometheus" / "rules_test.yaml"
ALERTS = {"VoxlineVoiceToVoiceSlow", "VoxlineFallbackRateHigh", "VoxlineCallsRejected",
          "VoxlineLLMReplicaDown", "VoxlineDrainingTooLong", "VoxlineTargetDown"}
# What Grafana puts in place of the dashboard's variables, for a Prometheus whose scrape
# job is `voxline` (windows wide enough to hold the test's call).
VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$job": "voxline", "$instance": ".*"}
# Labels Prometheus adds to every scraped series, and the series it makes itself.
TARGET_LABELS = {"job", "instance"}
SYNTHETIC = {"up"}
# A spoken coffee order the router takes with `order_drink`, then the goodbye that ends
# the call (two of the demo's recordings, 8 kHz μ-law as a phone line sends them).
ORDER = DATA / "picovoice_s2i" / "505a930b-d364-4010-a71b-7dd270e9e576.wav"
THANKS = DATA / "asterisk_8k" / "wav" / "privacy-thankyou.wav"

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan"}


# ---------------------------------------------------------------- PromQL, read plainly

def selectors(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metrics an expression selects, each with the labels its matchers name, and
    the labels its by/without/on/ignoring clauses name."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals hold no names
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery durations
    grouping: set[str] = set()
    clause = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"
    for m in re.finditer(clause, s):
        grouping |= {g.strip() for g in m.group(1).split(",") if g.strip()}
    s = re.sub(clause, " ", s)
    matched: dict[str, set[str]] = {}
    for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", s):
        matched.setdefault(m.group(1), set()).update(
            re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))
    s = re.sub(r"\{[^}]*\}", " ", s)
    names: dict[str, set[str]] = {}
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)", s):
        word = m.group(1)
        if s[m.end():].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function, an aggregation or an operator
        names[word] = matched.get(word, set())
    return names, grouping


def test_the_promql_reader_finds_metrics_not_functions_or_labels():
    names, grouping = selectors(
        'histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{job=~"$job", x="y{z}"}'
        '[$__rate_interval]))) / on (instance) group_left b_total > bool 1e3 or up offset 5m')
    assert names == {"a_bucket": {"job", "x"}, "b_total": set(), "up": set()}
    assert grouping == {"le", "stage", "instance"}


def substituted(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"a dashboard variable the test does not know: {expr}"
    return expr


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel_exprs(board: dict) -> list[tuple[str, str]]:
    """(panel title, expression) for every query of every panel."""
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def variable_selectors(board: dict) -> list[str]:
    """The series selectors of the dashboard's label_values() variables."""
    found = []
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["definition"])
            assert m, v["definition"]
            found.append(m.group(1))
    return found


# ---------------------------------------------------------------- the server's metrics

def exposition(url: str) -> tuple[set[str], dict[str, set[str]]]:
    """Names a query can select in a server's /metrics (those of families with no
    sample yet too), and the label names each name's samples carry."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("", "_sum", "_count"), "gauge": ("",), "unknown": ("",)}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        for s in family.samples:
            names.add(s.name)
            labels.setdefault(s.name, set()).update(s.labels)
    return names, labels


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/test.sh, which installs Debian's "
                    "prometheus package (prometheus and promtool), or `apt-get install "
                    "prometheus`")
    return path


# ---------------------------------------------------------------- promtool

@pytest.mark.external
def test_the_rules_pass_promtool_and_their_unit_tests():
    promtool = binary("promtool")
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in check.stdout, check.stdout
    # Each alert fires on synthetic series once its condition has held for its `for`,
    # not before, not for the healthy series beside it, with its annotations filled in.
    unit = subprocess.run([promtool, "test", "rules", str(RULES_TEST)], capture_output=True,
                          text=True, timeout=60, cwd=RULES_TEST.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULES_TEST.read_text()))
    assert tested == ALERTS


@pytest.mark.external
def test_every_dashboard_expression_parses(tmp_path):
    """promtool parses each expression (as a recording rule) with Grafana's variables
    put in; the dashboard is importable JSON with one templated Prometheus data source."""
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], p["title"]
    exprs = panel_exprs(board)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": substituted(e)}
        for i, (_, e) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([binary("promtool"), "check", "rules", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout, check.stdout


# ---------------------------------------------------------------- against the server

def test_the_dashboard_names_only_metrics_and_labels_the_server_exports(telephony):
    """Every metric a panel or variable selects is in the server's /metrics; the labels
    it matches or groups by are ones the metric's samples carry (checked for every
    metric that has samples: a labelled family nobody has used yet has none)."""
    exported, labels = exposition(telephony.metrics_url)
    board = dashboard()
    queries = panel_exprs(board) + [("variable", s) for s in variable_selectors(board)]
    assert len(queries) > 20
    problems = []
    for title, expr in queries:
        names, grouping = selectors(expr)
        assert names, (title, expr)
        for name, matched in names.items():
            if name in SYNTHETIC:
                continue
            if name not in exported:
                problems.append(f"{title}: {name} is not exported")
            elif name in labels and not matched <= labels[name] | TARGET_LABELS:
                problems.append(f"{title}: {name} has no label "
                                f"{sorted(matched - labels[name] - TARGET_LABELS)}")
        carried = set().union(*(labels.get(n, set()) for n in names)) | TARGET_LABELS
        if all(n in labels or n in SYNTHETIC for n in names) and not grouping <= carried:
            problems.append(f"{title}: grouped by {sorted(grouping - carried)}, "
                            f"which {sorted(names)} do not carry")
    assert problems == []
    # The rules' metrics too.
    for rule in (r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]):
        for name in selectors(rule["expr"])[0]:
            assert name in exported or name in SYNTHETIC, (rule["alert"], name)


@pytest.fixture
def prometheus(telephony, tmp_path) -> Iterator[str]:
    """A real Prometheus scraping the telephony server every second, with the alerting
    rules loaded; its base URL once the target is up."""
    binary_path = binary("prometheus")
    target = urlsplit(telephony.metrics_url)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "voxline", "metrics_path": target.path,
                            "static_configs": [{"targets": [target.netloc]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [binary_path, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        def target_up() -> bool:
            reply = httpx.get(f"{url}/api/v1/targets", timeout=5)
            if reply.status_code != 200:  # 503 with a text body until its storage is open
                return False
            return any(t["health"] == "up" for t in reply.json()["data"]["activeTargets"])

        wait_for(target_up, 60, f"Prometheus scraping {telephony.metrics_url}", proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for(ready, timeout_s: float, what: str, proc: subprocess.Popen | None = None,
             log: Path | None = None):
    """Poll `ready` until it returns something true; that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"prometheus exited with {proc.returncode}: "
                        f"{log.read_text()[-3000:] if log else ''}")
        try:
            if value := ready():
                return value
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}"
                        + (f"; prometheus log: {log.read_text()[-3000:]}" if log else ""))
        time.sleep(0.5)


def query(base: str, expr: str) -> dict:
    reply = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert reply["status"] == "success", (expr, reply)
    return reply["data"]


def scalar(base: str, expr: str) -> float:
    result = query(base, expr)["result"]
    return float(result[0]["value"][1]) if result else math.nan


@pytest.mark.external
def test_a_real_prometheus_sees_a_call_in_every_dashboard_series(telephony, prometheus):
    url = telephony.metrics_url

    def total(name: str, **labels: str) -> float:
        text = httpx.get(url, timeout=10).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == name and labels.items() <= s.labels.items())

    started = total("voxline_calls_started_total")
    turns = total("voxline_voice_to_voice_seconds_count")
    ordered = metric(url, "voxline_tool_calls_total", tool="order_drink", outcome="ok")

    opts = CallOptions(encoding=Encoding.MULAW, rate=8000, profile="coffee_shop",
                       call_id="prometheus-test", hangup_at_end=False, stay_on_line_s=15)
    result = run(place_call(telephony.address, [load_recording(p, 8000) for p in (ORDER, THANKS)],
                            opts))
    assert result.error is None, result.error
    assert result.ended in ("AGENT_HANGUP", "CALLER_HANGUP"), result.ended
    tools = [(e["name"], e["outcome"]) for e in result.of_type("tool_call")]
    assert ("order_drink", "ok") in tools, tools
    completed = total("voxline_calls_completed_total", reason=result.ended)
    assert completed >= 1

    # Prometheus has the call once its next scrapes land.
    job = '{job="voxline"}'
    wait_for(lambda: scalar(prometheus, f"sum(voxline_calls_started_total{job})")
             >= started + 1, 30, "the call in voxline_calls_started_total")
    wait_for(lambda: scalar(prometheus, f"sum(voxline_voice_to_voice_seconds_count{job})")
             >= turns + 1, 30, "the call's turns in voxline_voice_to_voice_seconds")
    wait_for(lambda: scalar(prometheus, 'sum(voxline_tool_calls_total{job="voxline", '
                            'tool="order_drink", outcome="ok"})') >= ordered + 1,
             30, "the order in voxline_tool_calls_total")
    wait_for(lambda: scalar(prometheus, 'sum(voxline_calls_completed_total{job="voxline", '
                            f'reason="{result.ended}"}})') >= completed,
             30, "the call's end in voxline_calls_completed_total")

    # Every dashboard expression answers; one over metrics that all have samples answers
    # with series; the latency quantiles are numbers (the call's turns are in the window).
    # Retried until it holds: a series the call created needs two scrapes for a rate().
    exprs = panel_exprs(dashboard())

    def unanswered() -> list[str]:
        _, labels = exposition(url)
        problems = []
        for title, expr in exprs:
            result = query(prometheus, substituted(expr))["result"]
            if all(n in labels or n in SYNTHETIC for n in selectors(expr)[0]) and not result:
                problems.append(f"{title}: no series for {expr}")
            if "histogram_quantile" in expr and ("voxline_voice_to_voice" in expr
                                                 or "voxline_stage_seconds" in expr):
                values = {r["metric"].get("stage", ""): float(r["value"][1]) for r in result}
                value = values.get("end_of_turn" if "stage" in expr else "", math.nan)
                if not (math.isfinite(value) and value > 0):
                    problems.append(f"{title}: {values} for {expr}")
        return problems

    deadline = time.monotonic() + 30
    while (problems := unanswered()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert problems == []

    # The alerting rules evaluate on the real series without error.
    def rules_evaluated() -> list[dict] | None:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=5).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = wait_for(rules_evaluated, 30, "the alerting rules to evaluate")
    assert {r["name"] for r in rules} == ALERTS
    assert not [r for r in rules if r.get("lastError")], rules  # (absent when none)
