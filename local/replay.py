"""Record topics to a file and replay them: same keys, values, timestamps, headers, partitions.

The file is JSON lines (gzip when its name ends in ``.gz``). Line 1 is a header::

    {"format": "gridwatch-record", "version": 1,
     "topics": {"<name>": {"partitions": 4, "records": 1234,
                           "config": {"cleanup.policy": "compact"}}, ...}}

(``config``: the topic's own settings, when the broker let us read them; replay creates a missing
destination topic with them and the partition count.)

then one line per record::

    {"topic": "...", "partition": 0, "offset": 17, "timestamp_ms": 1767225600000,
     "timestamp_type": 0, "key": "<base64>" | null, "value": "<base64>" | null,
     "headers": [["name", "<base64>"], ...]}          (headers only when present)

Records are merged across partitions by timestamp, each partition keeping its offset order, so
a replay at the original pace reads the file once, front to back. Everything up to the end
offsets seen when recording starts is recorded; later records are not.

A replay can move the recording in time (``shift``): every event time in the values (the
contracts' ``ts``, ``effective_from``, ``window_start``, ``window_end``), a key's ``|time``
suffix that is one of them (topology and line-loss keys), and the Kafka timestamp move by one
offset, a whole number of windows, so a recording older than the worker's too-old limit is
accepted and every reading keeps its place in its window.
"""

from __future__ import annotations

import base64
import gzip
import heapq
import io
import logging
import re
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

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


# ---- progress -------------------------------------------------------------------------------


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = f"{task.speed:,.0f} records/s" if task.speed else "- records/s"
        return Text(rate, style="progress.data.speed")


def progress_bars(console: Console | None = None) -> Progress:
    """Bars for ``record`` and ``replay`` on stderr (records done, rate, time left); off when
    stderr is not a terminal, so piped output and logs stay clean."""
    console = console or Console(stderr=True)
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


Advance = Callable[[int], None]


def _bar(
    progress: Progress | None, description: str, total: int | None
) -> tuple[Advance, Callable[[], None]]:
    """(advance by n, mark done) for one phase; no-ops without a progress display."""
    if progress is None:
        return (lambda n: None), (lambda: None)
    task = progress.add_task(description, total=total)

    def done() -> None:
        # compacted topics have offset gaps: the bar ends full although fewer records came
        progress.update(task, total=progress.tasks[task].completed)

    return (lambda n: progress.advance(task, n)), done


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
    bootstrap: str,
    topics: list[str],
    out: Path,
    *,
    timeout_s: float = 10.0,
    progress: Progress | None = None,
    **kw: Any,
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
            configs = _topic_configs(bootstrap, topics, timeout_s, **kw)
            tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t))]
            counts = _dump(consumer, tps, Path(tmp.name), timeout_s, progress)
            header = {
                "format": FORMAT,
                "version": VERSION,
                "topics": {
                    t: {"partitions": partitions[t], "records": counts[t]}
                    | ({"config": configs[t]} if t in configs else {})
                    for t in topics
                },
            }
            advance, done = _bar(progress, "writing", sum(counts.values()))
            try:
                with _open_write(out) as f:
                    f.write(orjson.dumps(header) + b"\n")
                    streams = [_spooled(Path(tmp.name) / str(i), i) for i in range(len(tps))]
                    for _, _, line in heapq.merge(*streams):
                        f.write(line)
                        advance(1)
                done()
            except OSError as exc:
                raise ReplayError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        consumer.close()
    return counts


def _topic_configs(
    bootstrap: str, topics: list[str], timeout_s: float, **kw: Any
) -> dict[str, dict[str, str]]:
    """Each topic's own settings (set on the topic, not inherited from the broker); topics the
    broker will not describe (no DescribeConfigs permission) are left out: a replay then
    creates them with the broker's defaults."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000), **kw)
    except (KafkaError, OSError, ValueError):
        return {}
    out: dict[str, dict[str, str]] = {}
    try:
        for topic in topics:
            try:
                found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            except (KafkaError, OSError, ValueError):
                continue
            entries = found.get("topic", {}).get(topic, {}) if isinstance(found, dict) else {}
            out[topic] = {
                name: str(e["value"])
                for name, e in sorted(entries.items())
                if e.get("config_source") == "DYNAMIC_TOPIC_CONFIG" and not e.get("is_sensitive")
            }
    finally:
        admin.close()
    return out


def _dump(
    consumer: KafkaConsumer,
    tps: list[TopicPartition],
    tmp: Path,
    timeout_s: float,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Each partition into its own spool file (``timestamp<TAB>line``), up to its end offset."""
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    begin = consumer.beginning_offsets(tps)
    advance, done = _bar(progress, "recording", sum(end[tp] - begin[tp] for tp in tps))
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
                    advance(1)
                if recs:
                    progress = time.monotonic()
            for tp in list(pending):
                if consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
            if pending and time.monotonic() - progress > timeout_s:
                tp = min(pending, key=lambda t: (t.topic, t.partition))
                raise ReplayError(f"reading {tp.topic}[{tp.partition}] stalled for {timeout_s:.0f}s")
        done()
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


