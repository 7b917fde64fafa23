"""``gridwatch notify``: deliver the alerts topic to the duty webhook, signed, paced and retried.

Each alert is POSTed as its original bytes with an HMAC-SHA256 signature; its offset is committed
only once the webhook accepted it or it went to the alerts dead-letter topic (docs/notify.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import ConsumerRecord
from prometheus_client import CollectorRegistry, start_http_server
from yarl import URL

from streams.contracts import Alert, InvalidRecord, dead_letter
from streams.kafkaio import create_topics, kafka_client_kwargs, security_kwargs
from streams.metrics import NotifyMetrics
from streams.settings import Settings
from streams.topics import alert_topic_specs

log = logging.getLogger("gridwatch.notify")

SIGNATURE_HEADER = "X-Gridwatch-Signature"
TIMESTAMP_HEADER = "X-Gridwatch-Timestamp"
USER_AGENT = "gridwatch-notify/1"
MIN_SECRET_BYTES = 16


class NotifyConfigError(ValueError):
    """Settings that cannot deliver alerts safely (no secret, a bad URL); never quotes the secret."""


# ---- pure parts ------------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header value: HMAC-SHA256 over ``b"<timestamp>." + body``.

    The timestamp is signed too, so a captured request cannot be replayed later with a fresh one.

    >>> sign(b"0123456789abcdef", 1767225600, b'{"id":"a1"}')
    'sha256=9265531655df75ca2e8b24c832b71d300bf8dd8a44b51176e0229cd43a986384'
    """
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: bytes, body: bytes, timestamp: str, signature: str, *, now: float, tolerance_s: float = 300
) -> bool:
    """What a receiver does: the signature matches and the timestamp is recent.

    >>> body, key = b'{"id":"a1"}', b"0123456789abcdef"
    >>> sig = sign(key, 1767225600, body)
    >>> verify(key, body, "1767225600", sig, now=1767225630)
    True
    >>> verify(b"another-secret-key", body, "1767225600", sig, now=1767225630)
    False
    >>> verify(key, body, "1767225600", sig, now=1767225600 + 3600)  # a replay an hour later
    False
    """
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    return abs(now - ts) <= tolerance_s and hmac.compare_digest(sign(secret, ts, body), signature)


def backoff_delay(retry: int, *, initial: float, cap: float, rand: float) -> float:
    """Seconds before retry number ``retry`` (0-based): exponential, capped, with jitter.

    ``rand`` in [0, 1) spreads the delay over the upper half of the step ("equal jitter"), so
    there is always some back-off but many notifiers do not retry in lockstep.

    >>> [backoff_delay(n, initial=0.5, cap=30.0, rand=1.0) for n in range(8)]
    [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    >>> backoff_delay(3, initial=0.5, cap=30.0, rand=0.0)
    2.0
    """
    step = min(cap, initial * 2.0 ** min(retry, 60))
    return step * (0.5 + rand / 2)


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as seconds from ``now``; None if absent/bad.

    >>> now = datetime(2026, 1, 1, tzinfo=UTC)
    >>> retry_after_s("3", now), retry_after_s("Thu, 01 Jan 2026 00:00:10 GMT", now)
    (3.0, 10.0)
    >>> retry_after_s("soon", now) is None, retry_after_s("Wed, 31 Dec 2025 00:00:00 GMT", now)
    (True, 0.0)
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass
class TokenBucket:
    """``rate`` alerts per second on average, up to ``burst`` at once.

    ``take`` reserves a token and says how long to wait before using it, so callers that wait
    as told are paced exactly even when they ask early.

    >>> bucket = TokenBucket(rate=5, burst=2)
    >>> [bucket.take(0.0) for _ in range(4)]
    [0.0, 0.0, 0.2, 0.4]
    >>> bucket.take(1.0)  # refilled (up to the burst) while idle
    0.0
    """

    rate: float
    burst: int
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, now: float) -> float:
        if self.updated is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def classify(status: int) -> str:
    """What an HTTP status means for an alert: delivered, rejected (dead-letter), or a retry reason.

    Redirects are not followed (a POST must not silently turn into a GET elsewhere).

    >>> [classify(s) for s in (200, 204, 301, 400, 404, 429, 500, 503)]
    ['delivered', 'delivered', 'rejected', 'rejected', 'rejected', 'http_429', 'http_5xx', 'http_5xx']
    """
    if 200 <= status < 300:
        return "delivered"
    if status == 429:
        return "http_429"
    if status >= 500:
        return "http_5xx"
    return "rejected"


