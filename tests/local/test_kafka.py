"""The project's Kafka broker really serves: keyed round trip, and data survives a crash."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from local.kafka import DEFAULT_VERSION, LocalKafka
from streams.kafkaio import create_topics
from streams.topics import TopicSpec

pytestmark = pytest.mark.kafka


def _consume(
    bootstrap: str, topic: str, expected: int, timeout: float = 30.0
) -> list[tuple[bytes, bytes, int]]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got: list[tuple[bytes, bytes, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend((r.key, r.value, r.partition) for r in records)
    finally:
        consumer.close()
    return got


def test_keyed_round_trip(kafka_broker: LocalKafka) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_broker.bootstrap, [TopicSpec(topic, 4, {"retention.ms": "3600000"})])
    create_topics(kafka_broker.bootstrap, [TopicSpec(topic, 4)])  # already exists: ignored
    sent = {f"meter-{i % 10}-{i}".encode(): f"reading-{i}".encode() for i in range(100)}
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    for key, value in sent.items():
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    got = _consume(kafka_broker.bootstrap, topic, len(sent))

    assert {k: v for k, v, _ in got} == sent
    assert len(got) == len(sent)
    assert len({p for *_, p in got}) > 1, "keys should spread over the 4 partitions"


def test_message_survives_kill_and_restart(tmp_path: Path) -> None:
    # Its own broker: killing the session one would disturb other tests' clients. A short
    # broker session lets the controller drop the killed incarnation in ~3 s instead of 9 s.
    fast_fencing = {"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms": "500"}
    version = os.environ.get("GRIDWATCH_KAFKA_VERSION", DEFAULT_VERSION)
    with LocalKafka.start(tmp_path / "kafka", version=version, overrides=fast_fencing) as broker:
        ports = (broker.port, broker.controller_port)
        create_topics(broker.bootstrap, [TopicSpec("durable", 1)])
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        producer.send("durable", key=b"k", value=b"before-crash").get(timeout=30)
        producer.close()

        broker.kill()
        assert not broker.running
        broker.restart()

        assert (broker.port, broker.controller_port) == ports
        got = _consume(broker.bootstrap, "durable", 1)
        assert [(k, v) for k, v, _ in got] == [(b"k", b"before-crash")]
