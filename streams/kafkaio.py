"""Plain Kafka I/O for the CLI and tests (kafka-python): create topics, produce, read back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from streams.settings import Settings
from streams.topics import TopicSpec


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka/kafka-python connection options from settings (security included)."""
    kw: dict[str, Any] = {"bootstrap_servers": settings.bootstrap}
    if settings.security_protocol != "PLAINTEXT":
        kw["security_protocol"] = settings.security_protocol
    if settings.sasl_mechanism:
        kw["sasl_mechanism"] = settings.sasl_mechanism
        kw["sasl_plain_username"] = settings.sasl_username
        kw["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    return kw


def faust_broker_kwargs(settings: Settings) -> dict[str, Any]:
    """faust.App options that say where the broker is and how to log in (security included)."""
    return {"broker": f"kafka://{settings.bootstrap}"}


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
