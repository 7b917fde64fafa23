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
from datetime import UTC, datetime
from typing import Any

import faust
from faust.types import TP
from prometheus_client import CollectorRegistry, start_http_server

from archive import MeterArchive
from models.lineloss import LossResult
from streams import contracts
from streams.checkpoint import Checkpoint
from streams.deadletters import DeadLetters, reading_bytes
from streams.detection_stage import DetectionStage
from streams.engine import DIRECTED, REROUTED, LineLossEngine
from streams.faust_fixes import DeliveryGuard
from streams.idle_close import SourceActivity
from streams.kafkaio import faust_broker_kwargs, set_faust_fetch_wait
from streams.masking import MeterMask
from streams.metrics import Metrics
from streams.settings import Settings
from streams.step import BatchStep, Record, StepOutput
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
        # The one per-record path (streams/step.py), over the changelogged window table; its
        # detectors are stepped here (self.detection), around each area's saved state.
        self.step = BatchStep(
            self.topology,
            None,
            sources=(settings.topic_readings, settings.topic_supply),
            supply_sources=frozenset({settings.topic_supply}),
            store=self.table,
            interval_s=settings.interval_s,
            window_s=settings.window_s,
            allowed_lateness_s=settings.allowed_lateness_s,
            close_delay_s=settings.close_delay_s,
            clock_tolerance_s=settings.clock_tolerance_s,
            min_completeness=settings.min_completeness,
            max_past=settings.max_past,
            max_future=settings.max_future,
            write_behind=True,  # persisted once per offset commit (streams/checkpoint.py)
            keep_closed=settings.detect,
        )
        assert isinstance(self.step.engine, LineLossEngine)  # a store: windows in the table
        self.engine: LineLossEngine = self.step.engine
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
        # A forward or a directed reading goes back to the topic it came from.
        self._topics = {s.topic_readings: self.readings_topic, s.topic_supply: self.supply_topic}
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
        # In chunks: Faust's per-event cost stays, but a chunk's records of one partition go
        # through the step together. take_events acks a chunk's events after it is processed.
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
            records: list[Record] = []
            for msg in msgs:
                if self.delivery.done_already(topic, partition, msg.offset):
                    continue  # read again after a stalled partition was resumed: done already
                if self.delivery.skipped_before(topic, partition, msg.offset):
                    await self._step(records)  # earlier offsets first
                    records = []
                if not await self.delivery.fill(topic, partition, msg.offset, self._handle_one):
                    msg.acked = True
                    continue
                records.append(Record(topic, msg.key, msg.value, partition, msg.offset))
            await self._step(records)

    async def _handle_one(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> None:
        """One record on its own (records read back after a gap)."""
        await self._step([Record(topic, key, value, partition, offset)])

    async def _step(self, records: list[Record]) -> None:
        """Records of one (topic, partition), in offset order, through the batch step; then
        what they made happen is published (the detector state they changed is saved by the
        next commit: streams/checkpoint.py)."""
        if not records:
            return
        async with self.checkpoint.stepping:  # a commit's detector save waits for the step's end
            await self._step_held(records)

    async def _step_held(self, records: list[Record]) -> None:
        started = time.perf_counter()
        last = records[-1]
        self.sources.seen(last.partition, last.source, last.offset)
        out = self.step.step(records, datetime.now(UTC), on_error=_log_error)
        role = self._role(last.source)  # one topic: one role (forwards are sent, not applied)
        for outcome in ("accepted", "duplicate", "replaced", "rerouted", "directed"):
            if n := out.counts[outcome]:
                counter = self._readings_by.get((outcome, role))
                (counter or self.metrics.readings.labels(outcome=outcome, role=role.value)).inc(n)
        try:
            await self._publish(out)
        except Exception as exc:  # the worker never dies on a record
            log.exception(
                "unexpected error on %s[%d]@%d..%d (%d records)",
                last.source,
                last.partition,
                records[0].offset,
                last.offset,
                len(records),
            )
            for r in records:
                await self.dead_letters.send("internal_error", repr(exc), *_position(r), r.value)
        share = (time.perf_counter() - started) / len(records)  # per record: its share of the step
        for _ in records:
            self.metrics.latency.observe(share)

    def _role(self, source: str) -> Role:
        return Role.SUPPLY if source == self.settings.topic_supply else Role.CUSTOMER

    async def _publish(self, out: StepOutput) -> None:
        """Message counts, dead letters, forwards, directed readings and results of one step."""
        for kind, n in out.messages.items():
            (self._messages_by_kind.get(kind) or self.metrics.messages.labels(kind=kind)).inc(n)
        for d in out.dead_letters:
            r = d.record
            if d.reason == "internal_error":  # not the reading's fault: not counted against it
                await self.dead_letters.send(d.reason, d.detail, *_position(r), r.value)
                continue
            # A refused batch item is dead-lettered alone: its own bytes, the batch's position.
            value = r.value if d.item is None else d.raw
            await self._refuse(d.reason, d.detail, r, value, item=d.item, meter_id=d.meter_id)
        for refused in out.refused:
            r, point = refused.record, refused.point
            body = r.value if refused.single else reading_bytes(point, refused.area_id, refused.ts)
            await self._refuse(refused.reason, refused.detail, r, body, meter_id=point.meter_id)
        for source, fwd in out.forwards:
            for p in fwd.points:  # flagged REROUTED by the step already
                body = reading_bytes(p, fwd.area_id, fwd.ts, extra_flag=REROUTED)
                await self._topics[source].send(key=fwd.area_id.encode(), value=body)
        for source, area_id, direct in out.directs:
            # Still under the area it came with: the worker of that partition holds the meter
            # and forwards it to its area as above (or refuses it, if the directory was wrong).
            for p in direct.points:
                body = reading_bytes(p, area_id, direct.ts, extra_flag=DIRECTED)
                await self._topics[source].send(key=area_id.encode(), value=body, partition=direct.partition)
        await self._emit(out)

    async def _refuse(
        self,
        reason: str,
        detail: str,
        record: Record,
        value: bytes | None,
        *,
        item: int | None = None,
        meter_id: str | None = None,
    ) -> None:
        """A dead letter for ``record``'s reading(s), ``value`` being the bytes it carries."""
        role = self._role(record.source)
        await self.dead_letters.refuse(
            reason, detail, role, *_position(record), value, item=item, meter_id=meter_id
        )

    async def _emit(self, out: StepOutput) -> None:
        """Results, the windows the detectors learn, and the window gauges."""
        touched: set[int] = set()
        for result, revision in out.results:
            record = {**result.to_dict(), "revision": revision}
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
            await self.detection.learn(out.closed)
        self.metrics.open_windows.set(self.engine.open_windows())
        if self.engine.watermark:
            lag = time.time() - min(self.engine.watermark.values())
            self.metrics.watermark_lag.set(max(0.0, lag))

    async def _close_quiet(self, partition: int) -> None:
        """A partition whose sources are all quiet: its ended windows close."""
        async with self.checkpoint.stepping:
            await self._emit(self.step.close_idle(partition, ()))

    async def _measure_lag(self) -> None:
        await self.sources.measure_lag()

    async def _close_idle(self) -> None:
        await self.sources.close_idle(self._close_quiet)
        if self.detection is not None:
            latest = self._window_results[max(self._window_results)].values() if self._window_results else ()
            self.detection.gauges(latest)


def _position(r: Record) -> tuple[str, int, int, bytes | None]:
    """(topic, partition, offset, key) of a record, as a dead letter names its source."""
    return r.source, r.partition, r.offset, r.key


def _log_error(record: Record, exc: Exception) -> None:
    log.error("unexpected error on %s[%d]@%d", record.source, record.partition, record.offset, exc_info=exc)


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
