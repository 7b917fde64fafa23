"""Record topics to a file and replay them: same keys, values, timestamps, headers, partitions.

The file is JSON lines (gzip when its name ends in ``.gz``). Line 1 is a header::

    {"format": "gridwatch-record", "version": 1,
     "topics": {"<name>": {"partitions": 4, "records": 1234}, ...}}

then one line per record::

    {"topic": "...", "partition": 0, "offset": 17, "timestamp_ms": 1767225600000,
     "timestamp_type": 0, "key": "<base64>" | null, "value": "<base64>" | null,
     "headers": [["name", "<base64>"], ...]}          (headers only when present)

Records are merged across partitions by timestamp, each partition keeping its offset order, so
a replay at the original pace reads the file once, front to back. Everything up to the end
offsets seen when recording starts is recorded; later records are not.
"""

from __future__ import annotations

import base64
import gzip
import heapq
import io
import logging
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

FORMAT = "gridwatch-record"
VERSION = 1


class ReplayError(RuntimeError):
    """A problem the user can fix; the message is one line."""


@dataclass(frozen=True, slots=True)
class Recorded:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_type: int = 0  # 0 CreateTime, 1 LogAppendTime


def quiet_kafka_logs() -> None:
    """kafka-python logs connection failures itself; the command says it once, in one line."""
    logging.getLogger("kafka").setLevel(logging.CRITICAL)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def encode_line(r: Recorded) -> bytes:
    d: dict[str, Any] = {
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp_ms": r.timestamp_ms,
        "timestamp_type": r.timestamp_type,
        "key": _b64(r.key),
        "value": _b64(r.value),
    }
    if r.headers:
        d["headers"] = [[k, _b64(v)] for k, v in r.headers]
    return orjson.dumps(d)


def decode_line(line: bytes) -> Recorded:
    """Parse one record line; raises ValueError saying what is wrong."""
    try:
        d = orjson.loads(line)
        key, value = d["key"], d["value"]
        return Recorded(
            topic=str(d["topic"]),
            partition=int(d["partition"]),
            offset=int(d["offset"]),
            timestamp_ms=int(d["timestamp_ms"]),
            key=None if key is None else base64.b64decode(key, validate=True),
            value=None if value is None else base64.b64decode(value, validate=True),
            headers=tuple(
                (str(k), base64.b64decode(v or "", validate=True)) for k, v in d.get("headers", ())
            ),
            timestamp_type=int(d.get("timestamp_type", 0)),
        )
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"bad field ({exc})") from None


# ---- Kafka ----------------------------------------------------------------------------------


def _consumer(bootstrap: str, timeout_s: float, **kw: Any) -> KafkaConsumer:
    try:
        return KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=int(timeout_s * 1000),
            **kw,
        )
    except (KafkaError, OSError, ValueError) as exc:
        raise ReplayError(f"no Kafka broker reachable at {bootstrap} ({exc.__class__.__name__})") from None


def _partitions(consumer: KafkaConsumer, topics: Iterable[str], bootstrap: str) -> dict[str, int]:
    try:
        existing = consumer.topics()
    except KafkaError as exc:
        raise ReplayError(f"cannot list topics at {bootstrap} ({exc.__class__.__name__})") from None
    out = {}
    for topic in topics:
        parts = consumer.partitions_for_topic(topic) if topic in existing else None
        if not parts:
            raise ReplayError(f"topic {topic!r} does not exist at {bootstrap}")
        out[topic] = len(parts)
    return out


def _open_write(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.GzipFile(path, "wb", compresslevel=6, mtime=0)
    return path.open("wb")


def record(
    bootstrap: str, topics: list[str], out: Path, *, timeout_s: float = 10.0, **kw: Any
) -> dict[str, int]:
    """Dump ``topics`` from their beginning to their current end into ``out``; returns the
    number of records per topic."""
    if not topics:
        raise ReplayError("no topic to record")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.TemporaryDirectory(dir=out.parent, prefix=".record-")
    except OSError as exc:
        raise ReplayError(f"cannot write {out}: {exc.strerror or exc}") from None
    consumer = _consumer(bootstrap, timeout_s, **kw)
    try:
        with tmp:
            partitions = _partitions(consumer, topics, bootstrap)
            tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))]
            counts = _dump(consumer, tps, Path(tmp.name), timeout_s)
            header = {
                "format": FORMAT,
                "version": VERSION,
                "topics": {t: {"partitions": partitions[t], "records": counts[t]} for t in topics},
            }
            try:
                with _open_write(out) as f:
                    f.write(orjson.dumps(header) + b"\n")
                    streams = [_spooled(Path(tmp.name) / str(i), i) for i in range(len(tps))]
                    for _, _, line in heapq.merge(*streams):
                        f.write(line)
            except OSError as exc:
                raise ReplayError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        consumer.close()
    return counts


def _dump(consumer: KafkaConsumer, tps: list[TopicPartition], tmp: Path, timeout_s: float) -> dict[str, int]:
    """Each partition into its own spool file (``timestamp<TAB>line``), up to its end offset."""
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    index = {tp: i for i, tp in enumerate(tps)}
    counts = {tp.topic: 0 for tp in tps}
    files = [(tmp / str(i)).open("wb") for i in range(len(tps))]
    try:
        pending = {tp for tp in tps if consumer.position(tp) < end[tp]}
        progress = time.monotonic()
        while pending:
            polled = consumer.poll(timeout_ms=500, max_records=10_000)
            for tp, recs in polled.items():
                f = files[index[tp]]
                for r in recs:
                    if r.offset >= end[tp]:
                        continue
                    rec = Recorded(
                        tp.topic,
                        tp.partition,
                        r.offset,
                        r.timestamp,
                        r.key,
                        r.value,
                        tuple((k, v or b"") for k, v in (r.headers or ())),
                        r.timestamp_type,
                    )
                    f.write(b"%d\t%s\n" % (r.timestamp, encode_line(rec)))
                    counts[tp.topic] += 1
                if recs:
                    progress = time.monotonic()
            for tp in list(pending):
                if consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
            if pending and time.monotonic() - progress > timeout_s:
                tp = min(pending, key=lambda t: (t.topic, t.partition))
                raise ReplayError(f"reading {tp.topic}[{tp.partition}] stalled for {timeout_s:.0f}s")
    finally:
        for f in files:
            f.close()
    return counts


