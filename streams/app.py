"""The Faust worker: thin I/O around the line-loss engine.

Agents decode and validate records, send refusals to the dead-letter topic with a reason, hand
points to :class:`streams.engine.LineLossEngine`, and write results and metrics. State lives in a
changelogged Faust table, so a killed worker resumes where it stopped: offsets are committed only
after the producer (changelog and outputs) is flushed, and re-processing a record is idempotent.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP
from prometheus_client import CollectorRegistry, start_http_server

from archive import MeterArchive
from models.detection import Detection, window_intervals
from models.inspections import Inspection
from models.lineloss import LossResult
from models.windows import snap
from streams import contracts
from streams.chunks import Group, Prepared
from streams.contracts import InvalidRecord, Reading
from streams.engine import DIRECTED, REROUTED, ClosedWindow, LineLossEngine, Outcome, Point
from streams.kafkaio import (
    faust_broker_kwargs,
    group_offsets,
    kafka_client_kwargs,
    set_faust_fetch_wait,
)
from streams.masking import MeterMask
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topology_feed import TopologyFeed, customer_ids
from topology import MeterRecord, Role, Topology

log = logging.getLogger("gridwatch")

# One detector-state changelog value at most: the Faust producer refuses requests over 1,000,000
# bytes, and the key and JSON framing take the rest.
DETECTOR_STATE_MAX_BYTES = 990_000


def encode_detector_state(blob: bytes) -> dict[str, str] | None:
    """The table value of an area's detector snapshot, zlib-compressed (the ranker's one-byte
    bins and the detector rows shrink ~2x); None when it would not fit one changelog record.

    >>> v = encode_detector_state(b"state" * 1000)
    >>> sorted(v), decode_detector_state(v) == b"state" * 1000, len(v["z64"]) < 100
    (['z64'], True, True)
    >>> import random
    >>> encode_detector_state(random.Random(0).randbytes(800_000)) is None  # incompressible
    True
    """
    text = base64.b64encode(zlib.compress(blob, 1)).decode("ascii")
    return {"z64": text} if len(text) <= DETECTOR_STATE_MAX_BYTES else None


def decode_detector_state(value: dict[str, str]) -> bytes:
    """The snapshot bytes of a table value written by this or an earlier version."""
    if "z64" in value:
        return zlib.decompress(base64.b64decode(value["z64"]))
    return base64.b64decode(value["b64"])


# How many recent windows' results are kept for the latest-window gauges.
_WINDOWS_KEPT = 32


class GridwatchWorker:
    """Owns the Faust app, the engine and the metrics of one worker process."""

    def __init__(
        self,
        settings: Settings,
        *,
        topology: Topology | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        settings.check()
        self.settings = settings
        # Customer meter ids in alerts and logs as a keyed hash when a mask key is set.
        self.mask = MeterMask.from_settings(settings)
        self.topology = topology or Topology()
        if topology is None:
            # Areas (class, bounds) are configuration; meters come from the topology topic and,
            # optionally, a CSV read at start.
            if settings.areas_csv is not None:
                self.topology.load_areas_csv(settings.areas_csv)
            else:
                log.warning(
                    "no GRIDWATCH_AREAS_CSV: every area is judged with the %r class bounds",
                    "urban",
                )
            if settings.topology_csv is not None:
                self.topology.load_meters_csv(settings.topology_csv)
        self.mask.remember(*(r.meter_id for r in self.topology.records() if r.role is Role.CUSTOMER))
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, top_k=settings.top_k_areas)
        # Labelled children looked up once (a labels() call per record showed in profiles),
        # and created at 0 so every series exists from the start.
        self._messages_by_kind = {k: self.metrics.messages.labels(kind=k) for k in ("reading", "batch")}
        self._readings_by = {
            (outcome, role): self.metrics.readings.labels(outcome=outcome, role=role.value)
            for outcome in ("accepted", "duplicate", "replaced")
            for role in Role
        }
        # The archive of this worker's partitions, read in bulk from the topology topic and
        # rebuilt when a rebalance changes them (streams/topology_feed.py).
        self.topology_feed = TopologyFeed(
            settings,
            self.topology,
            dead_letter=self._dead_letter,
            on_install=self._remember_customers,
            on_count=self.metrics.topology_records.set,
            on_apply=self._remember_customer,
            base=list(self.topology.records()),  # GRIDWATCH_TOPOLOGY_CSV, read before the topic
        )
        self.topology_ready = self.topology_feed.loaded
        self._last_event_wall: dict[tuple[int, str], float] = {}
        self._last_offset: dict[tuple[int, str], int] = {}
        self._started = time.monotonic()
        self._next_offset: dict[tuple[str, int], int] = {}  # (topic, partition) -> next to process
        self._skipped = SkippedRecords(settings)
        self._window_results: dict[int, dict[str, LossResult]] = {}
        # Per-record settings, worked out once (pydantic properties showed in profiles).
        self._max_past, self._max_future = settings.max_past, settings.max_future
        self.app = self._build_app()
        self.engine = LineLossEngine(
            self.topology,
            self.table,
            interval_s=settings.interval_s,
            window_s=settings.window_s,
            allowed_lateness_s=settings.allowed_lateness_s,
            close_delay_s=settings.close_delay_s,
            min_completeness=settings.min_completeness,
            sources=(settings.topic_readings, settings.topic_supply),
            track_closed=settings.detect,
            write_behind=True,  # persisted once per offset commit: _PersistOnCommit
        )
        # Detection (docs/detection.md, "In the worker"): state per area in the detector table,
        # restored on an area's first closed window in this process, written back from stream
        # context (a Faust table cannot be written from a timer) in the partition of the area.
        self.detection = (
            Detection(
                min_completeness=settings.min_completeness,
                interval_s=settings.interval_s,
                suspects=settings.suspects,
                suspect_score=settings.suspect_score,
                large_consumption_kwh=settings.large_consumption_limits,
                utc_offset_s=settings.local_utc_offset_s,
            )
            if settings.detect
            else None
        )
        self._det_restored: set[str] = set()
        self._det_dirty: dict[int, set[str]] = {}  # partition -> areas to write back
        # partition -> alert sends not yet acknowledged; the detector state that produced them
        # is written back only after they are (a kill in between would otherwise leave a state
        # that has learned the interval and a topic without its alert)
        self._alert_sends: dict[int, list[Any]] = {}
        self._det_partition: dict[str, int] = {}
        self._det_meters: dict[str, list[str]] = {}  # area -> meters in its latest window
        self._open_types: set[str] = set()
        self._det_saved: dict[str, int] = {}  # area -> newest interval end in its saved state
        self._start_committed: dict[tuple[str, int], int] = {}  # (topic, partition) -> offset
        self._recovered_since: float | None = None  # monotonic time table recovery last ended
        self._changelog_sends: list[Any] = []  # window writes the next commit waits for

    # ---- wiring ----------------------------------------------------------------------------

    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            **faust_broker_kwargs(s),
            store="memory://",
            key_serializer="raw",
            value_serializer="raw",
            topic_partitions=s.partitions,
            topic_replication_factor=1,
            web_host=s.web_host,
            web_bind=s.web_host,  # Faust binds web_bind (default 0.0.0.0), not web_host
            web_port=s.web_port,
            datadir=str(s.data_dir),
            broker_session_timeout=s.broker_session_timeout_s,
            broker_heartbeat_interval=s.broker_heartbeat_interval_s,
            broker_commit_interval=s.broker_commit_interval_s,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
        )
        set_faust_fetch_wait(app, s.fetch_max_wait_ms)
        self.readings_topic = app.topic(s.topic_readings, partitions=s.partitions)
        self.supply_topic = app.topic(s.topic_supply, partitions=s.partitions)
        self.lineloss_topic = app.topic(s.topic_lineloss, partitions=s.partitions)
        self.deadletter_topic = app.topic(s.topic_deadletter, partitions=s.partitions)
        self.alerts_topic = app.topic(s.topic_alerts, partitions=s.partitions)
        self.inspections_topic = app.topic(s.topic_inspections, partitions=s.partitions)
        # Values are {"z64": zlib'd msgpack blob} (Faust's "raw" values do not survive changelog
        # recovery); {"b64": ...} (uncompressed) from earlier versions is still read.
        self.detector_table = app.Table(
            "detector-state",
            default=None,
            partitions=s.partitions,
            schema=faust.Schema(key_serializer="raw", value_serializer="json"),
        )
        self.table = app.Table(
            "area-windows",
            default=None,
            partitions=s.partitions,
            schema=faust.Schema(key_serializer="raw", value_serializer="json"),
        )
        source = app.topic(s.topic_readings, s.topic_supply)
        app.agent(source, name="lineloss")(self._process)
        if s.detect and s.suspects:
            app.agent(self.inspections_topic, name="inspections")(self._inspections)
        app.task(self._follow_topology)
        app.timer(interval=max(0.2, s.idle_close_s / 4))(self._close_idle)
        app.timer(interval=5.0)(self._measure_lag)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.sensors.add(_PersistOnCommit(self))
        self._guard_commit_flush(app)
        app.task(self._serve_metrics)
        return app

    async def _serve_metrics(self) -> None:
        start_http_server(self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.settings.metrics_port)

    def persist_windows(self) -> int:
        """Write the area-windows changed since the last commit to the window table and its
        changelog (explicit partitions: this runs from the commit, outside stream context)."""
        table = self.table

        sends = self._changelog_sends

        def write(partition: int, key: str, value: Any) -> None:
            if value is None:
                table.data.pop(key, None)
                sends.append(table.send_changelog(partition, key, None, value_serializer="raw"))
            else:
                table.data[key] = value
                sends.append(table.send_changelog(partition, key, value))

        n = self.engine.persist(write)
        if n:
            self.metrics.window_writes.inc(n)
        return n

    def _guard_commit_flush(self, app: faust.App) -> None:
        """Make the flush Faust awaits before committing offsets wait for every changelog
        write really sent.

        faust-streaming's ProducerBuffer.flush gives up when one message takes over 0.1 s
        (flush_atmost returns on its first timeout), and a message its sender task has taken
        off the buffer but not yet handed to aiokafka is in neither; offsets could then be
        committed ahead of the window state they depend on, and a kill right after would lose
        it. The window writes of this commit are awaited one by one (their futures resolve on
        the broker's ack); the buffer is drained for the other tables' writes.
        """
        producer = app.producer
        faust_flush = producer.flush

        async def flush() -> None:
            await faust_flush()
            deadline = time.monotonic() + 60.0
            while producer.buffer.size and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            sends, self._changelog_sends = self._changelog_sends, []
            if sends:
                await asyncio.gather(*sends)
            await faust_flush()

        producer.flush = flush  # type: ignore[method-assign]

    async def _on_revoked(self, app: faust.App, revoked: set[Any], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked}
        self.persist_windows()  # a superset of the committed state: replay onto it is harmless
        self.engine.forget_partitions(partitions)
        for tp in revoked:
            self._next_offset.pop((tp.topic, tp.partition), None)
        if self.detection is not None:
            # Another worker owns these areas now; their state is re-read from the table if
            # they come back.
            for area, p in list(self._det_partition.items()):
                if p in partitions:
                    self.detection.forget_area(area, self._det_meters.pop(area, []))
                    self._det_restored.discard(area)
                    del self._det_partition[area]
                    self._det_saved.pop(area, None)
            for p in partitions:
                self._det_dirty.pop(p, None)
                self._alert_sends.pop(p, None)

    # ---- topology --------------------------------------------------------------------------

    async def _follow_topology(self) -> None:
        await self.topology_feed.run()

    async def _on_assigned(self, app: faust.App, assigned: set[Any], **_: Any) -> None:
        sources = (self.settings.topic_readings, self.settings.topic_supply)
        self.topology_feed.assign({tp.partition for tp in assigned if tp.topic in sources})

    def _remember_customers(self, archive: MeterArchive) -> None:
        if self.mask.enabled:
            self.mask.remember(*customer_ids(archive))

    def _remember_customer(self, record: MeterRecord) -> None:
        if record.role is Role.CUSTOMER:
            self.mask.remember(record.meter_id)

    # ---- readings --------------------------------------------------------------------------

    async def _process(self, stream: faust.StreamT) -> None:
        await self.topology_ready.wait()
        s = self.settings
        # In chunks: Faust's per-event cost stays, but consecutive readings of one partition,
        # area and interval end (singles from one concentrator) are ingested, closed and
        # published together. take_events acks a chunk's events after it is processed.
        async for events in stream.take_events(s.chunk_records, s.chunk_within_s):
            await self._process_chunk([event.message for event in events])

    async def _process_chunk(self, messages: list[Any]) -> None:
        by_tp: dict[tuple[str, int], list[Any]] = {}
        for msg in messages:
            by_tp.setdefault((msg.topic, msg.partition), []).append(msg)
        for partition in {p for _, p in by_tp}:
            await self.topology_feed.wait_for(partition)  # a new partition's meters are loading
        assigned = self.app.consumer.assignment()
        for (topic, partition), msgs in by_tp.items():
            if TP(topic, partition) not in assigned:
                # Revoked while buffered: the new owner reads these from its committed offset.
                # Marked acked so Faust does not count them toward a commit of ours.
                for msg in msgs:
                    msg.acked = True
                continue
            group: Group | None = None
            for msg in msgs:
                if msg.offset < self._next_offset.get((topic, partition), -1):
                    continue  # read again after a stalled partition was resumed: done already
                if self._skipped_before(topic, partition, msg.offset):
                    await self._apply_safely(group)  # earlier offsets first
                    group = None
                if not await self._fill_skipped(topic, partition, msg.offset):
                    msg.acked = True
                    continue
                started = time.perf_counter()
                prepared = await self._prepare_safely(topic, partition, msg.offset, msg.key, msg.value)
                elapsed = time.perf_counter() - started
                if prepared is None:
                    self.metrics.latency.observe(elapsed)
                    continue
                if group is None or not group.takes(prepared):
                    await self._apply_safely(group)
                    group = Group(prepared)
                else:
                    group.add(prepared)
                group.prepare_s.append(elapsed)
            await self._apply_safely(group)

    async def _handle_safely(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        """One record on its own (records read back after a gap)."""
        started = time.perf_counter()
        prepared = await self._prepare_safely(topic, partition, offset, key, value)
        if prepared is None:
            self.metrics.latency.observe(time.perf_counter() - started)
            return
        group = Group(prepared)
        group.prepare_s.append(time.perf_counter() - started)
        await self._apply_safely(group)

    async def _prepare_safely(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> Prepared | None:
        try:
            return await self._prepare(topic, partition, offset, key, value)
        except Exception as exc:  # the worker never dies on one record
            log.exception("unexpected error on %s[%d]@%d", topic, partition, offset)
            await self._dead_letter("internal_error", repr(exc), topic, partition, offset, key, value)
            return None

    async def _apply_safely(self, group: Group | None) -> None:
        if group is None:
            return
        started = time.perf_counter()
        try:
            await self._apply(group)
        except Exception as exc:  # the worker never dies on a record
            offsets = [offset for offset, _, _ in group.records]
            log.exception(
                "unexpected error on %s[%d]@%d..%d (%d records)",
                group.topic,
                group.partition,
                offsets[0],
                offsets[-1],
                len(offsets),
            )
            for offset, key, value in group.records:
                await self._dead_letter(
                    "internal_error", repr(exc), group.topic, group.partition, offset, key, value
                )
        # Per record: its own preparation and its share of the group's ingest.
        share = (time.perf_counter() - started) / len(group.prepare_s)
        for prepare_s in group.prepare_s:
            self.metrics.latency.observe(prepare_s + share)

    def _skipped_before(self, topic: str, partition: int, offset: int) -> bool:
        expected = self._next_offset.get((topic, partition))
        return expected is None or offset > expected

    async def _fill_skipped(self, topic: str, partition: int, offset: int) -> bool:
        """Process, in order, records the stream skipped before ``offset``.

        faust-streaming (0.15, #596) drops records fetched while flow is suspended during a
        rebalance or recovery, yet advances its read offset past them and may count the jump
        as a compaction gap (acked). Offsets of our topics are contiguous, so a jump here means
        records were skipped: read them straight from the broker and process them before this
        one, keeping event-time order; then tell Faust the range is done so commits go on.
        """
        tp_key = (topic, partition)
        expected = self._next_offset.get(tp_key)
        if expected is None:
            committed = getattr(self.app.consumer, "_committed_offset", {}).get(TP(topic, partition))
            expected = committed if committed is not None else offset
            if offset < expected:
                return False  # buffered before a rebalance gave the partition back: in state
        if offset > expected:
            records = await self._skipped.read(topic, partition, expected, offset)
            log.warning(
                "%s[%d]: offsets %d..%d were skipped by the stream; processed %d of them from the broker",
                topic,
                partition,
                expected,
                offset - 1,
                len(records),
            )
            self.metrics.offset_gaps.inc()
            for rec in records:
                await self._handle_safely(topic, partition, rec.offset, rec.key, rec.value)
            await self.app.consumer._add_gap(TP(topic, partition), expected, offset - 1)
        self._next_offset[tp_key] = max(offset + 1, self._next_offset.get(tp_key, 0))
        return True

    async def _prepare(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> Prepared | None:
        """Decode and check one record; refusals are dead-lettered here. None: nothing to
        ingest (refused whole)."""
        s = self.settings
        role = Role.SUPPLY if topic == s.topic_supply else Role.CUSTOMER
        self._last_event_wall[(partition, topic)] = time.monotonic()
        self._last_offset[(partition, topic)] = offset
        try:
            msg = contracts.decode_readings(value)
        except InvalidRecord as exc:
            self.metrics.messages.labels(kind="invalid").inc()
            await self._refuse(exc.reason, exc.detail, role, topic, partition, offset, key, value)
            return None
        # Counted by kind as soon as it is decoded, so refusals below are counted too.
        self._messages_by_kind["reading" if isinstance(msg, Reading) else "batch"].inc()
        key_area = key.decode("utf-8", "replace") if key else None
        if key_area is not None and key_area != msg.area_id:
            detail = f"record key {key_area!r} differs from area_id {msg.area_id!r}"
            await self._refuse("key_mismatch", detail, role, topic, partition, offset, key, value)
            return None
        try:
            contracts.check_time(
                msg.ts, datetime.now(UTC), max_past=self._max_past, max_future=self._max_future
            )
        except InvalidRecord as exc:
            await self._refuse(exc.reason, exc.detail, role, topic, partition, offset, key, value)
            return None
        ts = _snap(msg.ts, s)
        if ts is None:
            detail = f"ts {msg.ts.isoformat()} is not within {s.clock_tolerance_s}s of an interval end"
            await self._refuse("off_grid", detail, role, topic, partition, offset, key, value)
            return None
        if isinstance(msg, Reading):
            points = [Point(msg.meter_id, msg.register_kwh, msg.energy_kwh, tuple(msg.flags))]
        else:
            points = [Point(v.meter_id, v.register_kwh, v.energy_kwh, tuple(v.flags)) for v in msg.values]
            # A refused item is dead-lettered alone (its own bytes, the batch's position).
            for refused in msg.refused:
                await self._refuse(
                    refused.error.reason,
                    refused.error.detail,
                    role,
                    topic,
                    partition,
                    offset,
                    key,
                    refused.raw,
                    item=refused.item,
                    meter_id=refused.meter_id,
                )
        single = value if isinstance(msg, Reading) else None
        return Prepared(topic, partition, offset, key, single, role, msg.area_id, ts, points)

    async def _apply(self, group: Group) -> None:
        out = self.engine.ingest(
            group.partition, group.area_id, group.ts, group.points, group.role, source=group.topic
        )
        await self._publish(out, group)
        await self._save_detection(group.partition)

    async def _publish(self, out: Outcome, group: Group) -> None:
        role, area_id, ts, topic, partition = (
            group.role,
            group.area_id,
            group.ts,
            group.topic,
            group.partition,
        )
        readings = self.metrics.readings
        counted = self._readings_by
        for outcome, n in (
            ("accepted", out.accepted),
            ("duplicate", out.duplicates),
            ("replaced", out.replaced),
        ):
            if n:
                counted[(outcome, role)].inc(n)
        for refusal in out.refused:
            point = refusal.point
            offset, key, single = group.origin(point)
            body = single if single is not None else _reading_bytes(point, area_id, ts)
            await self._refuse(
                refusal.reason,
                refusal.detail,
                role,
                topic,
                partition,
                offset,
                key,
                body,
                meter_id=point.meter_id,
            )
        target_topic = self.supply_topic if role is Role.SUPPLY else self.readings_topic
        for fwd in out.forwards:
            readings.labels(outcome="rerouted", role=role.value).inc(len(fwd.points))
            for p in fwd.points:
                body = _reading_bytes(p, fwd.area_id, fwd.ts, extra_flag=REROUTED)
                await target_topic.send(key=fwd.area_id.encode(), value=body)
        for direct in out.directs:
            # Still under the area it came with: the worker of that partition holds the meter
            # and forwards it to its area as above (or refuses it, if the directory was wrong).
            readings.labels(outcome="directed", role=role.value).inc(len(direct.points))
            for p in direct.points:
                body = _reading_bytes(p, area_id, direct.ts, extra_flag=DIRECTED)
                await target_topic.send(key=area_id.encode(), value=body, partition=direct.partition)
        await self._emit(out.results)

    async def _emit(self, results: Iterable[LossResult]) -> None:
        touched: set[int] = set()
        for result in results:
            record = {**result.to_dict(), "revision": self.engine.revision(result)}
            await self.lineloss_topic.send(key=result.key().encode(), value=contracts.encode(record))
            self.metrics.windows_closed.labels(state=result.state.value).inc()
            self._window_results.setdefault(result.window_start, {})[result.area_id] = result
            touched.add(result.window_start)
        if touched:
            for old in sorted(self._window_results)[:-_WINDOWS_KEPT]:
                del self._window_results[old]
            latest = max(self._window_results)
            self.metrics.observe_window(latest, self._window_results[latest].values())
        if self.detection is not None:
            for closed in self.engine.pop_closed():
                await self._detect(closed)
        self.metrics.open_windows.set(self.engine.open_windows())
        if self.engine.watermark:
            lag = time.time() - min(self.engine.watermark.values())
            self.metrics.watermark_lag.set(max(0.0, lag))

    # ---- detection -------------------------------------------------------------------------

    async def _detect(self, closed: ClosedWindow) -> None:
        """Learn a window that closed for the first time and publish the alerts it opens or
        resolves (an interval learned before a restart is skipped, so nothing is learned or
        alerted twice once its state was saved)."""
        det = self.detection
        assert det is not None
        s = self.settings
        area = closed.result.area_id
        if area not in self._det_restored:
            saved = self.detector_table.get(area)
            if saved:
                det.restore_area(decode_detector_state(saved))
            self._det_restored.add(area)
        intervals = window_intervals(
            det,
            area,
            closed.result.window_start,
            closed.points,
            self.topology,
            interval_s=s.interval_s,
            window_s=s.window_s,
        )
        records = det.step(intervals)
        if intervals:
            self._det_meters[area] = [det.meter_name(int(i)) for i in intervals[0].meters]
        self._det_partition[area] = closed.partition
        # Saved when alerts changed, else at most every half allowed lateness: windows learned
        # since the last save are still in the window store after a crash (released only after
        # the lateness), so a restart learns them again from the saved state to the same end.
        learned = det.learned.get(area, 0)
        if records or learned - self._det_saved.get(area, 0) >= s.allowed_lateness_s // 2:
            self._det_saved[area] = learned
            self._det_dirty.setdefault(closed.partition, set()).add(area)
        for record in records:
            record = masked_alert(record, self.mask)
            self.metrics.alerts_emitted.labels(type=record["type"], event=record["event"]).inc()
            sent = await self.alerts_topic.send(
                key=str(record["entity_id"]).encode(), value=contracts.encode(record)
            )
            self._alert_sends.setdefault(closed.partition, []).append(sent)

    async def _inspections(self, stream: faust.StreamT) -> None:
        """Inspectors' verdicts: the classifier learns each on the suspect as published, and
        the suspect alert is resolved. Records are keyed by area, so a verdict reaches the
        worker that owns the area (co-partitioned with the readings)."""
        await self.topology_ready.wait()
        async for event in stream.events():
            msg = event.message
            try:
                await self._inspection(msg.topic, msg.partition, msg.offset, msg.key, msg.value)
            except Exception as exc:  # the worker never dies on one record
                log.exception("unexpected error on %s[%d]@%d", msg.topic, msg.partition, msg.offset)
                await self._dead_letter(
                    "internal_error", repr(exc), msg.topic, msg.partition, msg.offset, msg.key, msg.value
                )

    async def _inspection(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        det = self.detection
        assert det is not None
        try:
            record = Inspection.from_dict(orjson.loads(value or b""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            await self._dead_letter(
                "inspection", f"not an inspection record: {exc}", topic, partition, offset, key, value
            )
            return
        when = datetime(record.date.year, record.date.month, record.date.day, tzinfo=UTC)
        rec = self.topology.meter_at(record.meter, when)
        area = rec.area_id if rec is not None else None
        if area is not None and area not in self._det_restored:
            saved = self.detector_table.get(area)
            if saved:
                det.restore_area(decode_detector_state(saved))
            self._det_restored.add(area)
        records = det.learn_verdict(record.meter, record.verdict, int(when.timestamp()) + 86400)
        self.metrics.verdicts.labels(verdict=record.verdict.value, matched=str(bool(records)).lower()).inc()
        for alert in records:
            alert = masked_alert(alert, self.mask)
            self.metrics.alerts_emitted.labels(type=alert["type"], event=alert["event"]).inc()
            sent = await self.alerts_topic.send(
                key=str(alert["entity_id"]).encode(), value=contracts.encode(alert)
            )
            self._alert_sends.setdefault(partition, []).append(sent)
        if records and area is not None and self._det_partition.get(area) == partition:
            self._det_dirty.setdefault(partition, set()).add(area)
            await self._save_detection(partition)

    async def _save_detection(self, partition: int) -> None:
        """Write back the detector state of this partition's areas: to the table and, with an
        explicit partition (chunks are processed outside Faust's per-event context), to its
        changelog; the next commit waits for these writes like for the windows'.

        The alerts the state has produced are acknowledged first: the state says which
        intervals were learned, and a restart does not learn (or alert) them again."""
        det = self.detection
        if det is None or not self._det_dirty.get(partition):
            return
        sends = self._alert_sends.pop(partition, [])
        if sends:
            failed = [
                r
                for r in await asyncio.gather(*sends, return_exceptions=True)
                if isinstance(r, BaseException)
            ]
            if failed:
                # Not saved: after a restart the intervals are learned again and the alerts re-sent.
                log.error(
                    "%d alert(s) of partition %d not acknowledged (%r): detector state not saved",
                    len(failed),
                    partition,
                    failed[0],
                )
                return
        areas = self._det_dirty.pop(partition)
        table = self.detector_table
        for area in sorted(areas):
            value = encode_detector_state(det.snapshot_area(area, self._det_meters.get(area, [])))
            if value is None:
                # A month of ranking evidence for a very large area (~1,000 meters) can pass the
                # producer's 1 MB request limit even compressed; failing the send would stop the
                # worker. Unsaved state is relearned after a restart (docs/detection.md).
                self.metrics.detector_state_unsaved.inc()
                log.error("detector state of area %s exceeds one changelog record: not saved", area)
                continue
            table.data[area] = value
            self._changelog_sends.append(table.send_changelog(partition, area, value))

    def _detection_gauges(self) -> None:
        det = self.detection
        if det is None:
            return
        counts = dict.fromkeys(self._open_types, 0)  # types no longer open read 0
        for alert in det.book.open.values():
            counts[alert.type] = counts.get(alert.type, 0) + 1
        self._open_types.update(counts)
        for kind, n in counts.items():
            self.metrics.anomalies_open.labels(type=kind).set(n)
        # Suspects of the worst areas of the latest window (the same top k as their loss gauge).
        suspects: dict[str, list[float]] = {}
        for (kind, _, dtype), alert in det.book.open.items():
            if kind == "meter" and dtype == "suspect":
                area = str(alert.evidence.get("area_id"))
                suspects.setdefault(area, []).append(float(alert.evidence.get("share_of_area_loss", 0.0)))
        self.metrics.worst_area_suspects.clear()
        self.metrics.worst_area_suspect_share.clear()
        if self._window_results:
            latest = self._window_results[max(self._window_results)].values()
            judged = [r for r in latest if r.loss_rate is not None]
            worst = sorted(judged, key=lambda r: (-(r.loss_rate or 0.0), r.area_id))[
                : self.settings.top_k_areas
            ]
            for r in worst:
                shares = suspects.get(r.area_id, [])
                self.metrics.worst_area_suspects.labels(area_id=r.area_id).set(len(shares))
                self.metrics.worst_area_suspect_share.labels(area_id=r.area_id).set(max(shares, default=0.0))
        self.metrics.detector_meters.set(det.meters)
        self.metrics.detector_state_bytes.set(det.state_bytes())

    async def _committed_at_start(self, tps: list[Any]) -> dict[tuple[str, int], int]:
        """The group's committed offsets of partitions this process has not read from yet
        (Faust knows a partition's committed offset only after committing it itself)."""
        missing = [tp for tp in tps if (tp.topic, tp.partition) not in self._start_committed]
        if missing:
            offsets = await asyncio.to_thread(group_offsets, self.settings)
            if offsets is None:
                return self._start_committed  # asked again next tick
            for tp in missing:
                # No committed offset: the group starts it from the beginning. Remembered too,
                # or every tick would open an admin client again (0.5-2 s timer runs seen).
                self._start_committed[(tp.topic, tp.partition)] = offsets.get((tp.topic, tp.partition), 0)
        return self._start_committed

    async def _measure_lag(self) -> None:
        """Records on the broker not processed yet, per input topic (high watermark minus the
        next offset to process, summed over this worker's partitions)."""
        assigned = [tp for tp in self.app.consumer.assignment() if tp.topic in self.engine.sources]
        lag = dict.fromkeys(self.engine.sources, 0)
        if assigned:
            highwaters = await self.app.consumer.highwaters(*assigned)
            committed = getattr(self.app.consumer, "_committed_offset", {})
            for tp in assigned:
                high = highwaters.get(tp)
                if high is None:
                    continue
                position = self._next_offset.get((tp.topic, tp.partition)) or committed.get(tp) or 0
                lag[tp.topic] += max(0, high - position)
        for topic, n in lag.items():
            self.metrics.consumer_lag.labels(topic=topic).set(n)

    async def _close_idle(self) -> None:
        """Let caught-up, quiet sources stop holding watermarks back, and close the ended
        windows of partitions where every source is quiet.

        Quiet on the wall clock is not enough: a topic with a backlog the consumer has not
        fetched yet is silent too, and treating it as idle would let the other topic's
        watermark run ahead and refuse its readings as late. A source is idle only when it
        has also read everything up to the partition's high watermark.
        """
        now = time.monotonic()
        idle_s = self.settings.idle_close_s
        assigned = [tp for tp in self.app.consumer.assignment() if tp.topic in self.engine.sources]
        # A source already marked idle stays so until its next record, so only the others
        # need the high-watermark query (a broker round trip that outlasted this timer).
        quiet = {
            (tp.partition, tp.topic)
            for tp in assigned
            if now - self._last_event_wall.get((tp.partition, tp.topic), self._started) >= idle_s
        }
        to_check = [
            tp
            for tp in assigned
            if (tp.partition, tp.topic) in quiet and not self.engine.is_idle(tp.partition, tp.topic)
        ]
        # Table recovery is over only when no rebalance is under way too: Faust never clears
        # recovery.completed, and a partition newly assigned by a second rebalance is in the
        # assignment before its changelog is read back.
        recovery = self.app.tables.recovery
        recovered = (
            recovery.completed.is_set()
            and not recovery.in_recovery
            and not self.app.rebalancing
            and self.app.tables.actives_ready
        )
        if not recovered:
            self._recovered_since = None
        elif self._recovered_since is None:
            self._recovered_since = now
        if to_check:
            highwaters = await self.app.consumer.highwaters(*to_check)
            committed = getattr(self.app.consumer, "_committed_offset", {})
            at_start = await self._committed_at_start(to_check)
            stalled: list[tuple[Any, int]] = []
            for tp in to_check:
                last = self._last_offset.get((tp.partition, tp.topic))
                position = max(
                    last + 1 if last is not None else 0,
                    committed.get(tp) or 0,
                    at_start.get((tp.topic, tp.partition), 0),
                )
                highwater = highwaters.get(tp)
                if highwater is not None and position >= highwater:
                    self.engine.mark_idle(tp.partition, tp.topic)
                elif highwater is not None and self._stalled(tp, now):
                    stalled.append((tp, position))
            for tp, position in stalled:
                await self._resume_stalled(tp, position, highwaters[tp])
        for partition in sorted({tp.partition for tp in assigned}):
            all_idle = all(
                (partition, src) in quiet and self.engine.is_idle(partition, src)
                for src in self.engine.sources
            )
            if not all_idle:
                continue  # records are coming: the first one loads the partition's windows
            if not self.topology_feed.covers(partition):
                continue  # its meters are still loading: judged without them, areas look empty
            if not self.engine.knows_partition(partition):
                if not recovered:
                    continue
                # A partition whose records were all processed before a restart gets none now:
                # its last windows must still close, from the recovered table.
                self.engine.recover_partition(partition)
            await self._emit(self.engine.flush_idle(partition))
        self._detection_gauges()

    def _stalled(self, tp: Any, now: float) -> bool:
        """Records wait on the broker, recovery is over, yet the stream has delivered nothing
        of this partition for a long while (stall_s past both its last record and the end
        of recovery)."""
        if self._recovered_since is None:
            return False
        stall_s = max(10.0, 3 * self.settings.idle_close_s)
        last = max(self._last_event_wall.get((tp.partition, tp.topic), 0.0), self._recovered_since)
        return now - last >= stall_s

    async def _resume_stalled(self, tp: Any, position: int, highwater: int) -> None:
        """Put a stalled partition back in the fetch set and read it again from the next
        offset to process.

        faust-streaming can leave an assigned partition out of its active set after a
        rebalance during recovery (and drops what it fetched for it meanwhile); its records
        are then never delivered and its windows never close. Re-reading from our own
        position repeats nothing: records processed already are skipped in _process.
        """
        consumer = self.app.consumer
        log.warning(
            "%s[%d]: no record delivered for a while with %d waiting (next %d, end %d; "
            "active=%s paused=%s); resuming it and reading again from %d",
            tp.topic,
            tp.partition,
            highwater - position,
            position,
            highwater,
            tp in (getattr(consumer, "_active_partitions", None) or ()),
            tp in (getattr(consumer, "_paused_partitions", None) or ()),
            position,
        )
        self.metrics.stalled_partitions.inc()
        getattr(consumer, "_buffered_partitions", set()).discard(tp)
        consumer.resume_partitions([tp])
        await consumer.seek(tp, position)
        self._last_event_wall[(tp.partition, tp.topic)] = time.monotonic()  # one try per stall_s

    async def _refuse(
        self,
        reason: str,
        detail: str,
        role: Role,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        *,
        item: int | None = None,
        meter_id: str | None = None,
    ) -> None:
        outcome = "late" if reason == "late" else "rejected"
        self.metrics.readings.labels(outcome=outcome, role=role.value).inc()
        await self._dead_letter(reason, detail, topic, partition, offset, key, value, item, meter_id)

    async def _dead_letter(
        self,
        reason: str,
        detail: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        item: int | None = None,
        meter_id: str | None = None,
    ) -> None:
        body = contracts.dead_letter(
            reason=reason,
            detail=detail,
            topic=topic,
            partition=partition,
            offset=offset,
            key=key,
            value=value,
            item=item,
            meter_id=meter_id,
        )
        # Keyed by the original key, or its digest when that alone would not fit a message.
        dl_key = contracts.dead_letter_key(key)
        try:
            await self.deadletter_topic.send(key=dl_key, value=body)
        except Exception as exc:  # never lose the record's trace: say where it is instead
            log.error(
                "dead letter for %s[%d]@%d not sent (%r); sending its position only",
                topic,
                partition,
                offset,
                exc,
            )
            body = contracts.dead_letter(
                reason=reason,
                detail=f"{detail[:1000]} (original bytes not kept: {exc!r})",
                topic=topic,
                partition=partition,
                offset=offset,
                key=None,
                value=None,
                item=item,
                meter_id=meter_id,
            )
            await self.deadletter_topic.send(key=dl_key, value=body)
        self.metrics.rejected.labels(reason=reason).inc()


class _PersistOnCommit(faust.Sensor):
    """Persists changed windows when an offset commit starts.

    Faust calls ``on_commit_initiated`` synchronously right before it picks the acked offsets
    to commit, and flushes the producer before committing them; so every window change of a
    committed record is in the changelog first (changes of later records may be too: replay
    onto a superset changes nothing, the engine's state being a set of readings).
    """

    def __init__(self, worker: GridwatchWorker) -> None:
        super().__init__()
        self.worker = worker

    def on_commit_initiated(self, consumer: Any) -> Any:
        self.worker.persist_windows()
        return None


class SkippedRecords:
    """A group-less consumer that reads offset ranges the Faust stream skipped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self, topic: str, partition: int, start: int, end: int) -> list[Any]:
        """Records with start <= offset < end (fewer if the log has a gap)."""
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                group_id=None, enable_auto_commit=False, **kafka_client_kwargs(self.settings)
            )
            await self._consumer.start()
        tp = TopicPartition(topic, partition)
        self._consumer.assign([tp])
        self._consumer.seek(tp, start)
        out: list[Any] = []
        empty_polls = 0
        while empty_polls < 5:
            batch = await self._consumer.getmany(tp, timeout_ms=1000, max_records=5000)
            records = batch.get(tp, [])
            empty_polls = 0 if records else empty_polls + 1
            out.extend(r for r in records if start <= r.offset < end)
            if records and records[-1].offset >= end - 1:
                break
        return out


def masked_alert(record: dict[str, Any], mask: MeterMask) -> dict[str, Any]:
    """A meter alert with its meter id (in ``entity_id`` and ``id``) replaced by the mask's
    keyed hash; area alerts and unmasked workers pass unchanged."""
    if not mask.enabled or record["entity_kind"] != "meter":
        return record
    real = str(record["entity_id"])
    masked = mask.meter(real)
    return {
        **record,
        "entity_id": masked,
        "id": str(record["id"]).replace(f"meter:{real}:", f"meter:{masked}:", 1),
    }


def _reading_bytes(p: Point, area_id: str, ts: int, extra_flag: str | None = None) -> bytes:
    """One point as a self-contained single reading."""
    flags = list(p.flags)
    if extra_flag and extra_flag not in flags:
        flags = [*flags[: contracts.MAX_FLAGS - 1], extra_flag]  # the forward keeps the contract
    return contracts.encode(
        Reading(
            meter_id=p.meter_id,
            register_kwh=p.register_kwh,
            energy_kwh=p.energy_kwh,
            flags=flags,
            area_id=area_id,
            ts=datetime.fromtimestamp(ts, UTC),
        )
    )


def _snap(ts: datetime, s: Settings) -> int | None:
    return snap(ts.timestamp(), interval_s=s.interval_s, tolerance_s=s.clock_tolerance_s)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run one worker in the foreground until interrupted."""
    worker = GridwatchWorker(settings)
    if worker.mask.enabled:
        worker.mask.install()  # wraps the log record factory, so Faust's own handlers see masked ids
    # These build a debug record per message sent and drop it: 3-7% of CPU (py-spy).
    for name in ("faust.topics", "aiokafka.producer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "producer buffer full size N" is Faust pacing the stream while more than 100 table writes
    # (a hard-coded limit) wait to be sent: every commit persists the area-windows changed since
    # the last one at once (persist_windows), so a busy stream reaches it by design, and the
    # commit's own flush waits for every write (_guard_commit_flush). Not a fault: not a warning.
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    faust.Worker(worker.app, loglevel=loglevel).execute_from_commandline()