def redact(url: str) -> str:
    """A webhook URL fit for logs: path and query often carry a token, so only the origin.

    >>> redact("https://hooks.example.org/T000/B000/XXXX?token=abc")
    'https://hooks.example.org:443'
    """
    u = URL(url)
    return f"{u.scheme}://{u.host}:{u.port}"


_alert_decoder = msgspec.json.Decoder(Alert)


def decode_alert(raw: bytes | None) -> Alert:
    """Decode one alerts-topic record; raises InvalidRecord with reason ``json`` or ``schema``.

    >>> decode_alert(b'{"id":"a1"')
    Traceback (most recent call last):
    ...
    streams.contracts.InvalidRecord: json: Input data was truncated
    >>> decode_alert(b'{"id":"a1"}')
    Traceback (most recent call last):
    ...
    streams.contracts.InvalidRecord: schema: Object missing required field `type`
    """
    try:
        alert = _alert_decoder.decode(raw or b"")
    except msgspec.ValidationError as exc:
        raise InvalidRecord("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRecord("json", str(exc)) from None
    # An opened alert spans the one instant it opened at (window_start == window_end, as
    # models.alerts.AlertBook writes it); only an end before the start is malformed.
    if alert.window_end < alert.window_start:
        raise InvalidRecord("schema", "window_end is before window_start - at `$.window_end`")
    return alert


# ---- configuration ---------------------------------------------------------------------------


def load_secret(settings: Settings) -> bytes:
    """The HMAC key: GRIDWATCH_WEBHOOK_SECRET or the file GRIDWATCH_WEBHOOK_SECRET_FILE, one of them.

    Whitespace around a file's content (an editor's final newline) is not part of the key.
    """
    if settings.webhook_secret is not None and settings.webhook_secret_file is not None:
        raise NotifyConfigError("set GRIDWATCH_WEBHOOK_SECRET or GRIDWATCH_WEBHOOK_SECRET_FILE, not both")
    if settings.webhook_secret_file is not None:
        secret = settings.webhook_secret_file.read_bytes().strip()
    elif settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value().strip().encode()
    else:
        raise NotifyConfigError(
            "no webhook secret: set GRIDWATCH_WEBHOOK_SECRET or GRIDWATCH_WEBHOOK_SECRET_FILE "
            "(alerts are never sent unsigned)"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise NotifyConfigError(f"the webhook secret is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def check_url(url: str) -> None:
    u = URL(url)
    if u.scheme not in ("http", "https") or not u.host:
        raise NotifyConfigError("GRIDWATCH_DUTY_WEBHOOK_URL must be an http(s) URL with a host")


# ---- delivery --------------------------------------------------------------------------------


class Stopped(Exception):
    """Asked to stop while waiting: the current alert is neither delivered nor committed."""


@dataclass(frozen=True)
class PostResult:
    kind: str  # classify(): delivered, rejected, http_429, http_5xx; or connection, timeout
    detail: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Settled:
    delivered: bool
    reason: str  # "" when delivered, else the dead-letter reason
    detail: str
    attempts: int


class Courier:
    """Delivers one alert at a time: rate limit, signed POST, retries, the final verdict."""

    def __init__(
        self,
        settings: Settings,
        *,
        secret: bytes,
        session: aiohttp.ClientSession,
        metrics: NotifyMetrics,
        stop: asyncio.Event,
        rng: random.Random | None = None,
    ) -> None:
        self.s = settings
        self._secret = secret
        self.session = session
        self.metrics = metrics
        self.stop = stop
        self.bucket = TokenBucket(settings.notify_rate_per_s, settings.notify_burst)
        self.rng = rng or random.Random()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
        except TimeoutError:
            return
        raise Stopped

    async def post(self, body: bytes, alert: Alert, attempt: int) -> PostResult:
        ts = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(ts),
            SIGNATURE_HEADER: sign(self._secret, ts, body),
            "X-Gridwatch-Alert-Id": alert.id,
            "X-Gridwatch-Event": alert.event,
            "X-Gridwatch-Attempt": str(attempt),
        }
        try:
            async with self.session.post(
                self.s.duty_webhook_url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                kind = classify(resp.status)
                snippet = b"" if kind == "delivered" else await resp.content.read(300)
                wait = retry_after_s(resp.headers.get("Retry-After"), datetime.now(UTC))
                detail = f"HTTP {resp.status} {snippet.decode(errors='replace')}".strip()
                return PostResult(kind, detail, wait)
        except TimeoutError:
            return PostResult("timeout", f"no response within {self.s.notify_timeout_s}s")
        except aiohttp.ClientError as exc:
            return PostResult("connection", f"{type(exc).__name__}: {exc}")

    async def deliver(self, body: bytes, alert: Alert) -> Settled:
        """POST until accepted, refused, or out of attempts/time; raises Stopped if asked to."""
        loop = asyncio.get_running_loop()
        wait = self.bucket.take(loop.time())
        if wait > 0:
            self.metrics.rate_limited.inc()
            await self._sleep(wait)
        deadline = loop.time() + self.s.notify_max_elapsed_s
        attempt = 0
        while True:
            attempt += 1
            result = await self.post(body, alert, attempt)
            if result.kind == "delivered":
                return Settled(True, "", result.detail, attempt)
            if result.kind == "rejected":
                return Settled(False, "rejected", result.detail, attempt)
            delay = result.retry_after
            if delay is None:
                delay = backoff_delay(
                    attempt - 1,
                    initial=self.s.notify_backoff_initial_s,
                    cap=self.s.notify_backoff_max_s,
                    rand=self.rng.random(),
                )
            if attempt >= self.s.notify_max_attempts or loop.time() + delay > deadline:
                detail = f"gave up after {attempt} attempt(s); last: {result.detail}"
                return Settled(False, "retries_exhausted", detail, attempt)
            self.metrics.retried.labels(reason=result.kind).inc()
            log.warning("alert %s: %s; retry %d in %.2fs", alert.id, result.detail, attempt, delay)
            await self._sleep(delay)


def _max_poll_interval_ms(s: Settings) -> int:
    # One record may take a token wait, every retry and one last POST; the group must not evict
    # us meanwhile (that would hand the partition over and deliver the alert twice).
    worst = 1 / s.notify_rate_per_s + s.notify_max_elapsed_s + s.notify_timeout_s + 60
    return int(worst * 1000)


async def serve(settings: Settings, *, secret: bytes, metrics: NotifyMetrics, stop: asyncio.Event) -> None:
    """Deliver the alerts topic until ``stop`` is set.

    Offsets are committed one record at a time, after the webhook accepted the alert or after
    its dead letter was written, so a restart resumes at the first unsettled alert.
    """
    kw = kafka_client_kwargs(settings)
    consumer = AIOKafkaConsumer(
        settings.topic_alerts,
        group_id=settings.notify_group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=_max_poll_interval_ms(settings),
        **kw,
    )
    producer = AIOKafkaProducer(acks="all", enable_idempotence=True, **kw)
    timeout = aiohttp.ClientTimeout(total=settings.notify_timeout_s)
    await producer.start()
    try:
        await consumer.start()
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT}) as session:
                courier = Courier(settings, secret=secret, session=session, metrics=metrics, stop=stop)
                seen = RecentAlerts()
                log.info(
                    "notify: %s -> %s (group %s, %.3g/s, burst %d)",
                    settings.topic_alerts,
                    redact(settings.duty_webhook_url),
                    settings.notify_group_id,
                    settings.notify_rate_per_s,
                    settings.notify_burst,
                )
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=300, max_records=1)
                    for tp, records in batch.items():
                        for rec in records:
                            await _settle(rec, courier, producer, settings, metrics, seen)
                            await _commit(consumer, tp, rec.offset + 1)
        except Stopped:
            log.info("notify: stopped while an alert was pending; it is delivered after a restart")
        finally:
            await consumer.stop()
    finally:
        await producer.stop()


