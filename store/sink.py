"""``gridwatch store``: the lineloss, alerts, inspections and topology topics into PostgreSQL.

One consumer group; each batch of records is validated here, copied into a temporary table
(COPY) and upserted from it in one transaction; offsets are committed only after that
transaction committed. A row is replaced only by a record from a later position of its topic,
so replaying any records (at-least-once, a restart, a SIGKILL) leaves exactly the topic's latest
state in the table (docs/store.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import CollectorRegistry, start_http_server
from psycopg_pool import ConnectionPool

from models.inspections import Inspection
from store import schema
from streams.contracts import Alert, LineLossRecord, decode_topology
from streams.kafkaio import create_topics, kafka_client_kwargs, security_kwargs
from streams.masking import MeterMask
from streams.metrics import StoreMetrics
from streams.settings import Settings
from streams.topics import topic_specs

log = logging.getLogger("gridwatch.store")

_lineloss = msgspec.json.Decoder(LineLossRecord)
_alert = msgspec.json.Decoder(Alert)


class Rejected(ValueError):
    """A record the store cannot use; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# ---- pure: one record to one row of the staging table ------------------------------------------


# A lineloss row in COPY text format: the table's columns, then the record's topic position.
LinelossLine = tuple[int, int, bytes, bytes]  # partition, offset, line, the record


@dataclass
class Batch:
    """A batch's records ready to write: lineloss results as typed COPY lines, latest per
    area-window; other records as JSON staging rows; the refused ones with their reason."""

    lineloss: dict[tuple[str, int, float], LinelossLine] = field(default_factory=dict)
    rows: list[tuple[str, int, int, int, bytes, str]] = field(default_factory=list)
    rejected: list[tuple[str, int, int, str, str, bytes]] = field(default_factory=list)
    expired: dict[str, int] = field(default_factory=dict)
    days: set[date] = field(default_factory=set)
    oldest_ms: int | None = None
    stored: dict[str, int] = field(default_factory=dict)  # records accepted, by kind


