"""``gridwatch record`` / ``replay`` on the real broker: a record -> replay -> record round trip is
byte-identical in keys, values, timestamps, headers and partitions; pacing follows timestamps;
and a missing topic, an unreadable file or an unreachable broker give one clear line."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from typer.testing import CliRunner

from streams.broker import LocalKafka
from streams.cli import app
from streams.kafkaio import create_topics
from streams.localrun import free_port
from streams.replay import Recorded, ReplayError, encode_line, read_recording, record, replay
from streams.settings import REPO
from streams.topics import TopicSpec

T0 = int(time.time() * 1000) - 3_600_000  # an hour ago: inside any retention


def _names(*suffixes: str) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"replay-{run}-{s}" for s in suffixes]


def _create(bootstrap: str, partitions: dict[str, int]) -> None:
    create_topics(bootstrap, [TopicSpec(name, n) for name, n in partitions.items()])


def _fill(bootstrap: str, topic: str, partitions: int, n: int, seed: int) -> None:
    """Binary keys and values, null keys and values, empty values, headers, explicit timestamps
    (non-decreasing within each partition)."""
    rng = np.random.default_rng(seed)
    prod = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(n):
        key = None if i % 7 == 3 else rng.bytes(int(rng.integers(1, 20)))
        value = (
            None
            if i % 11 == 5 and key is not None
            else (b"" if i % 13 == 6 else rng.bytes(int(rng.integers(1, 300))))
        )
        headers = [("h", rng.bytes(4)), ("trace", b"x")] if i % 5 == 0 else None
        prod.send(
            topic, key=key, value=value, partition=i % partitions, timestamp_ms=T0 + 37 * i, headers=headers
        )
    prod.flush()
    prod.close()


def _by_partition(path: Path) -> dict[tuple[str, int], list[tuple[object, ...]]]:
    _, records = read_recording(path)
    out: dict[tuple[str, int], list[tuple[object, ...]]] = defaultdict(list)
    for r in records:
        out[(r.topic, r.partition)].append((r.offset, r.key, r.value, r.timestamp_ms, r.headers))
    return out


def test_record_replay_record_is_byte_identical(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    src_a, src_b, dst_a, dst_b = _names("a", "b", "a2", "b2")
    _create(bootstrap, {src_a: 3, src_b: 1, dst_a: 3, dst_b: 1})
    _fill(bootstrap, src_a, 3, 90, seed=1)
    _fill(bootstrap, src_b, 1, 25, seed=2)

    first = tmp_path / "first.jsonl.gz"
    assert record(bootstrap, [src_a, src_b], first, timeout_s=10) == {src_a: 90, src_b: 25}
    header, records = read_recording(first)
    assert header["topics"] == {
        src_a: {"partitions": 3, "records": 90},
        src_b: {"partitions": 1, "records": 25},
    }
    recs = list(records)
    assert [r.timestamp_ms for r in recs] == sorted(r.timestamp_ms for r in recs)  # merged by time
    assert any(r.key is None for r in recs) and any(r.value is None for r in recs)
    assert any(r.value == b"" for r in recs) and any(r.headers for r in recs)

    result = replay(bootstrap, first, rename={src_a: dst_a, src_b: dst_b}, timeout_s=10)
    assert result.sent == {dst_a: 90, dst_b: 25} and result.repartitioned == 0
    second = tmp_path / "second.jsonl"
    record(bootstrap, [dst_a, dst_b], second, timeout_s=10)

    before, after = _by_partition(first), _by_partition(second)
    rename = {src_a: dst_a, src_b: dst_b}
    assert {(rename[t], p): rows for (t, p), rows in before.items()} == after
    # line for line, only the topic name differs
    strip = [
        encode_line(Recorded("t", *(r.partition, r.offset, r.timestamp_ms, r.key, r.value, r.headers)))
        for r in read_recording(first)[1]
    ]
    again = [
        encode_line(Recorded("t", *(r.partition, r.offset, r.timestamp_ms, r.key, r.value, r.headers)))
        for r in read_recording(second)[1]
    ]
    assert strip == again


def test_replay_into_fewer_partitions_places_by_key(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    src, dst = _names("src", "dst")
    _create(bootstrap, {src: 2, dst: 1})
    _fill(bootstrap, src, 2, 10, seed=3)
    path = tmp_path / "r.jsonl"
    record(bootstrap, [src], path)
    result = replay(bootstrap, path, rename={src: dst})
    assert result.sent == {dst: 10} and result.repartitioned == 5
    assert sum(len(v) for v in _by_partition(_record_to(bootstrap, dst, tmp_path)).values()) == 10


def _record_to(bootstrap: str, topic: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{topic}.jsonl"
    record(bootstrap, [topic], path)
    return path


def test_replay_paces_by_recorded_timestamps(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    (topic,) = _names("paced")
    _create(kafka_broker.bootstrap, {topic: 1})
    path = tmp_path / "paced.jsonl"
    lines = [
        b'{"format":"gridwatch-record","version":1,"topics":{"%s":{"partitions":1,"records":5}}}'
        % topic.encode()
    ]
    lines += [encode_line(Recorded(topic, 0, i, T0 + 300 * i, b"k", b"v%d" % i)) for i in range(5)]  # 1.2 s
    path.write_bytes(b"\n".join(lines) + b"\n")
    started = time.monotonic()
    replay(kafka_broker.bootstrap, path, speed=2.0)  # 0.6 s
    paced = time.monotonic() - started
    started = time.monotonic()
    replay(kafka_broker.bootstrap, path, speed=0)
    assert paced >= 0.55 and paced > time.monotonic() - started


# ---- clear errors -------------------------------------------------------------------------------


def test_missing_topics(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    (src,) = _names("exists")
    _create(bootstrap, {src: 1})
    _fill(bootstrap, src, 1, 3, seed=4)
    with pytest.raises(ReplayError, match=r"topic 'replay-nope' does not exist"):
        record(bootstrap, [src, "replay-nope"], tmp_path / "x.jsonl")
    path = tmp_path / "ok.jsonl"
    record(bootstrap, [src], path)
    with pytest.raises(ReplayError, match=r"topic 'replay-missing-dst' does not exist"):
        replay(bootstrap, path, rename={src: "replay-missing-dst"})
    with pytest.raises(ReplayError, match=r"--rename names topic\(s\) not in"):
        replay(bootstrap, path, rename={"other": "x"})


def test_unreadable_files(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    with pytest.raises(ReplayError, match="cannot read .*nothing-here.jsonl"):
        replay(bootstrap, tmp_path / "nothing-here.jsonl")
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"hello\n")
    with pytest.raises(ReplayError, match="is not a gridwatch recording"):
        replay(bootstrap, junk)
    fake_gz = tmp_path / "fake.jsonl.gz"
    fake_gz.write_bytes(b"not gzip at all\n")
    with pytest.raises(ReplayError, match="cannot read"):
        replay(bootstrap, fake_gz)
    bad_line = tmp_path / "bad.jsonl"
    header = b'{"format":"gridwatch-record","version":1,"topics":{"t":{"partitions":1,"records":2}}}\n'
    bad_line.write_bytes(header + encode_line(Recorded("t", 0, 0, T0, b"k", b"v")) + b'\n{"topic": "t"}\n')
    with pytest.raises(ReplayError, match=r"bad.jsonl:3: missing field"):
        replay(bootstrap, bad_line)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(header + b"x" * 5000)[:60])
    with pytest.raises(ReplayError, match="cannot read"):
        replay(bootstrap, truncated)


def test_unreachable_broker_fails_fast(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b'{"format":"gridwatch-record","version":1,"topics":{"t":{"partitions":1,"records":0}}}\n'
    )
    started = time.monotonic()
    with pytest.raises(ReplayError, match=f"no Kafka broker reachable at {nowhere}"):
        record(nowhere, ["t"], tmp_path / "out.jsonl", timeout_s=1)
    with pytest.raises(ReplayError, match=f"no Kafka broker reachable at {nowhere}"):
        replay(nowhere, path, timeout_s=1)
    assert time.monotonic() - started < 10


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    cases = [
        (["replay", str(tmp_path / "missing.jsonl"), "--bootstrap", nowhere], "cannot read"),
        (
            ["record", "t", "--out", str(tmp_path / "o.jsonl"), "--bootstrap", nowhere, "--timeout", "1"],
            "no Kafka broker reachable",
        ),
    ]
    for args, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "streams.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_cli_round_trip(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    src, dst = _names("cli", "cli2")
    _create(bootstrap, {src: 2, dst: 2})
    _fill(bootstrap, src, 2, 12, seed=5)
    runner = CliRunner()
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    res = runner.invoke(app, ["record", src, "--out", str(first), "--bootstrap", bootstrap])
    assert res.exit_code == 0 and "recorded 12 records" in res.output, res.output
    res = runner.invoke(app, ["replay", str(first), "--rename", f"{src}={dst}", "--bootstrap", bootstrap])
    assert res.exit_code == 0 and "replayed 12 records" in res.output, res.output
    runner.invoke(app, ["record", dst, "--out", str(second), "--bootstrap", bootstrap])
    assert list(_by_partition(first).values()) == list(_by_partition(second).values())
    res = runner.invoke(app, ["replay", str(first), "--rename", "nonsense", "--bootstrap", bootstrap])
    assert res.exit_code == 2
