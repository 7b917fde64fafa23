"""``gridwatch record`` / ``replay`` on the real broker: a record -> replay -> record round trip is
byte-identical in keys, values, timestamps, headers and partitions; pacing follows timestamps;
a recording of last month replayed with ``--shift-to now`` gives a worker the original run's
results, shifted; missing destination topics are created like the recorded ones; and an
unreadable file or an unreachable broker give one clear line."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from kafka import KafkaProducer
from rich.console import Console
from typer.testing import CliRunner
from worker_env import areas_csv, committed_lag, settings_for, worker_env

from cli import app
from local.kafka import LocalKafka
from local.replay import (
    Recorded,
    ReplayError,
    encode_line,
    parse_duration,
    parse_instant,
    progress_bars,
    read_recording,
    record,
    replay,
    shift_offset,
    shift_record,
)
from local.run import WorkerProcess, free_port
from simulator.city import CitySpec, aligned_start, build, messages
from streams.contracts import InvalidRecord, check_time
from streams.kafkaio import create_topics, read_topic
from streams.settings import REPO, Settings
from streams.topics import TopicSpec, topic_specs

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
        src_a: {"partitions": 3, "records": 90, "config": {}},
        src_b: {"partitions": 1, "records": 25, "config": {}},
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
            [sys.executable, "-m", "cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60
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
    # into a topic that does not exist yet, moved to now: the command says both
    (fresh,) = _names("cli-now")
    res = runner.invoke(
        app,
        ["replay", str(first), "--rename", f"{src}={fresh}", "--shift-to", "now", "--bootstrap", bootstrap],
    )
    assert (
        res.exit_code == 0
        and f"replayed 12 records ({fresh}: 12); created {fresh}; shifted by +" in res.output
    )


def test_replay_creates_missing_topics_like_the_recorded_ones(
    kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    src, dst = _names("cfg", "cfg-new")
    config = {"retention.ms": "123456789", "segment.bytes": "10485760"}  # not compacted: null keys
    create_topics(bootstrap, [TopicSpec(src, 3, config)])
    _fill(bootstrap, src, 3, 30, seed=6)
    path = tmp_path / "cfg.jsonl"
    shown = io.StringIO()
    with progress_bars(Console(file=shown, force_terminal=True, width=160)) as bars:
        record(bootstrap, [src], path, progress=bars)
        result = replay(bootstrap, path, rename={src: dst}, progress=bars)
    assert read_recording(path)[0]["topics"][src] == {"partitions": 3, "records": 30, "config": config}
    assert result.created == [dst] and result.sent == {dst: 30} and result.repartitioned == 0
    again = tmp_path / "again.jsonl"
    record(bootstrap, [dst], again)
    assert read_recording(again)[0]["topics"][dst] == {"partitions": 3, "records": 30, "config": config}
    assert list(_by_partition(path).values()) == list(_by_partition(again).values())
    # a second replay finds the topic and creates nothing
    assert replay(bootstrap, path, rename={src: dst}).created == []
    # one bar per phase, each ending full, with its rate and time left
    text = shown.getvalue()
    for phase in ("recording", "writing", "checking", "sending"):
        assert phase in text, text
    assert "30/30" in text and "records/s" in text and "ETA" in text


# ---- time shift, without a broker ---------------------------------------------------------------

LAST_MONTH = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
NOW = datetime(2026, 2, 14, 9, 37, 12, tzinfo=UTC)


def test_shift_moves_every_event_time_and_keeps_formats() -> None:
    offset = shift_offset(LAST_MONTH, to=NOW, align_s=900)
    assert offset == timedelta(days=34, hours=21, minutes=30)  # whole windows, last event <= target
    ts_ms = int(LAST_MONTH.timestamp() * 1000)
    later = int((LAST_MONTH + offset).timestamp() * 1000)
    batch = (
        b'{"kind":"batch","v":1,"area_id":"A1","ts":"2026-01-10T12:00:00Z",'
        b'"readings":[{"meter_id":"m","register_kwh":1.5}]}'
    )
    got = shift_record(Recorded("r", 0, 7, ts_ms, b"A1", batch), offset, latest_ms=later)
    assert orjson.loads(got.value or b"") == {**orjson.loads(batch), "ts": "2026-02-14T09:30:00Z"}
    assert (got.key, got.timestamp_ms, got.offset) == (b"A1", later, 7)
    # topology: the key's time is the value's effective_from, written as the key wrote it
    topo = b'{"meter_id":"m","area_id":"A1","effective_from":"2026-01-01T00:00:00+08:00","active":true}'
    got = shift_record(
        Recorded("t", 0, 0, ts_ms, b"m|2025-12-31T16:00:00+00:00", topo), offset, latest_ms=later
    )
    assert got.key == b"m|2026-02-04T13:30:00+00:00"
    assert orjson.loads(got.value or b"")["effective_from"] == "2026-02-04T21:30:00+08:00"
    # line loss: an epoch-seconds key suffix that is the window start moves too; ``at`` does not
    start = int(LAST_MONTH.timestamp())
    loss = orjson.dumps(
        {
            "area_id": "A1",
            "window_start": "2026-01-10T12:00:00Z",
            "window_end": "2026-01-10T12:15:00Z",
            "at": "2026-03-01T00:00:00Z",
        }
    )
    got = shift_record(Recorded("l", 0, 0, ts_ms, b"A1|%d" % start, loss), offset, latest_ms=later)
    assert got.key == b"A1|%d" % (start + int(offset.total_seconds()))
    assert orjson.loads(got.value or b"") == {
        "area_id": "A1",
        "window_start": "2026-02-14T09:30:00Z",
        "window_end": "2026-02-14T09:45:00Z",
        "at": "2026-03-01T00:00:00Z",
    }
    # a key suffix that is no event time of its value stays
    assert shift_record(Recorded("l", 0, 0, ts_ms, b"A1|12", loss), offset, latest_ms=later).key == b"A1|12"
    # malformed values keep their bytes (the worker dead-letters them as before); the Kafka
    # timestamp never moves past the replay's own clock
    for junk in (b'{"ts": "2026-01-10T12:00:00Z"', b"\xff\x00", b"[1,2]", b'{"ts": "yesterday"}'):
        got = shift_record(Recorded("r", 0, 0, ts_ms + 3_600_000, b"A1", junk), offset, latest_ms=later)
        assert got.value == junk and got.timestamp_ms == later


def test_shift_arguments() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("-2h") == -timedelta(hours=2)
    assert parse_duration("1w2d3h4m5s") == timedelta(days=9, hours=3, minutes=4, seconds=5)
    assert parse_duration("3600") == timedelta(hours=1)
    for bad in ("", "d", "30 days", "2h30", "1.5d"):
        with pytest.raises(ValueError, match="is not a duration"):
            parse_duration(bad)
    assert parse_instant("now", NOW) == NOW and parse_instant("NOW").tzinfo is UTC
    assert parse_instant("2026-02-14T09:37:12Z") == NOW
    with pytest.raises(ValueError, match="no UTC offset"):
        parse_instant("2026-02-14T09:37:12")
    with pytest.raises(ValueError, match="not 'now' or an ISO 8601 time"):
        parse_instant("tomorrow")


def test_cli_refuses_bad_shift_arguments_as_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    path = str(tmp_path / "r.jsonl")
    cases = [
        (["--shift-by", "30 days"], "--shift-by: '30 days' is not a duration"),
        (["--shift-to", "yesterday"], "--shift-to: 'yesterday' is not 'now'"),
        (["--shift-to", "now", "--shift-by", "1d"], "give --shift-to or --shift-by, not both"),
    ]
    for args, message in cases:
        res = runner.invoke(app, ["replay", path, *args])
        assert res.exit_code == 2 and message in res.output, res.output


def test_shift_by_must_keep_readings_in_their_window(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b'{"format":"gridwatch-record","version":1,"topics":{"t":{"partitions":1,"records":0}}}\n'
    )
    with pytest.raises(ReplayError, match=r"--shift-by \+1d10m is not a whole number of windows \(900 s\)"):
        replay(f"127.0.0.1:{free_port()}", path, shift_by=timedelta(days=1, minutes=10), align_s=900)


# ---- acceptance: last month's recording replayed as now -----------------------------------------


def _results(s: Settings) -> dict[tuple[str, str], dict[str, object]]:
    """The latest line-loss record per area and window start."""
    return {
        (str(v["area_id"]), str(v["window_start"])): v
        for v in (orjson.loads(r.value or b"{}") for r in read_topic(s.bootstrap, s.topic_lineloss))
    }


def _run_until_settled(
    env: dict[str, str], log: Path, expected: int
) -> dict[tuple[str, str], dict[str, object]]:
    s = settings_for(env)
    Path(env["GRIDWATCH_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(env, log).start()
    try:
        deadline = time.monotonic() + 300
        while not (
            committed_lag(s, [s.topic_readings, s.topic_supply]) == 0 and len(_results(s)) >= expected
        ):
            assert worker.alive(), worker.log_tail()
            assert time.monotonic() < deadline, (
                f"{len(_results(s))} of {expected} results:\n{worker.log_tail()}"
            )
            time.sleep(1.0)
        last, stable = None, 0
        while stable < 3:  # corrections follow within the idle close
            time.sleep(2.0)
            now = _results(s)
            stable, last = (stable + 1 if now == last else 0), now
        assert last is not None
        return last
    finally:
        worker.stop()


def test_last_months_recording_replayed_as_now_gives_the_same_results_shifted(
    kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap
    interval = 900
    start = aligned_start(datetime.now(UTC) - timedelta(days=32), 0.5, interval)
    city = build(
        CitySpec(
            areas=6,
            meters_per_area=20,
            days=0.5,
            start=start,
            seed=11,
            theft_areas=(1,),
            negative_areas=(2,),
            outage_areas=(3,),
        )
    )
    areas = areas_csv(city, tmp_path)
    # Last month, live: the archive first, then the readings, each written at its event time.
    env1 = worker_env(bootstrap, tmp_path / "first", areas_csv=areas)
    s1 = settings_for(env1)
    create_topics(bootstrap, topic_specs(s1))
    prod = KafkaProducer(bootstrap_servers=bootstrap)
    before = int(start.timestamp() * 1000) - interval * 1000
    for rec in city.topology.records():
        prod.send(
            s1.topic_topology, key=rec.topic_key(), value=orjson.dumps(rec.to_dict()), timestamp_ms=before
        )
    topic = {"readings": s1.topic_readings, "supply": s1.topic_supply}
    for m in messages(city):
        prod.send(topic[m.kind], key=m.key.encode(), value=orjson.dumps(m.value), timestamp_ms=m.ts * 1000)
    prod.flush()
    prod.close()
    expected = len(city.area_ids) * len(city.times)
    original = _run_until_settled(env1, tmp_path / "first.log", expected)
    assert len(original) == expected
    states = {str(v["state"]) for v in original.values()}
    assert {"qualified", "high_loss", "negative_loss", "incomplete"} <= states, states

    recording = tmp_path / "last-month.jsonl.gz"
    sources = [s1.topic_topology, s1.topic_readings, s1.topic_supply]
    record(bootstrap, sources, recording)

    # The replay's worker refuses anything older than a week: unshifted, every reading would be
    # dead-lettered as too_old.
    env2 = worker_env(bootstrap, tmp_path / "second", areas_csv=areas, max_past_s=str(7 * 86400))
    s2 = settings_for(env2)
    with pytest.raises(InvalidRecord, match="too_old"):
        check_time(city.spec.start, datetime.now(UTC), max_past=s2.max_past, max_future=s2.max_future)
    targets = [s2.topic_topology, s2.topic_readings, s2.topic_supply]
    at = datetime.now(UTC)
    result = replay(
        bootstrap,
        recording,
        rename=dict(zip(sources, targets, strict=True)),
        shift_to=at,
        align_s=s2.window_s,
    )
    assert sorted(result.created) == sorted(targets)
    last = datetime.fromtimestamp(city.times[-1], UTC)
    assert result.shift.total_seconds() % s2.window_s == 0 and result.last_event == last + result.shift
    assert at - timedelta(seconds=s2.window_s) < last + result.shift <= at
    # created like the originals: partitions and settings (retention, compaction)
    specs = {sp.name: sp for sp in topic_specs(s2)}
    header = read_recording(recording)[0]["topics"]
    for src, dst in zip(sources, targets, strict=True):
        assert header[src]["config"] == specs[dst].config
        assert len(read_topic(bootstrap, dst)) == header[src]["records"]

    create_topics(bootstrap, topic_specs(s2))  # the worker's own output topics
    shifted = _run_until_settled(env2, tmp_path / "second.log", expected)
    dead = [orjson.loads(r.value or b"{}")["reason"] for r in read_topic(bootstrap, s2.topic_deadletter)]
    assert "too_old" not in dead and "future" not in dead, dead

    def moved(iso: object) -> str:
        at = datetime.fromisoformat(str(iso)) + result.shift
        return at.isoformat().replace("+00:00", "Z")

    assert set(shifted) == {(area, moved(ws)) for area, ws in original}
    differ = []
    for (area, ws), v in original.items():
        want = {**v, "window_start": moved(v["window_start"]), "window_end": moved(v["window_end"])}
        got = shifted[(area, moved(ws))]
        # revision counts the corrections this run happened to emit, not a property of the data
        want.pop("revision"), got.pop("revision")  # type: ignore[attr-defined]
        if got != want:
            differ.append((area, ws, got, want))
    assert not differ, f"{len(differ)} of {len(original)} differ, e.g. {differ[:2]}"
    print(
        f"\n[replay] {sum(result.sent.values())} records {result.describe_shift()}; "
        f"{len(original)} area-windows equal to last month's run"
    )