def _spooled(path: Path, i: int) -> Iterator[tuple[int, int, bytes]]:
    with path.open("rb") as f:
        for raw in f:
            ts, line = raw.split(b"\t", 1)
            yield int(ts), i, line


# ---- replay ---------------------------------------------------------------------------------


def read_recording(path: Path) -> tuple[dict[str, Any], Iterator[Recorded]]:
    """The header and a reader of the records; raises ReplayError naming the file and line."""
    header = _read_header(path)
    return header, _records(path)


def _open_read(path: Path) -> io.BufferedIOBase:
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")
        return path.open("rb")
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from None


def _read_header(path: Path) -> dict[str, Any]:
    with _open_read(path) as f:
        try:
            first = f.readline()
            header = orjson.loads(first)
        except (OSError, EOFError, zlib.error) as exc:
            raise ReplayError(f"cannot read {path}: {exc}") from None
        except orjson.JSONDecodeError:
            header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ReplayError(f"{path} is not a gridwatch recording (line 1 has no {FORMAT!r} header)")
    if header.get("version") != VERSION:
        raise ReplayError(
            f"{path}: recording version {header.get('version')!r}, this gridwatch reads {VERSION}"
        )
    if not isinstance(header.get("topics"), dict):
        raise ReplayError(f"{path}: header has no topics")
    return header


def _records(path: Path) -> Iterator[Recorded]:
    with _open_read(path) as f:
        n = 1
        try:
            f.readline()
            for n, line in enumerate(f, start=2):
                if not line.strip():
                    continue
                try:
                    yield decode_line(line)
                except ValueError as exc:
                    raise ReplayError(f"{path}:{n}: {exc}") from None
        except (OSError, EOFError, zlib.error) as exc:
            raise ReplayError(f"cannot read {path} after line {n}: {exc}") from None


class _Pace:
    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.origin: tuple[int, float] | None = None

    def wait(self, ts_ms: int) -> None:
        if self.speed <= 0:
            return
        if self.origin is None:
            self.origin = (ts_ms, time.monotonic())
        delay = self.origin[1] + (ts_ms - self.origin[0]) / 1000 / self.speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)


@dataclass
class ReplayResult:
    sent: dict[str, int]  # by destination topic
    repartitioned: int  # records whose partition does not exist there: placed by key instead


def replay(
    bootstrap: str,
    path: Path,
    *,
    rename: Mapping[str, str] | None = None,
    speed: float = 0.0,
    timeout_s: float = 10.0,
    **kw: Any,
) -> ReplayResult:
    """Write a recording back: same keys, values, timestamps and headers, to the same partition
    when the destination has it. ``speed`` 0 sends as fast as possible, N at N x the recorded
    pace (by record timestamps)."""
    from streams.kafkaio import KafkaUnavailable, producer

    rename = dict(rename or {})
    header = _read_header(path)
    unknown = set(rename) - set(header["topics"])
    if unknown:
        raise ReplayError(f"--rename names topic(s) not in {path}: {', '.join(sorted(unknown))}")
    # Check every line before sending anything: a bad file must not half-replay.
    for r in _records(path):
        if r.topic not in header["topics"]:
            raise ReplayError(f"{path}: record of topic {r.topic!r} not listed in the header")
        if r.key is None and r.value is None:
            where = f"{r.topic}[{r.partition}]@{r.offset}"
            raise ReplayError(f"{path}: {where} has neither key nor value (kafka-python cannot send it)")
    dest = {t: rename.get(t, t) for t in header["topics"]}
    consumer = _consumer(bootstrap, timeout_s, **kw)
    try:
        partitions = _partitions(consumer, sorted(set(dest.values())), bootstrap)
    finally:
        consumer.close()
    try:
        prod = producer(
            bootstrap,
            allow_auto_create_topics=False,
            bootstrap_timeout_ms=int(timeout_s * 1000),
            max_block_ms=int(timeout_s * 1000),
            **kw,
        )
    except (KafkaUnavailable, KafkaError, OSError) as exc:
        raise ReplayError(f"no Kafka broker reachable at {bootstrap} ({exc.__class__.__name__})") from None
    errors: list[BaseException] = []
    result = ReplayResult({t: 0 for t in sorted(set(dest.values()))}, 0)
    pace = _Pace(speed)
    try:
        for r in _records(path):
            topic = dest[r.topic]
            partition: int | None = r.partition
            if r.partition >= partitions[topic]:
                partition = None
                result.repartitioned += 1
            pace.wait(r.timestamp_ms)
            prod.send(
                topic,
                key=r.key,
                value=r.value,
                partition=partition,
                timestamp_ms=r.timestamp_ms,
                headers=list(r.headers) or None,
            ).add_errback(errors.append)
            result.sent[topic] += 1
            if errors:
                break
        prod.flush(timeout=max(timeout_s, 30.0))
    except KafkaError as exc:
        raise ReplayError(f"replay to {bootstrap} failed: {exc}") from None
    finally:
        prod.close(timeout=5)
    if errors:
        raise ReplayError(f"replay to {bootstrap} failed: {errors[0]}")
    return result