class RecentAlerts:
    """The (id, event) pairs delivered lately, so a record the worker sent twice (it publishes
    at least once: docs/detection.md) pages once.

    >>> seen = RecentAlerts(capacity=2)
    >>> seen.add("a", "opened"), seen.add("a", "opened"), seen.add("a", "resolved")
    (True, False, True)
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def add(self, alert_id: str, event: str) -> bool:
        """True the first time a pair is seen (within the last ``capacity`` pairs)."""
        key = (alert_id, event)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True


async def _settle(
    rec: ConsumerRecord,
    courier: Courier,
    producer: AIOKafkaProducer,
    s: Settings,
    metrics: NotifyMetrics,
    seen: RecentAlerts,
) -> None:
    started = time.monotonic()
    try:
        alert = decode_alert(rec.value)
    except InvalidRecord as exc:
        await _dead_letter(rec, exc.reason, exc.detail, producer, s, metrics)
        return
    if (alert.id, alert.event) in seen:
        metrics.duplicates.inc()
        log.info("alert %s (%s) already delivered: not sent again", alert.id, alert.event)
        return
    outcome = await courier.deliver(rec.value, alert)
    if outcome.delivered:
        seen.add(alert.id, alert.event)
        metrics.delivered.labels(severity=alert.severity).inc()
        metrics.latency.observe(time.monotonic() - started)
        log.info(
            "alert %s (%s %s %s, %s) delivered, %d attempt(s)",
            alert.id,
            alert.type,
            alert.entity_kind,
            alert.entity_id,
            alert.event,
            outcome.attempts,
        )
    else:
        await _dead_letter(rec, outcome.reason, outcome.detail, producer, s, metrics)


async def _dead_letter(
    rec: ConsumerRecord,
    reason: str,
    detail: str,
    producer: AIOKafkaProducer,
    s: Settings,
    metrics: NotifyMetrics,
) -> None:
    body = dead_letter(
        reason=reason,
        detail=detail,
        topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key=rec.key,
        value=rec.value,
    )
    # Waits for the broker's ack: the offset is committed only once the dead letter is durable.
    await producer.send_and_wait(s.topic_alerts_deadletter, value=body, key=rec.key)
    metrics.dead_lettered.labels(reason=reason).inc()
    log.warning(
        "alert at %s[%d]@%d dead-lettered: %s: %s", rec.topic, rec.partition, rec.offset, reason, detail
    )


async def _commit(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
    try:
        await consumer.commit({tp: offset})
    except (CommitFailedError, IllegalStateError) as exc:
        # The partition moved to another notifier during a long delivery: it resumes from the
        # last commit, so this alert may reach the webhook twice (same body, same alert id).
        log.warning("commit of %s@%d failed (%s); the new owner may deliver it again", tp, offset, exc)


def run_notify(settings: Settings) -> None:
    """Run ``gridwatch notify`` in the foreground until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python's connection chatter (topic setup)
    secret = load_secret(settings)
    check_url(settings.duty_webhook_url)
    admin_kw = security_kwargs(settings)
    create_topics(settings.bootstrap, alert_topic_specs(settings), **admin_kw)
    registry = CollectorRegistry()
    metrics = NotifyMetrics(registry)
    if settings.notify_metrics_port:
        start_http_server(settings.notify_metrics_port, addr=settings.metrics_host, registry=registry)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, secret=secret, metrics=metrics, stop=stop)

    asyncio.run(main())