def _time(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise Rejected("schema", f"not an RFC 3339 time: {text[:40]!r}") from None
    if ts.tzinfo is None:
        raise Rejected("schema", f"time without offset: {text[:40]!r}")
    return ts


def _text(value: str) -> str:
    """A text field for COPY text format."""
    if value.isprintable() and "\\" not in value:  # no tab, line end or backslash: as it is
        return value
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _num(x: float | None) -> str:
    return "\\N" if x is None else repr(x)


def lineloss_line(rec: LineLossRecord, partition: int, offset: int, ts_ms: int) -> bytes:
    """One lineloss row in COPY text format (the columns of LINELOSS_COPY)."""
    ints = (rec.window_s, rec.customers_expected, rec.customers_reported, rec.supplies_expected,
            rec.supplies_reported, rec.rollbacks, rec.revision)  # fmt: skip
    if min(ints) < 0 or max(ints) >= 2**31:
        raise Rejected("schema", "a count is out of range")
    return (  # area ids match the contract's id pattern: nothing to escape
        f"{rec.area_id}\t{_text(rec.area_class)}\t{rec.window_start}\t{rec.window_end}\t{rec.window_s}\t"
        f"{rec.state}\t{rec.supply_kwh!r}\t{rec.sales_kwh!r}\t{rec.loss_kwh!r}\t{_num(rec.loss_rate)}\t"
        f"{rec.completeness!r}\t{rec.customers_expected}\t{rec.customers_reported}\t"
        f"{rec.supplies_expected}\t{rec.supplies_reported}\t{rec.lower!r}\t{rec.upper!r}\t{rec.rollbacks}\t"
        f"{rec.revision}\t{partition}\t{offset}\t{ts_ms}\n"
    ).encode()


def check(kind: str, value: bytes | None, mask: MeterMask) -> tuple[str, LineLossRecord | None]:
    """Validate one record; return the staging row's aux field (the meter id alerts use, for
    verdicts and archive records) and, for a lineloss record, the decoded record."""
    if not value:
        raise Rejected("empty", "record has no value")
    if b"\\u0000" in value:  # PostgreSQL's jsonb has no NUL character
        raise Rejected("nul", "a string holds \\u0000")
    try:
        if kind == "lineloss":
            return "", _lineloss.decode(value)
        if kind == "alert":
            _alert.decode(value)
            return "", None
        if kind == "topology":
            return mask.meter(decode_topology(value).meter_id), None
        verdict = Inspection.from_dict(orjson.loads(value))
        kwh = verdict.recovered_kwh
        if kwh is not None and not (math.isfinite(kwh) and 0 <= kwh <= 1e9):
            raise Rejected("inspection", f"recovered_kwh {kwh} is not a finite kWh >= 0")
        return mask.meter(verdict.meter), None
    except Rejected:
        raise
    except msgspec.ValidationError as exc:
        raise Rejected("schema", str(exc)) from None
    except (msgspec.DecodeError, orjson.JSONDecodeError) as exc:
        raise Rejected("json", str(exc)) from None
    except Exception as exc:  # InvalidRecord, KeyError, ValueError, TypeError from the parsers
        raise Rejected(kind if kind == "inspection" else "schema", str(exc) or type(exc).__name__) from None


def build_batch(
    records: Iterable[tuple[str, int, int, int, bytes | None]], mask: MeterMask, oldest_kept: date
) -> Batch:
    """(kind, partition, offset, timestamp ms, value) records, in topic order, into a Batch.

    Of several results for one area-window the batch keeps the one latest in its topic (the
    table keeps the same one: see UPSERT_LINELOSS); results whose window starts before
    ``oldest_kept`` are counted as expired, not written."""
    b = Batch()
    days: dict[float, date] = {}
    for kind, partition, offset, ts_ms, value in records:
        try:
            aux, rec = check(kind, value, mask)
            if rec is not None:
                start = _time(rec.window_start).timestamp()
                _time(rec.window_end)
                day = days.get(start // 86400)
                if day is None:
                    day = days[start // 86400] = datetime.fromtimestamp(start, UTC).date()
                if day < oldest_kept:
                    b.expired[kind] = b.expired.get(kind, 0) + 1
                    continue
                key = (rec.area_id, rec.window_s, start)
                line = lineloss_line(rec, partition, offset, ts_ms)
                held = b.lineloss.get(key)
                if held is None or held[0] != partition or held[1] < offset:
                    b.lineloss[key] = (partition, offset, line, value or b"")
                b.days.add(day)
            else:
                assert value is not None
                b.rows.append((kind, partition, offset, ts_ms, value, aux))
        except Rejected as exc:
            b.rejected.append((kind, partition, offset, exc.reason, exc.detail[:500], value or b""))
            continue
        b.stored[kind] = b.stored.get(kind, 0) + 1
        b.oldest_ms = ts_ms if b.oldest_ms is None else min(b.oldest_ms, ts_ms)
    return b


def copy_text(rows: Iterable[tuple[str, int, int, int, bytes, str]]) -> bytes:
    """The JSON staging rows in COPY text format (backslash, tab and line ends escaped).

    >>> copy_text([("alert", 0, 7, 1000, b'{"a":"x\\\\ty"}', "")])
    b'alert\\t0\\t7\\t1000\\t{"a":"x\\\\\\\\ty"}\\t\\n'
    """
    out = bytearray()
    for kind, partition, offset, ts_ms, value, aux in rows:
        v = value.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        out += f"{kind}\t{partition}\t{offset}\t{ts_ms}\t".encode()
        out += v
        out += b"\t" + _text(aux).encode() + b"\n"
    return bytes(out)


# ---- SQL: staging table to the tables --------------------------------------------------------

STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS staging (kind text, src_partition integer, src_offset bigint,"
    " src_ms bigint, value jsonb, aux text) ON COMMIT DELETE ROWS"
)
_LATER = (
    "(t.src_partition = excluded.src_partition AND t.src_offset < excluded.src_offset)"
    " OR (t.src_partition <> excluded.src_partition AND t.src_ts <= excluded.src_ts)"
)

LINELOSS_COLUMNS = (
    "area_id",
    "area_class",
    "window_start",
    "window_end",
    "window_s",
    "state",
    "supply_kwh",
    "sales_kwh",
    "loss_kwh",
    "loss_rate",
    "completeness",
    "customers_expected",
    "customers_reported",
    "supplies_expected",
    "supplies_reported",
    "lower_bound",
    "upper_bound",
    "rollbacks",
    "revision",
)
_LINELOSS_KEY = ("area_id", "window_s", "window_start")
STAGING_LINELOSS = (
    "CREATE TEMP TABLE IF NOT EXISTS staging_lineloss ON COMMIT DELETE ROWS AS"
    f" SELECT {', '.join(LINELOSS_COLUMNS)}, src_partition, src_offset, 0::bigint AS src_ms"
    " FROM lineloss WITH NO DATA"
)
LINELOSS_COPY = (
    f"COPY staging_lineloss ({', '.join(LINELOSS_COLUMNS)}, src_partition, src_offset, src_ms) FROM STDIN"
)
# A row is replaced only by a record from a later position of the topic: a later offset of the
# same partition, or (the topic was repartitioned) a record produced later.
UPSERT_LINELOSS = f"""
INSERT INTO lineloss AS t ({", ".join(LINELOSS_COLUMNS)}, src_partition, src_offset, src_ts, stored_at)
SELECT {", ".join(LINELOSS_COLUMNS)}, src_partition, src_offset, to_timestamp(src_ms / 1000.0),
       clock_timestamp()
  FROM staging_lineloss
ON CONFLICT (area_id, window_s, window_start) DO UPDATE SET
       {", ".join(f"{c} = excluded.{c}" for c in LINELOSS_COLUMNS if c not in _LINELOSS_KEY)},
       src_partition = excluded.src_partition, src_offset = excluded.src_offset,
       src_ts = excluded.src_ts, stored_at = excluded.stored_at
 WHERE {_LATER}
"""

UPSERT_METERS = f"""
INSERT INTO meters AS t (meter_id, alert_meter_id, area_id, role, multiplier, customer_class, active,
                         effective_from, src_partition, src_offset, src_ts)
SELECT DISTINCT ON (r.meter_id) r.meter_id, s.aux, r.area_id, r.role, r.multiplier, r.customer_class,
       r.active, r.effective_from, s.src_partition, s.src_offset, to_timestamp(s.src_ms / 1000.0)
  FROM staging s, jsonb_to_record(s.value) AS r(meter_id text, area_id text, role text,
       multiplier float8, customer_class text, active boolean, effective_from timestamptz)
 WHERE s.kind = 'topology'
 ORDER BY r.meter_id, s.src_offset DESC
ON CONFLICT (meter_id) DO UPDATE SET alert_meter_id = excluded.alert_meter_id, area_id = excluded.area_id,
       role = excluded.role, multiplier = excluded.multiplier, customer_class = excluded.customer_class,
       active = excluded.active, effective_from = excluded.effective_from,
       src_partition = excluded.src_partition, src_offset = excluded.src_offset, src_ts = excluded.src_ts
 WHERE {_LATER}
"""

_ALERT_FROM = """
  FROM staging s CROSS JOIN LATERAL jsonb_to_record(s.value) AS r(id text, type text, severity text,
       entity_kind text, entity_id text, window_start timestamptz, score float8, evidence jsonb,
       event text, at timestamptz)
  LEFT JOIN meters m ON r.entity_kind = 'meter' AND m.alert_meter_id = r.entity_id
  LEFT JOIN tariffs tf ON tf.customer_class = m.customer_class
"""
_ALERT_AREA = (
    "coalesce(CASE WHEN r.entity_kind = 'area' THEN r.entity_id END, r.evidence ->> 'area_id',"
    " r.evidence ->> 'recorded_area', m.area_id)"
)
UPSERT_ALERTS_OPENED = f"""
INSERT INTO alerts AS t (alert_id, type, severity, entity_kind, entity_id, area_id, window_start,
                         opened_at, score, evidence, customer_class, exposure_yuan, src_ts, stored_at)
SELECT DISTINCT ON (r.id) r.id, r.type, r.severity, r.entity_kind, r.entity_id, {_ALERT_AREA},
       r.window_start, r.at, r.score, r.evidence, m.customer_class,
       CASE WHEN r.type = 'meter_arrears_risk'
            THEN greatest((r.evidence ->> 'expected_kwh')::float8, 0) * %(period_intervals)s
                 * coalesce(tf.yuan_per_kwh, %(default_tariff)s) END,
       to_timestamp(s.src_ms / 1000.0), clock_timestamp()
{_ALERT_FROM}
 WHERE s.kind = 'alert' AND r.event = 'opened'
 ORDER BY r.id, s.src_offset DESC
ON CONFLICT (alert_id) DO UPDATE SET type = excluded.type, severity = excluded.severity,
       entity_kind = excluded.entity_kind, entity_id = excluded.entity_id,
       area_id = coalesce(excluded.area_id, t.area_id), window_start = excluded.window_start,
       opened_at = excluded.opened_at, score = greatest(t.score, excluded.score),
       evidence = excluded.evidence, customer_class = coalesce(excluded.customer_class, t.customer_class),
       exposure_yuan = excluded.exposure_yuan, src_ts = greatest(t.src_ts, excluded.src_ts),
       stored_at = excluded.stored_at
"""
UPSERT_ALERTS_RESOLVED = f"""
INSERT INTO alerts AS t (alert_id, type, severity, entity_kind, entity_id, area_id, window_start,
                         resolved_at, score, evidence, resolution, customer_class, src_ts, stored_at)
SELECT DISTINCT ON (r.id) r.id, r.type, r.severity, r.entity_kind, r.entity_id, {_ALERT_AREA},
       r.window_start, r.at, r.score, r.evidence, r.evidence, m.customer_class,
       to_timestamp(s.src_ms / 1000.0), clock_timestamp()
{_ALERT_FROM}
 WHERE s.kind = 'alert' AND r.event = 'resolved'
 ORDER BY r.id, s.src_offset DESC
ON CONFLICT (alert_id) DO UPDATE SET resolved_at = excluded.resolved_at, resolution = excluded.resolution,
       score = greatest(t.score, excluded.score), area_id = coalesce(t.area_id, excluded.area_id),
       src_ts = greatest(t.src_ts, excluded.src_ts), stored_at = excluded.stored_at
"""
UPSERT_INSPECTIONS = f"""
INSERT INTO inspections AS t (meter_id, inspected_on, alert_meter_id, area_id, verdict, recovered_kwh,
                              customer_class, yuan_per_kwh, recovered_yuan, src_partition, src_offset,
                              src_ts, stored_at)
SELECT DISTINCT ON (r.meter, r.date) r.meter, r.date, s.aux, m.area_id, r.verdict,
       coalesce(r.recovered_kwh, 0), m.customer_class, coalesce(tf.yuan_per_kwh, %(default_tariff)s),
       coalesce(r.recovered_kwh, 0) * coalesce(tf.yuan_per_kwh, %(default_tariff)s),
       s.src_partition, s.src_offset, to_timestamp(s.src_ms / 1000.0), clock_timestamp()
  FROM staging s CROSS JOIN LATERAL jsonb_to_record(s.value) AS r(meter text, date date, verdict text,
       recovered_kwh float8)
  LEFT JOIN meters m ON m.meter_id = r.meter
  LEFT JOIN tariffs tf ON tf.customer_class = m.customer_class
 WHERE s.kind = 'inspection'
 ORDER BY r.meter, r.date, s.src_offset DESC
ON CONFLICT (meter_id, inspected_on) DO UPDATE SET alert_meter_id = excluded.alert_meter_id,
       area_id = excluded.area_id, verdict = excluded.verdict, recovered_kwh = excluded.recovered_kwh,
       customer_class = excluded.customer_class, yuan_per_kwh = excluded.yuan_per_kwh,
       recovered_yuan = excluded.recovered_yuan, src_partition = excluded.src_partition,
       src_offset = excluded.src_offset, src_ts = excluded.src_ts, stored_at = excluded.stored_at
 WHERE {_LATER}
"""
INSERT_REJECTED = """
INSERT INTO rejected (topic, src_partition, src_offset, reason, detail, value)
VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""
# Meters first: verdicts and alerts of the same batch look their customer class up.
STATEMENTS = (
    ("meters", "topology", UPSERT_METERS),
    ("alerts", "alert", UPSERT_ALERTS_OPENED),
    ("alerts", "alert", UPSERT_ALERTS_RESOLVED),
    ("inspections", "inspection", UPSERT_INSPECTIONS),
)


@dataclass(frozen=True)
class WriteParams:
    default_tariff: float
    period_intervals: float  # metering intervals in one arrears period

    @classmethod
    def from_settings(cls, s: Settings) -> WriteParams:
        return cls(s.tariff_default_yuan_per_kwh, s.arrears_period_days * 86400 / s.interval_s)


def write(conn: psycopg.Connection[Any], batch: Batch, params: WriteParams) -> dict[str, int]:
    """Write one batch in one transaction; return rows written per table.

    Raises psycopg.DataError / IntegrityError when a record passed validation but PostgreSQL
    refuses it: :func:`write_isolating` then finds the record."""
    written: dict[str, int] = {}
    p = {"default_tariff": params.default_tariff, "period_intervals": params.period_intervals}
    with conn.transaction():
        # temporary tables live per session: made on a connection's first batch
        conn.execute(STAGING)
        conn.execute(STAGING_LINELOSS)
        # archive records first: verdicts and alerts of the same batch look their class up
        if batch.rows:
            with conn.cursor().copy(
                "COPY staging (kind, src_partition, src_offset, src_ms, value, aux) FROM STDIN"
            ) as copy:
                copy.write(copy_text(batch.rows))
            kinds = {r[0] for r in batch.rows}
            for table, kind, stmt in STATEMENTS:
                if kind in kinds:
                    cur = conn.execute(stmt.encode(), p)
                    written[table] = written.get(table, 0) + max(cur.rowcount, 0)
        if batch.lineloss:
            schema.ensure_partitions(conn, batch.days)
            with conn.cursor().copy(LINELOSS_COPY.encode()) as copy:
                copy.write(b"".join(held[2] for held in batch.lineloss.values()))
            cur = conn.execute(UPSERT_LINELOSS.encode())
            written["lineloss"] = max(cur.rowcount, 0)
        if batch.rejected:
            with conn.cursor() as cur:
                cur.executemany(INSERT_REJECTED, batch.rejected)
    return written


def write_isolating(conn: psycopg.Connection[Any], batch: Batch, params: WriteParams) -> dict[str, int]:
    """A batch PostgreSQL refused as a whole: write its records one by one, each refused one to
    the rejected table with the database's reason, so one bad record never stalls the store."""
    written: dict[str, int] = {}
    bad = []
    singles = [(r[0], r[1], r[2], r[4], Batch(rows=[r])) for r in batch.rows]
    singles += [
        ("lineloss", held[0], held[1], held[3], Batch(lineloss={key: held}, days=batch.days))
        for key, held in batch.lineloss.items()
    ]
    for kind, partition, offset, value, one in singles:
        try:
            for table, n in write(conn, one, params).items():
                written[table] = written.get(table, 0) + n
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            detail = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
            bad.append((kind, partition, offset, "database", detail, value))
    write(conn, Batch(rejected=batch.rejected + bad), params)
    for kind, *_ in bad:
        batch.stored[kind] -= 1
    batch.rejected += bad
    return written


# ---- the service ------------------------------------------------------------------------------


def topic_kinds(s: Settings) -> dict[str, str]:
    return {
        s.topic_topology: "topology",
        s.topic_lineloss: "lineloss",
        s.topic_alerts: "alert",
        s.topic_inspections: "inspection",
    }


def open_pool(s: Settings, *, max_size: int = 2) -> ConnectionPool:
    pool = ConnectionPool(
        s.pg_dsn.get_secret_value(),
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={"application_name": "gridwatch-store"},
    )
    pool.open(wait=True, timeout=30)
    return pool


def setup_database(pool: ConnectionPool, s: Settings) -> int:
    """Migrate, price classes from configuration, and apply the retention once."""
    with pool.connection() as conn:
        version = schema.migrate(conn)
        with conn.transaction():
            schema.sync_tariffs(conn, s.tariff_yuan_per_kwh)
            schema.drop_expired(conn, oldest_kept(s))
    return version


def oldest_kept(s: Settings, now: datetime | None = None) -> date:
    return ((now or datetime.now(UTC)) - timedelta(days=s.store_retention_days)).date()


class StoreSink:
    """The consume-write-commit loop (one per process; run several for more partitions)."""

    def __init__(self, s: Settings, pool: ConnectionPool, metrics: StoreMetrics, mask: MeterMask) -> None:
        self.s, self.pool, self.metrics, self.mask = s, pool, metrics, mask
        self.kinds = topic_kinds(s)
        self.params = WriteParams.from_settings(s)
        self._retention_at = time.monotonic()

    def _write(self, batch: Batch) -> dict[str, int]:
        with self.pool.connection() as conn:
            try:
                return write(conn, batch, self.params)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                log.warning("batch refused by PostgreSQL (%s); writing it record by record", exc)
                return write_isolating(conn, batch, self.params)

    def _retention(self) -> None:
        with self.pool.connection() as conn, conn.transaction():
            dropped = schema.drop_expired(conn, oldest_kept(self.s))
        if dropped:
            log.info("retention: dropped %s", ", ".join(dropped))

    async def run(self, stop: asyncio.Event) -> None:
        s = self.s
        consumer = AIOKafkaConsumer(
            *self.kinds,
            group_id=s.store_group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.store_batch_records,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **kafka_client_kwargs(s),
        )
        await consumer.start()
        # One batch is written (in a thread) while the next is fetched and prepared here; writes
        # and commits stay in order, and a batch's offsets are committed after its transaction.
        writing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=200, max_records=s.store_batch_records)
                if fetched:
                    batch, offsets, n = self._prepare(fetched)
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._store(consumer, batch, offsets, n, stop))
                elif writing is not None and writing.done():
                    await writing
                    writing = None
                await self._update_lag(consumer)
                if time.monotonic() - self._retention_at > 3600:
                    self._retention_at = time.monotonic()
                    await asyncio.to_thread(self._retention)
            if writing is not None:
                await writing
        finally:
            await consumer.stop()

    def _prepare(
        self, fetched: dict[TopicPartition, list[Any]]
    ) -> tuple[Batch, dict[TopicPartition, int], int]:
        records = []
        offsets = {}
        for tp, msgs in fetched.items():
            kind = self.kinds[tp.topic]
            records += [(kind, tp.partition, m.offset, m.timestamp, m.value) for m in msgs]
            offsets[tp] = msgs[-1].offset + 1
        return build_batch(records, self.mask, oldest_kept(self.s)), offsets, len(records)

    async def _store(
        self,
        consumer: AIOKafkaConsumer,
        batch: Batch,
        offsets: dict[TopicPartition, int],
        n: int,
        stop: asyncio.Event,
    ) -> None:
        began = time.monotonic()
        retry = 0
        while True:
            try:
                written = await asyncio.to_thread(self._write, batch)
                break
            except (
                psycopg.OperationalError,
                psycopg.InterfaceError,
                psycopg.errors.AdminShutdown,
                TimeoutError,
            ) as exc:
                # The database is away: keep the batch, do not commit, try again.
                self.metrics.write_errors.inc()
                retry += 1
                log.error("writing a batch of %d records failed (%s); retry %d", n, exc, retry)
                if stop.is_set():
                    return
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(retry, 6)))
        try:
            await consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("offset commit failed (%s): the new owner rewrites the same rows", exc)
        now = time.time()
        self.metrics.batch_seconds.observe(time.monotonic() - began)
        if batch.oldest_ms is not None:
            self.metrics.delay_seconds.observe(max(0.0, now - batch.oldest_ms / 1000))
        for table, n in written.items():
            self.metrics.rows_written.labels(table=table).inc(n)
        for kind, n in batch.stored.items():
            self.metrics.records.labels(kind=kind, outcome="stored").inc(n)
        for kind, n in batch.expired.items():
            self.metrics.records.labels(kind=kind, outcome="expired").inc(n)
        for r in batch.rejected:
            self.metrics.records.labels(kind=r[0], outcome="rejected").inc()
            log.warning("rejected %s[%d]@%d: %s: %s", r[0], r[1], r[2], r[3], r[4][:200])

    async def _update_lag(self, consumer: AIOKafkaConsumer) -> None:
        lag = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                pos = await consumer.position(tp)
            except IllegalStateError:
                continue
            lag += max(0, high - pos)
        self.metrics.lag.set(lag)


def run_store(s: Settings) -> None:
    """Run ``gridwatch store`` in the foreground until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    mask = MeterMask.from_settings(s)
    create_topics(s.bootstrap, topic_specs(s), **security_kwargs(s))
    registry = CollectorRegistry()
    metrics = StoreMetrics(registry)
    if s.store_metrics_port:
        start_http_server(s.store_metrics_port, addr=s.metrics_host, registry=registry)
    pool = open_pool(s)
    try:
        version = setup_database(pool, s)
        topics = ", ".join(topic_kinds(s))
        log.info("schema version %d; consuming %s as %s", version, topics, s.store_group_id)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await StoreSink(s, pool, metrics, mask).run(stop)

        asyncio.run(main())
    finally:
        pool.close()
