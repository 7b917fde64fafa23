"""Plain Kafka I/O for the CLI and tests (kafka-python): create topics, produce, read back; and
the connection options of every Kafka client, security included (docs/security.md)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from streams.masking import redact_in_logs
from streams.settings import Settings
from streams.topics import TopicSpec

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaConfigError(ValueError):
    """The Kafka security settings cannot work together; the message names the variables."""


def _protocol(settings: Settings) -> str:
    proto = settings.security_protocol.upper()
    if proto not in PROTOCOLS:
        raise KafkaConfigError(
            f"GRIDWATCH_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {proto!r}"
        )
    return proto


def sasl_password(settings: Settings) -> str | None:
    """The SASL password: GRIDWATCH_SASL_PASSWORD or the file GRIDWATCH_SASL_PASSWORD_FILE, one of them.

    Secrets come from the environment (or `.env`) or a file only, never from the command line,
    and are never logged. Whitespace around a file's content (an editor's final newline) is not
    part of the password. (`sasl_password_file` is read when Settings has that field.)
    """
    path: Path | None = getattr(settings, "sasl_password_file", None)
    if settings.sasl_password is not None and path is not None:
        raise KafkaConfigError("set GRIDWATCH_SASL_PASSWORD or GRIDWATCH_SASL_PASSWORD_FILE, not both")
    if path is not None:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise KafkaConfigError(
                f"cannot read GRIDWATCH_SASL_PASSWORD_FILE {path}: {exc.strerror}"
            ) from None
    if settings.sasl_password is not None:
        return settings.sasl_password.get_secret_value()
    return None


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None otherwise): the server is verified against
    GRIDWATCH_SSL_CAFILE (the system's CAs when unset), its host name too unless
    GRIDWATCH_SSL_CHECK_HOSTNAME=false; GRIDWATCH_SSL_CERTFILE/KEYFILE add a client certificate."""
    if _protocol(settings) not in ("SSL", "SASL_SSL"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = settings.ssl_check_hostname
        if settings.ssl_certfile is not None:
            keyfile = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
            ctx.load_cert_chain(str(settings.ssl_certfile), keyfile)
        elif settings.ssl_keyfile is not None:
            raise KafkaConfigError("GRIDWATCH_SSL_KEYFILE is set without GRIDWATCH_SSL_CERTFILE")
    except (OSError, ssl.SSLError) as exc:
        raise KafkaConfigError(f"TLS files (GRIDWATCH_SSL_CAFILE/CERTFILE/KEYFILE) unusable: {exc}") from None
    return ctx


def _sasl(settings: Settings) -> tuple[str, str, str] | None:
    """(mechanism, username, password) for SASL_*; None for PLAINTEXT and SSL."""
    if not _protocol(settings).startswith("SASL_"):
        return None
    mech = (settings.sasl_mechanism or "").upper()
    if mech not in MECHANISMS:
        raise KafkaConfigError(
            f"GRIDWATCH_SASL_MECHANISM must be one of {', '.join(MECHANISMS)} with "
            f"{settings.security_protocol}, got {settings.sasl_mechanism!r}"
        )
    password = sasl_password(settings)
    if not settings.sasl_username or password is None:
        raise KafkaConfigError(
            "SASL needs GRIDWATCH_SASL_USERNAME and GRIDWATCH_SASL_PASSWORD (or _PASSWORD_FILE)"
        )
    # aiokafka and kafka-python log the PLAIN password at DEBUG level (the SASL request body)
    redact_in_logs(password)
    return mech, settings.sasl_username, password


def security_kwargs(settings: Settings) -> dict[str, Any]:
    """Security options for an aiokafka or kafka-python client ({} for PLAINTEXT).

    Both libraries take the same names here: each accepts a ready `ssl_context` (kafka-python
    then ignores its own ssl_cafile/ssl_check_hostname/... options). For the kafkaio helpers,
    which take the bootstrap separately: `create_topics(s.bootstrap, specs, **security_kwargs(s))`.
    """
    proto = _protocol(settings)
    if proto == "PLAINTEXT":
        return {}
    kw: dict[str, Any] = {"security_protocol": proto}
    ctx = ssl_context(settings)
    if ctx is not None:
        kw["ssl_context"] = ctx
    sasl = _sasl(settings)
    if sasl is not None:
        kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"] = sasl
    return kw


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka/kafka-python connection options from settings (security included).

    >>> kafka_client_kwargs(Settings(bootstrap="127.0.0.1:9092"))
    {'bootstrap_servers': '127.0.0.1:9092'}
    """
    return {"bootstrap_servers": settings.bootstrap, **security_kwargs(settings)}


def faust_broker_kwargs(settings: Settings) -> dict[str, Any]:
    """faust.App options that say where the broker is and how to log in (security included).

    >>> faust_broker_kwargs(Settings(bootstrap="127.0.0.1:9092"))
    {'broker': 'kafka://127.0.0.1:9092'}
    """
    kw: dict[str, Any] = {"broker": f"kafka://{settings.bootstrap}"}
    proto = _protocol(settings)
    if proto == "PLAINTEXT":
        return kw
    import faust  # here: the CLI's Kafka commands do not need Faust loaded

    ctx = ssl_context(settings)
    sasl = _sasl(settings)
    if sasl is None:
        kw["broker_credentials"] = faust.SSLCredentials(ctx)
    else:
        mech, user, password = sasl
        kw["broker_credentials"] = faust.SASLCredentials(
            username=user, password=password, ssl_context=ctx, mechanism=mech
        )
    return kw


def set_faust_fetch_wait(app: Any, fetch_max_wait_ms: int) -> None:
    """Make ``app``'s group consumer wait at most ``fetch_max_wait_ms`` on a fetch.

    faust-streaming (0.15) builds its aiokafka consumer with ``fetch_max_wait_ms=1500``, not
    configurable. aiokafka keeps one fetch in flight per broker; when that fetch asks only for
    partitions with nothing new (changelogs, quiet partitions, or partitions whose buffered
    records are not consumed yet), the broker holds it for the full wait and every other
    partition waits behind it. Measured (benchmarks/latency.py, batches at 20k readings/s):
    results settled ~1.3 s behind their input, with the worker at under half a core; with 100
    ms, p50 189 ms and p99 658 ms. Call before the app starts (the consumer is built then).
    """
    from faust.transport.drivers import aiokafka as faust_aiokafka  # Faust is loaded by the caller

    class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):  # type: ignore[misc]
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when the consumer starts
            return consumer

    class _Consumer(faust_aiokafka.Consumer):  # type: ignore[misc]
        def _new_consumer_thread(self) -> Any:
            return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    app.transport.Consumer = _Consumer


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached: say where we tried."""


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


def _connect(factory: Any, bootstrap: str, **kw: Any) -> Any:
    try:
        return factory(bootstrap_servers=bootstrap, **kw)
    except KafkaTimeoutError:
        raise KafkaUnavailable(f"no Kafka broker reachable at {bootstrap}") from None


def create_topics(bootstrap: str, specs: Iterable[TopicSpec], timeout: float = 30.0, **kw: Any) -> list[str]:
    """Create missing topics and wait until every partition has a leader; returns the names
    created (existing ones are left alone).

    The local broker runs with auto.create.topics.enable=false, and creation returns before
    metadata propagates, so producing at once would briefly fail. One request per topic, so an
    existing topic does not hide errors of the others.
    """
    admin = _connect(KafkaAdminClient, bootstrap, request_timeout_ms=int(timeout * 1000), **kw)
    specs = list(specs)
    created = []
    try:
        for sp in specs:
            body = {"num_partitions": sp.partitions, "replication_factor": 1, "configs": dict(sp.config)}
            try:
                admin.create_topics({sp.name: body})
                created.append(sp.name)
            except TopicAlreadyExistsError:
                pass
        _wait_for_leaders(admin, [sp.name for sp in specs], timeout)
    finally:
        admin.close()
    return created


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.describe_topics(names) if names else []
        ok = all(
            t.get("error_code") == 0
            and t.get("partitions")
            and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in t["partitions"])
            for t in topics
        )
        if ok:
            return
        if time.monotonic() > deadline:
            raise KafkaError(f"topics {names} have no leader after {timeout:.0f}s: {topics}")
        time.sleep(0.2)


