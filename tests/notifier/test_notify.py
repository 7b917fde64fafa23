"""``gridwatch notify`` on the real broker, against a real HTTP receiver on loopback: signed bodies,
retries that deliver every alert once and in order, dead letters with their reason, the rate
limit, restarts that resume after the last committed alert, and a secret that never reaches a log.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from local.kafka import LocalKafka
from local.run import free_port
from notifier.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    NotifyConfigError,
    decode_alert,
    load_secret,
    serve,
    verify,
)
from streams.contracts import InvalidRecord
from streams.kafkaio import create_topics, end_offsets, produce, read_topic
from streams.metrics import NotifyMetrics
from streams.settings import REPO, Settings
from streams.topics import alert_topic_specs

SECRET = "s3cret-" + uuid.uuid4().hex  # unique, so finding it in a log cannot be a coincidence
CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "contracts" / "alert.v1.schema.json"


def alert(i: int, **over: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "id": f"alert-{i:03d}",
        "type": "meter_zero_consumption",
        "severity": "warning",
        "entity_kind": "meter",
        "entity_id": f"m{i}",
        "window_start": "2026-01-01T00:00:00Z",
        "window_end": "2026-01-02T00:00:00Z",
        "score": 4.5,
        "evidence": {"expected_kwh": 12.0, "observed_kwh": 0.0, "share_of_area_loss": 0.4},
        "event": "opened",
        "at": "2026-01-02T00:05:00Z",
        "v": 1,
    }
    msg.update(over)
    return msg


def enc(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# ---- a real HTTP receiver ---------------------------------------------------------------------


@dataclass
class Hit:
    at: float  # time.monotonic() when the request arrived
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """HTTP server on a free loopback port; ``respond(n, body)`` picks the status of request n."""

    respond: Callable[[int, bytes], tuple[int, dict[str, str]]] = lambda n, body: (200, {})
    hits: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status, extra = receiver.respond(len(receiver.hits), body)
                    receiver.hits.append(Hit(time.monotonic(), status, dict(self.headers), body))
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/duty/alert"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if 200 <= h.status < 300]

    def all(self) -> list[Hit]:
        with self._lock:
            return list(self.hits)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


# ---- notify in a thread -----------------------------------------------------------------------


class Notify:
    """``serve`` on its own event loop in a thread; ``stop()`` is what SIGTERM does."""

    def __init__(self, settings: Settings, secret: bytes) -> None:
        self.metrics = NotifyMetrics(CollectorRegistry())
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self._loop.run_until_complete(
                    serve(settings, secret=secret, metrics=self.metrics, stop=self._stop)
                )
            except BaseException as exc:  # handed to the test thread by stop()
                self.error = exc
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "notify did not stop"
        if self.error is not None:
            raise self.error

    def value(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def __enter__(self) -> Notify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settings_for(broker: LocalKafka, url: str, **over: Any) -> Settings:
    """Fresh topics and group per test; fast retries; no rate limit unless asked."""
    run = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "bootstrap": broker.bootstrap,
        "partitions": 1,
        "topic_alerts": f"notify-{run}-alerts",
        "topic_alerts_deadletter": f"notify-{run}-alerts-dl",
        "notify_group_id": f"notify-{run}",
        "duty_webhook_url": url,
        "webhook_secret": SecretStr(SECRET),
        "notify_rate_per_s": 1000.0,
        "notify_burst": 1000,
        "notify_backoff_initial_s": 0.05,
        "notify_backoff_max_s": 0.2,
        "notify_max_attempts": 8,
        "notify_max_elapsed_s": 20.0,
        "notify_timeout_s": 5.0,
    }
    values.update(over)
    s = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    create_topics(s.bootstrap, alert_topic_specs(s))
    return s


def publish(s: Settings, values: list[bytes | None]) -> None:
    produce(s.bootstrap, [(s.topic_alerts, b"k", v) for v in values])


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def dead_letters(s: Settings, n: int) -> list[dict[str, Any]]:
    wait_for(
        lambda: sum(end_offsets(s.bootstrap, s.topic_alerts_deadletter).values()) >= n, what="dead letters"
    )
    return [
        json.loads(r.value or b"") for r in read_topic(s.bootstrap, s.topic_alerts_deadletter, idle_s=0.5)
    ]


def committed(s: Settings) -> int:
    """The notify group's committed offset on the (one-partition) alerts topic; 0 if none."""
    consumer = KafkaConsumer(
        bootstrap_servers=s.bootstrap, group_id=s.notify_group_id, enable_auto_commit=False
    )
    try:
        return consumer.committed(TopicPartition(s.topic_alerts, 0)) or 0
    finally:
        consumer.close()