# ---- time shift -----------------------------------------------------------------------------

# The contracts' event-time fields (streams/contracts.py). Processing times (``at``) and the
# original bytes inside dead letters are left as recorded.
EVENT_FIELDS = ("ts", "effective_from", "window_start", "window_end")

_DURATION = re.compile(r"([+-])?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``-2h``, ``1w2d``, ``90m``, ``3600s`` or plain seconds; ValueError otherwise.

    >>> parse_duration("30d12h"), parse_duration("-900")
    (datetime.timedelta(days=30, seconds=43200), datetime.timedelta(days=-1, seconds=85500))
    """
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return timedelta(seconds=int(text))
    m = _DURATION.fullmatch(text)
    if not text or m is None or not any(m.groups()[1:]):
        raise ValueError(f"{text!r} is not a duration (examples: 30d, -2h, 1w2d, 90m, 3600s)")
    w, d, h, mi, s = (int(g or 0) for g in m.groups()[1:])
    out = timedelta(weeks=w, days=d, hours=h, minutes=mi, seconds=s)
    return -out if m.group(1) == "-" else out


def parse_instant(text: str, now: datetime | None = None) -> datetime:
    """``now`` or an RFC 3339 / ISO 8601 time with an offset; ValueError otherwise."""
    if text.strip().lower() == "now":
        return now or datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not 'now' or an ISO 8601 time (e.g. 2026-03-01T00:00Z)") from None
    if at.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (add Z or +08:00)")
    return at


def _instant(text: object) -> datetime | None:
    if not isinstance(text, str) or len(text) < 16:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


def _moved(text: str, at: datetime, offset: timedelta) -> str:
    """``at + offset`` written as ``text`` was (its UTC offset, ``Z`` kept)."""
    out = (at + offset).isoformat()
    return out.replace("+00:00", "Z") if text.endswith("Z") else out


def event_times(value: bytes | None) -> dict[str, datetime]:
    """The event-time fields of a JSON object value (none for anything else)."""
    if not value or value[:1] != b"{":
        return {}
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {name: at for name in EVENT_FIELDS if (at := _instant(doc.get(name))) is not None}


def shift_record(r: Recorded, offset: timedelta, *, latest_ms: int) -> Recorded:
    """``r`` moved by ``offset``: its value's event times, a key ``id|time`` whose time is one of
    them (ISO or epoch seconds: topology and line-loss keys), and its Kafka timestamp, which
    is never moved past ``latest_ms`` (a record written long after its event, e.g. a bulk load,
    would otherwise land in the future). A value that is not a JSON object, malformed ones
    included, keeps its bytes."""
    timestamp_ms = min(r.timestamp_ms + offset // timedelta(milliseconds=1), latest_ms)
    times = event_times(r.value)
    if not times:
        return replace(r, timestamp_ms=timestamp_ms)
    doc = orjson.loads(r.value or b"{}")
    for name, at in times.items():
        doc[name] = _moved(doc[name], at, offset)
    key = r.key
    if key is not None and b"|" in key:
        head, _, tail = key.rpartition(b"|")
        text = tail.decode("utf-8", "replace")
        at = _instant(text)
        if at is not None and at in times.values():
            key = head + b"|" + _moved(text, at, offset).encode()
        elif text.isdigit() and any(int(v.timestamp()) == int(text) for v in times.values()):
            key = head + b"|" + str(int(text) + int(offset.total_seconds())).encode()
    return replace(r, key=key, value=orjson.dumps(doc), timestamp_ms=timestamp_ms)


def shift_offset(last_event: datetime, *, to: datetime, align_s: int) -> timedelta:
    """The offset that moves ``last_event`` to ``to`` or at most ``align_s`` before it, in
    whole ``align_s`` (the window): readings stay on the metering grid and in their window.

    >>> shift_offset(datetime(2026, 1, 1, 0, 45, tzinfo=UTC), to=datetime(2026, 2, 1, 10, 7, tzinfo=UTC),
    ...              align_s=900)
    datetime.timedelta(days=31, seconds=33300)
    """
    seconds = int((to - last_event).total_seconds())
    return timedelta(seconds=seconds // align_s * align_s)


def _fmt_offset(offset: timedelta) -> str:
    sign, s = ("-" if offset < timedelta(0) else "+"), abs(int(offset.total_seconds()))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{n}{u}" for n, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if n]
    return sign + ("".join(parts) or "0s")


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
    created: list[str] = field(default_factory=list)  # destination topics that were missing
    shift: timedelta = timedelta(0)  # added to every event time and Kafka timestamp
    last_event: datetime | None = None  # the recording's last event time, after the shift

    def describe_shift(self) -> str:
        if not self.shift:
            return ""
        last = f", last event now {self.last_event.isoformat()}" if self.last_event else ""
        return f"shifted by {_fmt_offset(self.shift)}{last}"


def replay(
    bootstrap: str,
    path: Path,
    *,
    rename: Mapping[str, str] | None = None,
    speed: float = 0.0,
    shift_to: datetime | None = None,
    shift_by: timedelta | None = None,
    align_s: int = 1,
    timeout_s: float = 10.0,
    progress: Progress | None = None,
    **kw: Any,
) -> ReplayResult:
    """Write a recording back: same keys, values, timestamps and headers, to the same partition
    when the destination has it; a missing destination topic is created with the source's
    partition count and settings. ``speed`` 0 sends as fast as possible, N at N x the recorded
    pace (by record timestamps).

    ``shift_to`` moves the recording so its last event lands there (at most ``align_s``
    before); ``shift_by`` moves it by that much, which must be a whole number of ``align_s``.
    Pass the worker's window as ``align_s``."""
    from streams.kafkaio import KafkaUnavailable, create_topics, producer
    from streams.topics import TopicSpec

    if shift_to is not None and shift_by is not None:
        raise ReplayError("give --shift-to or --shift-by, not both")
    if shift_by is not None and shift_by.total_seconds() % align_s:
        raise ReplayError(
            f"--shift-by {_fmt_offset(shift_by)} is not a whole number of windows ({align_s} s): "
            "readings would leave their place in the window"
        )
    rename = dict(rename or {})
    header = _read_header(path)
    unknown = set(rename) - set(header["topics"])
    if unknown:
        raise ReplayError(f"--rename names topic(s) not in {path}: {', '.join(sorted(unknown))}")
    # Check every line before sending anything: a bad file must not half-replay. The same pass
    # finds the last event time the shift is measured from.
    listed = sum(int(v.get("records", 0)) for v in header["topics"].values() if isinstance(v, dict))
    advance, done = _bar(progress, "checking", listed or None)
    count, last_event, last_ts = 0, None, None
    for r in _records(path):
        if r.topic not in header["topics"]:
            raise ReplayError(f"{path}: record of topic {r.topic!r} not listed in the header")
        if r.key is None and r.value is None:
            where = f"{r.topic}[{r.partition}]@{r.offset}"
            raise ReplayError(f"{path}: {where} has neither key nor value (kafka-python cannot send it)")
        count += 1
        advance(1)
        if shift_to is not None or shift_by is not None:
            last_ts = max(last_ts or r.timestamp_ms, r.timestamp_ms)
            for at in event_times(r.value).values():
                last_event = at if last_event is None else max(last_event, at)
    done()
    if last_event is None and last_ts is not None:
        # no event time in any value (not gridwatch's topics): the Kafka timestamps are the events
        last_event = datetime.fromtimestamp(last_ts / 1000, UTC)
    offset = shift_by or timedelta(0)
    if shift_to is not None and last_event is not None:
        offset = shift_offset(last_event, to=shift_to, align_s=align_s)
    if last_event is not None:
        last_event += offset
    dest = {t: rename.get(t, t) for t in header["topics"]}
    consumer = _consumer(bootstrap, timeout_s, **kw)
    try:
        try:
            existing = consumer.topics()
        except KafkaError as exc:
            raise ReplayError(f"cannot list topics at {bootstrap} ({exc.__class__.__name__})") from None
        missing: dict[str, TopicSpec] = {}
        for src, topic in dest.items():
            info = header["topics"][src] if isinstance(header["topics"][src], dict) else {}
            if topic not in existing and topic not in missing:
                parts, config = int(info.get("partitions") or 1), dict(info.get("config") or {})
                missing[topic] = TopicSpec(topic, parts, config)
        created = []
        if missing:
            try:
                created = create_topics(
                    bootstrap,
                    missing.values(),
                    timeout=max(timeout_s, 30.0),
                    bootstrap_timeout_ms=int(timeout_s * 1000),
                    **kw,
                )
            except (KafkaUnavailable, KafkaError, OSError) as exc:
                names = ", ".join(sorted(missing))
                raise ReplayError(f"cannot create topic(s) {names} at {bootstrap}: {exc}") from None
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
    result = ReplayResult({t: 0 for t in sorted(set(dest.values()))}, 0, created, offset, last_event)
    pace = _Pace(speed)
    latest_ms = int(time.time() * 1000)
    advance, done = _bar(progress, "sending", count)
    try:
        for r in _records(path):
            topic = dest[r.topic]
            partition: int | None = r.partition
            if r.partition >= partitions[topic]:
                partition = None
                result.repartitioned += 1
            pace.wait(r.timestamp_ms)
            if offset:
                r = shift_record(r, offset, latest_ms=max(latest_ms, r.timestamp_ms))
            prod.send(
                topic,
                key=r.key,
                value=r.value,
                partition=partition,
                timestamp_ms=r.timestamp_ms,
                headers=list(r.headers) or None,
            ).add_errback(errors.append)
            result.sent[topic] += 1
            advance(1)
            if errors:
                break
        prod.flush(timeout=max(timeout_s, 30.0))
        done()
    except KafkaError as exc:
        raise ReplayError(f"replay to {bootstrap} failed: {exc}") from None
    finally:
        prod.close(timeout=5)
    if errors:
        raise ReplayError(f"replay to {bootstrap} failed: {errors[0]}")
    return result