def producer(bootstrap: str, **kw: Any) -> KafkaProducer:
    return _connect(
        KafkaProducer,
        bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        **kw,
    )


def produce(
    bootstrap: str,
    records: Iterable[tuple[str, bytes | None, bytes | None]],
    **kw: Any,
) -> int:
    """Send (topic, key, value) records in order and wait for all of them; returns count."""
    prod = producer(bootstrap, **kw)
    n = 0
    try:
        for topic, key, value in records:
            prod.send(topic, key=key, value=value)
            n += 1
        prod.flush()
    finally:
        prod.close()
    return n


def read_topic(
    bootstrap: str, topic: str, *, idle_s: float = 2.0, timeout_s: float = 60.0, **kw: Any
) -> list[Record]:
    """Everything in ``topic`` from the beginning to its current end (no consumer group)."""
    return list(iter_topic(bootstrap, topic, idle_s=idle_s, timeout_s=timeout_s, **kw))


def iter_topic(
    bootstrap: str, topic: str, *, idle_s: float = 2.0, timeout_s: float = 60.0, **kw: Any
) -> Iterator[Record]:
    consumer = _connect(KafkaConsumer, bootstrap, enable_auto_commit=False, group_id=None, **kw)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise KafkaError(f"topic {topic!r} does not exist at {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic!r} did not reach its end in {timeout_s}s")
            for tp, recs in consumer.poll(timeout_ms=int(idle_s * 1000), max_records=50_000).items():
                for r in recs:
                    yield Record(tp.topic, tp.partition, r.offset, r.key, r.value, r.timestamp)
    finally:
        consumer.close()


async def from_beginning(consumer: AIOKafkaConsumer, timeout_s: float = 10.0) -> dict[TopicPartition, int]:
    """For a started group-less aiokafka consumer subscribed to topics: wait until it has
    assigned itself every partition, seek them to the beginning, and return their end offsets
    ({} when no partition appeared: the topics do not exist)."""
    deadline = time.monotonic() + timeout_s
    while not consumer.assignment() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    tps = sorted(consumer.assignment())
    if not tps:
        return {}
    await consumer.seek_to_beginning(*tps)
    return dict(await consumer.end_offsets(tps))


def end_offsets(bootstrap: str, topic: str, **kw: Any) -> dict[int, int]:
    consumer = _connect(KafkaConsumer, bootstrap, enable_auto_commit=False, group_id=None, **kw)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def group_offsets(settings: Settings) -> dict[tuple[str, int], int] | None:
    """The committed offsets of the worker group ``settings.app_id``, (topic, partition) ->
    offset; None if the broker could not be asked (no coordinator yet, unreachable).
    Blocking: run it in a thread from async code."""
    try:
        admin = KafkaAdminClient(**kafka_client_kwargs(settings))
    except KafkaError:
        return None
    try:
        committed = admin.list_group_offsets(settings.app_id).get(settings.app_id, {})
    except KafkaError:
        return None
    finally:
        admin.close()
    return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in committed.items() if meta.offset >= 0}