# ---- contract and secret (no broker) -----------------------------------------------------------


def test_alert_contract_is_strict_except_inside_evidence() -> None:
    schema = json.loads(CONTRACT.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    extras = alert(1, evidence={"expected_kwh": 3.0, "neighbours": ["m2", "m3"]}, severity="page")
    for ok in (alert(1), extras, alert(2, entity_kind="area", type="area_high_loss", event="resolved")):
        decode_alert(enc(ok))
        validator.validate(ok)
    bad = [
        alert(1, colour="red"),  # unknown top-level field
        alert(1, severity="critical"),
        alert(1, event="closed"),
        alert(1, window_end="2026-01-02T00:00:00"),  # no offset
        {k: v for k, v in alert(1).items() if k != "evidence"},
        alert(1, evidence={"expected_kwh": "lots"}),
    ]
    for msg in bad:
        with pytest.raises(InvalidRecord) as info:
            decode_alert(enc(msg))
        assert info.value.reason == "schema", msg
    with pytest.raises(InvalidRecord, match="window_end"):
        decode_alert(enc(alert(1, window_end="2025-12-31T00:00:00Z")))


def test_every_record_the_alert_book_writes_is_deliverable() -> None:
    """The worker's opened records span one instant (start == end): notify must take them, not
    dead-letter every page it was meant to deliver."""
    from models.alerts import AlertBook, Observed
    from models.meter_anomaly import MeterEvent

    book = AlertBook()
    opened = book.observe([Observed("meter", "M1", MeterEvent(7, "zero", 4.0, True, {"run": 4.0}))], 900)
    resolved = book.observe([Observed("meter", "M1", MeterEvent(7, "zero", 0.0, False, {}))], 2700)
    for rec in opened + resolved:
        alert = decode_alert(json.dumps(rec).encode())
        assert alert.event == rec["event"] and alert.window_end >= alert.window_start


def test_secret_comes_from_env_or_file_and_never_shows(tmp_path: Path) -> None:
    path = tmp_path / "webhook.secret"
    path.write_text(SECRET + "\n")
    base = {"_env_file": None, "webhook_secret": None, "webhook_secret_file": None}
    from_file = Settings(**{**base, "webhook_secret_file": path})  # type: ignore[arg-type]
    from_env = Settings(**{**base, "webhook_secret": SecretStr(SECRET)})  # type: ignore[arg-type]
    assert load_secret(from_file) == load_secret(from_env) == SECRET.encode()
    assert SECRET not in repr(from_env) and SECRET not in str(from_env.model_dump())
    both = Settings(**{**base, "webhook_secret": SecretStr(SECRET), "webhook_secret_file": path})  # type: ignore[arg-type]
    short = Settings(**{**base, "webhook_secret": SecretStr("tiny-key")})  # type: ignore[arg-type]
    for bad in (Settings(**base), both, short):  # type: ignore[arg-type]
        with pytest.raises(NotifyConfigError) as info:
            load_secret(bad)
        assert SECRET not in str(info.value) and "tiny-key" not in str(info.value)


# ---- on the broker -------------------------------------------------------------------------------


def test_retried_until_delivered_once_each_in_order_and_signed(
    kafka_broker: LocalKafka, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failing = {0: (503, {}), 1: (503, {}), 2: (429, {"Retry-After": "1"}), 5: (500, {})}
    receiver.respond = lambda n, body: failing.get(n, (200, {}))
    s = settings_for(kafka_broker, receiver.url)
    bodies = [enc(alert(i)) for i in range(10)]
    publish(s, bodies)
    with Notify(s, SECRET.encode()) as notify:
        wait_for(lambda: len(receiver.accepted()) >= 10, what="10 deliveries")
        time.sleep(0.5)  # nothing more may arrive
    assert [h.body for h in receiver.accepted()] == bodies
    assert len(receiver.all()) == 14
    hit = receiver.all()[2]
    assert hit.body == bodies[0]
    assert receiver.all()[3].at - hit.at >= 0.9, "Retry-After: 1 was not respected"
    assert notify.value("gridwatch_notify_delivered_total", severity="warning") == 10
    assert notify.value("gridwatch_notify_retries_total", reason="http_5xx") == 3
    assert notify.value("gridwatch_notify_retries_total", reason="http_429") == 1
    assert notify.value("gridwatch_notify_delivery_seconds_count") == 10
    assert committed(s) == 10
    # Every request is signed over its exact body and timestamp; a wrong secret does not verify.
    for h in receiver.all():
        assert h.headers["Content-Type"] == "application/json"
        args = (h.body, h.headers[TIMESTAMP_HEADER], h.headers[SIGNATURE_HEADER])
        assert verify(SECRET.encode(), *args, now=time.time())
        assert not verify(b"not-the-secret-at-all", *args, now=time.time())
        assert not verify(SECRET.encode(), h.body + b" ", *args[1:], now=time.time())
    assert "alert alert-009 (meter_zero_consumption meter m9, opened) delivered" in caplog.text
    assert "alert alert-000: HTTP 429; retry 3 in 1.00s" in caplog.text
    assert SECRET not in caplog.text


def test_refused_and_undeliverable_alerts_are_dead_lettered_and_the_loop_goes_on(
    kafka_broker: LocalKafka, receiver: Receiver
) -> None:
    def respond(n: int, body: bytes) -> tuple[int, dict[str, str]]:
        kind = json.loads(body)["id"].split("-")[0]
        return {"bad": (400, {}), "down": (503, {})}.get(kind, (200, {}))

    receiver.respond = respond
    s = settings_for(kafka_broker, receiver.url, notify_max_attempts=3)
    values = [
        enc(alert(1, id="bad-1")),
        enc(alert(2, id="down-2")),
        enc(alert(3, id="good-3")),
        b"{not json",
        enc(alert(4, id="odd-4", colour="red")),
        None,  # a tombstone is not an alert either
        enc(alert(5, id="good-5", evidence={"observed_kwh": 1.0, "neighbours": ["m1"]})),
    ]
    publish(s, values)
    with Notify(s, SECRET.encode()) as notify:
        letters = dead_letters(s, 5)
        wait_for(lambda: committed(s) == len(values), what="every record committed")
    assert [json.loads(h.body)["id"] for h in receiver.accepted()] == ["good-3", "good-5"]
    assert receiver.accepted()[1].body == values[6]  # extras inside evidence reach the webhook
    by_offset = {d["source"]["offset"]: d for d in letters}
    assert {o: d["reason"] for o, d in by_offset.items()} == {
        0: "rejected",
        1: "retries_exhausted",
        3: "json",
        4: "schema",
        5: "json",
    }
    assert "HTTP 400" in by_offset[0]["detail"]
    assert "3 attempt(s)" in by_offset[1]["detail"] and "HTTP 503" in by_offset[1]["detail"]
    assert "colour" in by_offset[4]["detail"]
    for off, d in by_offset.items():
        assert base64.b64decode(d["value_b64"]) == (values[off] or b"")
        assert d["source"]["topic"] == s.topic_alerts and base64.b64decode(d["key_b64"]) == b"k"
    assert notify.value("gridwatch_notify_dead_lettered_total", reason="json") == 2
    assert notify.value("gridwatch_notify_dead_lettered_total", reason="rejected") == 1
    assert notify.value("gridwatch_notify_retries_total", reason="http_5xx") == 2


def test_unreachable_webhook_is_retried_then_dead_lettered(kafka_broker: LocalKafka) -> None:
    closed = Receiver()
    closed.stop()  # a loopback port nobody listens on any more
    s = settings_for(kafka_broker, closed.url, notify_max_attempts=2)
    publish(s, [enc(alert(1))])
    with Notify(s, SECRET.encode()) as notify:
        (letter,) = dead_letters(s, 1)
    assert letter["reason"] == "retries_exhausted" and "2 attempt(s)" in letter["detail"]
    assert notify.value("gridwatch_notify_retries_total", reason="connection") == 1


def test_rate_limit_paces_an_alert_storm(kafka_broker: LocalKafka, receiver: Receiver) -> None:
    s = settings_for(kafka_broker, receiver.url, notify_rate_per_s=5.0, notify_burst=5)
    publish(s, [enc(alert(i)) for i in range(20)])
    with Notify(s, SECRET.encode()) as notify:
        wait_for(lambda: len(receiver.accepted()) >= 20, timeout=30, what="20 deliveries")
    times = [h.at for h in receiver.accepted()]
    # 5 at once, then 15 more at 5/s: 3 s from first to last (slack for scheduling).
    assert times[-1] - times[0] >= 2.7
    assert times[4] - times[0] < 1.0, "the burst went out at once"
    assert notify.value("gridwatch_notify_rate_limited_total") >= 14


def test_restart_resumes_after_the_last_committed_alert(kafka_broker: LocalKafka, receiver: Receiver) -> None:
    s = settings_for(kafka_broker, receiver.url)
    first = [enc(alert(i)) for i in range(5)]
    publish(s, first)
    with Notify(s, SECRET.encode()):
        wait_for(lambda: len(receiver.accepted()) >= 5, what="first 5 deliveries")
        wait_for(lambda: committed(s) == 5, what="5 commits")
    then = [enc(alert(i)) for i in range(5, 8)]
    publish(s, then)
    with Notify(s, SECRET.encode()) as notify:
        wait_for(lambda: len(receiver.accepted()) >= 8, what="3 more deliveries")
        time.sleep(1.0)  # a redelivery of the first five would arrive now
    assert [h.body for h in receiver.accepted()] == first + then
    assert notify.value("gridwatch_notify_delivered_total", severity="warning") == 3


def test_stopping_mid_retry_neither_commits_nor_dead_letters(
    kafka_broker: LocalKafka, receiver: Receiver
) -> None:
    up = threading.Event()
    receiver.respond = lambda n, body: (200, {}) if up.is_set() else (503, {})
    s = settings_for(kafka_broker, receiver.url, notify_backoff_initial_s=0.2)
    publish(s, [enc(alert(1))])
    with Notify(s, SECRET.encode()):
        wait_for(lambda: len(receiver.all()) >= 2, what="a retry")
    assert committed(s) == 0
    up.set()
    with Notify(s, SECRET.encode()):
        wait_for(lambda: len(receiver.accepted()) == 1, what="delivery after the restart")
        wait_for(lambda: committed(s) == 1, what="the commit")
    assert sum(end_offsets(s.bootstrap, s.topic_alerts_deadletter).values()) == 0


def test_run_notify_process_from_env_and_secret_file(
    kafka_broker: LocalKafka, receiver: Receiver, tmp_path: Path
) -> None:
    """The entry point the CLI calls: settings from GRIDWATCH_* only, metrics served, SIGTERM stops it."""
    s = settings_for(kafka_broker, receiver.url)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")},
        "PYTHONPATH": str(REPO),
        "GRIDWATCH_BOOTSTRAP": s.bootstrap,
        "GRIDWATCH_PARTITIONS": "1",
        "GRIDWATCH_TOPIC_ALERTS": s.topic_alerts,
        "GRIDWATCH_TOPIC_ALERTS_DEADLETTER": s.topic_alerts_deadletter,
        "GRIDWATCH_NOTIFY_GROUP_ID": s.notify_group_id,
        "GRIDWATCH_DUTY_WEBHOOK_URL": receiver.url,
        "GRIDWATCH_WEBHOOK_SECRET_FILE": str(secret_file),
        "GRIDWATCH_NOTIFY_METRICS_PORT": str(port),
    }
    publish(s, [enc(alert(1)), b"junk"])
    code = (
        "from notifier.notify import run_notify; from streams.settings import Settings; "
        "run_notify(Settings())"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: len(receiver.accepted()) == 1 and committed(s) == 2, what="delivery by the process")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'gridwatch_notify_delivered_total{severity="warning"} 1.0' in metrics
        assert 'gridwatch_notify_dead_lettered_total{reason="json"} 1.0' in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    hit = receiver.accepted()[0]
    assert verify(
        SECRET.encode(),
        hit.body,
        hit.headers[TIMESTAMP_HEADER],
        hit.headers[SIGNATURE_HEADER],
        now=time.time(),
    )
    log = out.decode()
    assert "delivered" in log and "dead-lettered: json" in log and SECRET not in log
    assert receiver.url not in log  # the path may carry a token: only the origin is logged


def test_a_record_the_worker_sent_twice_pages_once(kafka_broker: LocalKafka, receiver: Receiver) -> None:
    """The worker publishes at least once: the same (id, event) again is not delivered again,
    but the alert's resolution is."""
    s = settings_for(kafka_broker, receiver.url)
    first = enc(alert(1))
    resolved = enc({**json.loads(first), "event": "resolved"})
    publish(s, [first, first, resolved, first])
    with Notify(s, SECRET.encode()) as notify:
        wait_for(lambda: committed(s) == 4, what="4 records settled")
    assert [h.body for h in receiver.accepted()] == [first, resolved]
    assert notify.value("gridwatch_notify_duplicates_total") == 2
