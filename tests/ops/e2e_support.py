"""Helpers for the end-to-end alert test (tests/ops/test_alerting_e2e.py): a webhook receiver,
Prometheus and Alertmanager as child processes with configs derived from the committed ones, and
a two-phase simulated city (thieves first, then the same grid clean) with its expected states.

Nothing here fakes a component: the configs are the committed files with only addresses and
timings changed, so the test exercises the committed expressions, thresholds and routing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from ruamel.yaml import YAML

from models.lineloss import LossState, judge
from simulator.city import City, CitySpec, build, messages

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"

# ---- webhook receiver ----------------------------------------------------------------------


@dataclass
class Delivery:
    path: str
    body: dict[str, Any]
    received: float  # time.monotonic()


class WebhookReceiver:
    """HTTP server in a thread; records every POSTed JSON body (Alertmanager webhook format)."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"_unparsable": raw.decode(errors="replace")}
                with receiver._lock:
                    receiver.deliveries.append(Delivery(self.path, body, time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="webhook", daemon=True)

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def summary(self) -> str:
        lines = []
        for d in self.snapshot():
            alerts = [f"{a.get('labels', {}).get('alertname')}={a.get('status')}"
                      for a in d.body.get("alerts", [])]
            lines.append(f"  {d.path} status={d.body.get('status')} alerts={alerts}")
        return "\n".join(lines) or "  (nothing received)"


# ---- child processes -----------------------------------------------------------------------


class Service:
    """A binary in its own process group, output to a log file; stopped by its own pid."""

    def __init__(
        self, name: str, args: list[str], log_path: Path, ready_url: str,
        env: dict[str, str] | None = None, cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.ready_url = ready_url
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=self.env, cwd=self.cwd,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float, diagnostics: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"{self.name} exited before it was ready:\n{diagnostics()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready at {self.ready_url} after {timeout}s:\n{diagnostics()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def http_json(url: str, timeout: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def prom_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return list(http_json(url)["data"]["result"])


# ---- configs derived from the committed files ------------------------------------------------


def _rt_yaml() -> YAML:
    # Safe load and dump: the generated files lose the comments, which is all they lose.
    # (ruamel's round-trip mode would keep them, but folds a comment that follows a block
    # scalar into the scalar, i.e. into a PromQL expression: the guard in shorten_rules saw it.)
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.width = 4096
    return yaml


def _safe_load(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


def _dump(yaml: YAML, doc: Any) -> str:
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
            "y": 31_536_000_000}


def parse_duration_ms(text: str) -> int:
    """A Prometheus duration ("5m", "1h30m", "250ms") in milliseconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_MS[u] for n, u in parts)


def format_duration_ms(ms: int) -> str:
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def shorten_rules(text: str, factor: float) -> tuple[str, dict[str, tuple[str, str]]]:
    """The rules file with every `for:` multiplied by ``factor`` (minutes become seconds with
    1/60), nothing else changed; returns the new text and {alert: (old for, new for)}."""
    yaml = _rt_yaml()
    doc = yaml.load(text)
    changed: dict[str, tuple[str, str]] = {}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                old = str(rule["for"])
                new = format_duration_ms(max(1000, round(parse_duration_ms(old) * factor)))
                rule["for"] = new
                changed[str(rule.get("alert"))] = (old, new)
    out = _dump(yaml, doc)
    # Guard: apart from `for`, the generated rules are the committed ones, value for value.
    original, generated = _safe_load(text), _safe_load(out)
    for group in generated["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    for group in original["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    assert generated == original, "rewriting the rules changed more than their `for` durations"
    return out, changed


def prometheus_config(
    text: str, *, targets: dict[str, str], alertmanager_target: str, interval: str = "1s"
) -> tuple[str, list[str]]:
    """prometheus.yml with 1 s scrape and evaluation, ``targets`` ({job name: host:port}, one
    for every job of the committed file) and the test's Alertmanager; returns the text and its
    rule_files patterns (kept as they are, relative to the config file, so the rules are looked
    up beside the generated config)."""
    yaml = _rt_yaml()
    doc = yaml.load(text)
    doc["global"]["scrape_interval"] = interval
    doc["global"]["evaluation_interval"] = interval
    managers = doc["alerting"]["alertmanagers"]
    assert len(managers) == 1 and len(managers[0]["static_configs"]) == 1, managers
    managers[0]["static_configs"][0]["targets"] = [alertmanager_target]
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == set(targets), f"the committed jobs are {sorted(jobs)}"
    for name, job in jobs.items():
        assert len(job["static_configs"]) == 1, f"expected one static config in job {name}"
        job["static_configs"][0]["targets"] = [targets[name]]
    return _dump(yaml, doc), [str(p) for p in doc.get("rule_files", [])]


def alertmanager_config(
    text: str, *, webhook_base: str, group_wait: str = "1s", group_interval: str = "2s",
    repeat_interval: str = "20s",
) -> str:
    """alertmanager.yml with every webhook pointed at ``webhook_base`` (path kept) and short
    grouping timers on the root route and on every sub-route that sets its own."""
    yaml = _rt_yaml()
    doc = yaml.load(text)
    timers = {"group_wait": group_wait, "group_interval": group_interval, "repeat_interval": repeat_interval}

    def walk(route: Any, root: bool) -> None:
        for key, value in timers.items():
            if root or key in route:
                route[key] = value
        for child in route.get("routes", []) or []:
            walk(child, False)

    walk(doc["route"], True)
    base = urllib.parse.urlsplit(webhook_base)
    hooks = 0
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []) or []:
            url = urllib.parse.urlsplit(str(hook["url"]))
            hook["url"] = urllib.parse.urlunsplit((base.scheme, base.netloc, url.path, url.query, ""))
            hooks += 1
    assert hooks, "alertmanager.yml has no webhook receiver"
    return _dump(yaml, doc)


# ---- the city: thieves first, then the same grid clean ---------------------------------------


_JUDGED = (LossState.QUALIFIED, LossState.HIGH_LOSS, LossState.NEGATIVE_LOSS)


@dataclass
class TwoPhaseCity:
    city: City  # registers: theft up to ``split`` (interval index), clean consumption after it
    split: int
    states: dict[int, dict[str, LossState]] = field(default_factory=dict)  # window start -> area -> state

    @property
    def split_ts(self) -> int:
        return self.city.times[self.split]

    def window_starts(self, phase: int) -> list[int]:
        """Judgeable windows of a phase (the first window only has start registers)."""
        starts = sorted(self.states)
        return [w for w in starts if (w < self.split_ts) == (phase == 1)]

    def pass_rate(self, window_start: int) -> tuple[int, int]:
        states = self.states[window_start].values()
        judged = [s for s in states if s in _JUDGED]
        return sum(s is LossState.QUALIFIED for s in judged), len(judged)

    def records(self, phase: int) -> Iterator[tuple[str, bytes, bytes]]:
        """(kind, key, value) of one phase: phase 1 up to and including the split interval end."""
        for m in messages(self.city):
            if (m.ts <= self.split_ts) == (phase == 1):
                yield m.kind, m.key.encode(), orjson.dumps(m.value)

    def areas_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["area_id", "area_class", "loss_lower", "loss_upper"])
        for area_id in self.city.area_ids:
            w.writerow([area_id, self.city.topology.area_class(area_id), "", ""])
        return buf.getvalue()


def two_phase_city(spec: CitySpec, split: int) -> TwoPhaseCity:
    """The city of ``spec`` (with its theft areas) up to interval end ``split``; after it, the
    same customers' registers continue with the consumption of the same city without thieves
    (same seed, so same meters, loads and supply), as if the thieves had been caught."""
    theft = build(spec)
    clean = build(replace(spec, theft_areas=()))
    registers: dict[str, np.ndarray] = {}
    for meter, reg in theft.registers.items():
        after = clean.registers[meter]
        joined = reg.copy()
        joined[split + 1:] = np.round(reg[split] + (after[split + 1:] - after[split]), 2)
        registers[meter] = joined
    for area_id in theft.area_ids:  # the supply side does not depend on who steals
        s = theft.supply[area_id]
        assert np.array_equal(theft.registers[s], clean.registers[s])
    city = City(spec, theft.topology, theft.area_ids, theft.customers, theft.supply, registers, set())
    out = TwoPhaseCity(city, split)
    out.states = expected_states(city)
    return out


def expected_states(city: City) -> dict[int, dict[str, LossState]]:
    """Each judgeable window's state per area, recomputed from the registers (as the worker's
    integration test does): energy = register delta x multiplier, judged with the area's bounds."""
    times, interval = city.times, city.spec.interval_s
    at = datetime.fromtimestamp(times[0], UTC)
    topo = city.topology
    out: dict[int, dict[str, LossState]] = {}
    for k in range(1, len(times)):
        states = {}
        for area_id in city.area_ids:
            reg = city.registers
            sales = sum(
                (reg[m][k] - reg[m][k - 1]) * _multiplier(city, m, at) for m in city.customers[area_id]
            )
            s = city.supply[area_id]
            supply = (reg[s][k] - reg[s][k - 1]) * _multiplier(city, s, at)
            state, _ = judge(
                supply_kwh=round(float(supply), 6), sales_kwh=round(float(sales), 6),
                customers_expected=len(city.customers[area_id]),
                customers_reported=len(city.customers[area_id]),
                supplies_expected=1, supplies_reported=1,
                bounds=topo.bounds_for(area_id), min_completeness=0.98,
            )
            states[area_id] = state
        out[times[k] - interval] = states
    return out


def _multiplier(city: City, meter_id: str, at: datetime) -> float:
    rec = city.topology.meter_at(meter_id, at)
    assert rec is not None
    return float(rec.multiplier)


def go_float(value: float) -> str:
    """How Prometheus templates print a float ({{ $value }}): shortest round-trip digits."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def humanize_percentage(value: float) -> str:
    """Prometheus' humanizePercentage: %.4g of value x 100, then a percent sign."""
    return f"{value * 100:.4g}%"
