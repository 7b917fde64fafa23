"""The Faust worker: wiring and intake around the line-loss engine.

The lineloss agent decodes and validates records, hands their points to
:class:`streams.engine.LineLossEngine` and publishes results and metrics; the rest is in modules
of its own: the commit protocol (streams/checkpoint.py), dead letters (streams/deadletters.py),
detection (streams/detection_stage.py), quiet sources and partitions (streams/idle_close.py),
the archive of the held partitions (streams/topology_feed.py) and the faust-streaming
workarounds (streams/faust_fixes.py). State lives in changelogged Faust tables, so a killed
worker resumes where it stopped: offsets are committed only after the changelog writes they
depend on are acknowledged, and re-processing a record is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry, start_http_server

from archive import MeterArchive
from models.lineloss import LossResult
from models.windows import snap
from streams import contracts
from streams.checkpoint import Checkpoint
from streams.chunks import Group, Prepared
from streams.contracts import InvalidRecord, Reading
from streams.deadletters import DeadLetters, reading_bytes
from streams.detection_stage import DetectionStage
from streams.engine import DIRECTED, REROUTED, LineLossEngine, Outcome, Point
from streams.faust_fixes import DeliveryGuard
from streams.idle_close import SourceActivity
from streams.kafkaio import faust_broker_kwargs, set_faust_fetch_wait
from streams.masking import MeterMask
from streams.metrics import Metrics
from streams.settings import Settings
from streams.topology_feed import TopologyFeed, customer_ids
from topology import MeterRecord, Role, Topology

log = logging.getLogger("gridwatch")

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
        self.app = self._build_app()
        self.dead_letters = DeadLetters(self.deadletter_topic, self.metrics)
        # The archive of this worker's partitions, read in bulk from the topology topic and
        # rebuilt when a rebalance changes them (streams/topology_feed.py).
        self.topology_feed = TopologyFeed(
            settings,
            self.topology,
            dead_letter=self.dead_letters.send,
            on_install=self._remember_customers,
            on_count=self.metrics.topology_records.set,
            on_apply=self._remember_customer,
            base=list(self.topology.records()),  # GRIDWATCH_TOPOLOGY_CSV, read before the topic
        )
        self.topology_ready = self.topology_feed.loaded
        self.delivery = DeliveryGuard(
            self.app,
            settings,
            on_gap=self.metrics.offset_gaps.inc,
            on_stall=self.metrics.stalled_partitions.inc,
        )
        self._window_results: dict[int, dict[str, LossResult]] = {}
        # Per-record settings, worked out once (pydantic properties showed in profiles).
        self._max_past, self._max_future = settings.max_past, settings.max_future
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
            write_behind=True,  # persisted once per offset commit (streams/checkpoint.py)
        )
        self.checkpoint = Checkpoint(self.engine, self.table, on_writes=self.metrics.window_writes.inc)
        self.checkpoint.install(self.app)
        self.detection = (
            DetectionStage(
                settings,
                self.topology,
                table=self.detector_table,
                alerts_topic=self.alerts_topic,
                checkpoint=self.checkpoint,
                dead_letters=self.dead_letters,
                metrics=self.metrics,
                mask=self.mask,
            )
            if settings.detect
            else None
        )
        if self.detection is not None and settings.suspects:
            self.app.agent(self.inspections_topic, name="inspections")(self._inspections)
        self.sources = SourceActivity(
            self.app, settings, self.engine, self.delivery, self.topology_feed, self.metrics
        )

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
        app.task(self._follow_topology)
        app.timer(interval=max(0.2, s.idle_close_s / 4))(self._close_idle)
        app.timer(interval=5.0)(self._measure_lag)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.task(self._serve_metrics)
        return app

    async def _serve_metrics(self) -> None:
        start_http_server(self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", self.settings.metrics_host, self.settings.metrics_port)

    async def _on_revoked(self, app: faust.App, revoked: set[Any], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked}
        # A superset of the committed state: replay onto it is harmless.
        self.checkpoint.persist_windows()
        self.engine.forget_partitions(partitions)
        self.delivery.forget(revoked)
        if self.detection is not None:
            self.detection.forget_partitions(partitions)

    async def _inspections(self, stream: faust.StreamT) -> None:
        await self.topology_ready.wait()
        assert self.detection is not None
        await self.detection.inspections(stream)

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
                if self.delivery.done_already(topic, partition, msg.offset):
                    continue  # read again after a stalled partition was resumed: done already
                if self.delivery.skipped_before(topic, partition, msg.offset):
                    await self._apply_safely(group)  # earlier offsets first
                    group = None
                if not await self.delivery.fill(topic, partition, msg.offset, self._handle_safely):
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
            await self.dead_letters.send("internal_error", repr(exc), topic, partition, offset, key, value)
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
                await self.dead_letters.send(
                    "internal_error", repr(exc), group.topic, group.partition, offset, key, value
                )
        # Per record: its own preparation and its share of the group's ingest.
        share = (time.perf_counter() - started) / len(group.prepare_s)
        for prepare_s in group.prepare_s:
            self.metrics.latency.observe(prepare_s + share)

    async def _prepare(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> Prepared | None:
        """Decode and check one record; refusals are dead-lettered here. None: nothing to
        ingest (refused whole)."""
        s = self.settings
        role = Role.SUPPLY if topic == s.topic_supply else Role.CUSTOMER
        self.sources.seen(partition, topic, offset)
        try:
            msg = contracts.decode_readings(value)
        except InvalidRecord as exc:
            self.metrics.messages.labels(kind="invalid").inc()
            await self.dead_letters.refuse(exc.reason, exc.detail, role, topic, partition, offset, key, value)
            return None
        # Counted by kind as soon as it is decoded, so refusals below are counted too.
        self._messages_by_kind["reading" if isinstance(msg, Reading) else "batch"].inc()
        key_area = key.decode("utf-8", "replace") if key else None
        if key_area is not None and key_area != msg.area_id:
            detail = f"record key {key_area!r} differs from area_id {msg.area_id!r}"
            await self.dead_letters.refuse("key_mismatch", detail, role, topic, partition, offset, key, value)
            return None
        try:
            contracts.check_time(
                msg.ts, datetime.now(UTC), max_past=self._max_past, max_future=self._max_future
            )
        except InvalidRecord as exc:
            await self.dead_letters.refuse(exc.reason, exc.detail, role, topic, partition, offset, key, value)
            return None
        ts = _snap(msg.ts, s)
        if ts is None:
            detail = f"ts {msg.ts.isoformat()} is not within {s.clock_tolerance_s}s of an interval end"
            await self.dead_letters.refuse("off_grid", detail, role, topic, partition, offset, key, value)
            return None
        if isinstance(msg, Reading):
            points = [Point(msg.meter_id, msg.register_kwh, msg.energy_kwh, tuple(msg.flags))]
        else:
            points = [Point(v.meter_id, v.register_kwh, v.energy_kwh, tuple(v.flags)) for v in msg.values]
            # A refused item is dead-lettered alone (its own bytes, the batch's position).
            for refused in msg.refused:
                await self.dead_letters.refuse(
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
        if self.detection is not None:
            await self.detection.save(group.partition)

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
            body = single if single is not None else reading_bytes(point, area_id, ts)
            await self.dead_letters.refuse(
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
                body = reading_bytes(p, fwd.area_id, fwd.ts, extra_flag=REROUTED)
                await target_topic.send(key=fwd.area_id.encode(), value=body)
        for direct in out.directs:
            # Still under the area it came with: the worker of that partition holds the meter
            # and forwards it to its area as above (or refuses it, if the directory was wrong).
            readings.labels(outcome="directed", role=role.value).inc(len(direct.points))
            for p in direct.points:
                body = reading_bytes(p, area_id, direct.ts, extra_flag=DIRECTED)
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
                await self.detection.learn(closed)
        self.metrics.open_windows.set(self.engine.open_windows())
        if self.engine.watermark:
            lag = time.time() - min(self.engine.watermark.values())
            self.metrics.watermark_lag.set(max(0.0, lag))

    async def _measure_lag(self) -> None:
        await self.sources.measure_lag()

    async def _close_idle(self) -> None:
        await self.sources.close_idle(self._emit)
        if self.detection is not None:
            latest = self._window_results[max(self._window_results)].values() if self._window_results else ()
            self.detection.gauges(latest)


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
    # the last one at once (streams/checkpoint.py), so a busy stream reaches it by design, and the
    # commit's own flush waits for every write. Not a fault: not a warning.
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    faust.Worker(worker.app, loglevel=loglevel).execute_from_commandline()
