"""The pure batch step: the records of a chunk (many messages, many areas) in; line-loss
results, alerts, dead letters, forwards and counts out as values.

No Kafka and no metrics here: ``streams.offline`` (behind ``gridwatch evaluate``), the
benchmarks, the tests and the worker (streams/app.py) drive this one step. A record
is decoded by :mod:`streams.contracts`, checked (key, wall clock when a ``now`` is given,
interval grid), ingested by :class:`streams.engine.LineLossEngine`, and every area-window that
closes for the first time goes through :func:`models.detection.window_intervals`; the
area-intervals a step closes are handed to :meth:`models.detection.Detection.step` together
at its end, which steps the meter detector over the areas of one round in one call. Records
are applied in order, so a chunk of any size gives what the same records one by one give.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from models.detection import AreaInterval, Detection, window_intervals
from models.lineloss import LossResult
from models.windows import snap
from streams import contracts
from streams.columnar import ColumnEngine
from streams.contracts import DecodedBatch, InvalidRecord, Reading
from streams.engine import REROUTED, ClosedWindow, Direct, Forward, LineLossEngine, Point, Reported
from topology import Role, Topology


class Record(NamedTuple):
    """One consumed record: ``source`` is its topic (or, from a file, its kind). A tuple:
    made once per record, several times cheaper than a frozen dataclass."""

    source: str
    key: bytes | None
    value: bytes | None
    partition: int = 0
    offset: int = -1


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A refusal with its reason: the whole record, one item of a batch, or one reading."""

    reason: str
    detail: str
    record: Record
    item: int | None = None  # position in the batch
    meter_id: str | None = None
    raw: bytes | None = None  # the refused item's own bytes, when it is one item of a batch


@dataclass(frozen=True, slots=True)
class Refused:
    """A reading the engine refused (unknown meter, wrong role, late, misrouted). ``single``:
    the reading was the whole record, so its dead letter carries the record's own bytes."""

    reason: str
    detail: str
    record: Record
    area_id: str
    ts: int
    point: Reported
    single: bool = False


@dataclass
class StepOutput:
    """What one chunk made happen, in the order it happened."""

    results: list[tuple[LossResult, int]] = field(default_factory=list)  # (result, revision)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    forwards: list[tuple[str, Forward]] = field(default_factory=list)  # (source, flagged points)
    directs: list[tuple[str, str, Direct]] = field(default_factory=list)  # (source, area, points)
    learned_areas: set[str] = field(default_factory=set)  # detector state changed
    closed: list[ClosedWindow] = field(default_factory=list)  # first closes, with keep_closed
    windows_closed: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # records, readings, accepted, ...
    messages: Counter[str] = field(default_factory=Counter)  # records by kind: reading, batch, invalid
    first_ts: int | None = None
    last_ts: int | None = None


def rerouted(point: Reported) -> Point:
    """``point`` flagged as forwarded, within the contract's flag cap."""
    flags = tuple(point.flags)
    if REROUTED not in flags:
        flags = (*flags[: contracts.MAX_FLAGS - 1], REROUTED)
    return Point(point.meter_id, point.register_kwh, point.energy_kwh, flags)


class BatchStep:
    """One engine partition set and the detectors, stepped a chunk of records at a time.

    ``supply_sources`` are the sources (topics) of supply readings, the rest are customer
    readings. ``forward_inline``: a reading the archive maps to another area is applied there
    at once (a file run, one process) instead of being returned to be re-sent.
    ``keep_closed`` (with ``detection=None``): windows closed for the first time are returned
    in :attr:`StepOutput.closed` for detectors stepped outside (the worker's, whose state is
    restored and saved per area around them).
    """

    def __init__(
        self,
        topology: Topology,
        detection: Detection | None,
        *,
        sources: tuple[str, ...],
        supply_sources: frozenset[str],
        store: MutableMapping[str, Any] | None = None,
        interval_s: int = 900,
        window_s: int = 900,
        allowed_lateness_s: int = 7200,
        close_delay_s: int = 900,
        clock_tolerance_s: int = 120,
        min_completeness: float = 0.98,
        max_past: timedelta | None = None,
        max_future: timedelta | None = None,
        forward_inline: bool = False,
        write_behind: bool = False,
        keep_closed: bool = False,
    ) -> None:
        self.topology = topology
        self.detection = detection
        self.supply_sources = supply_sources
        self.interval_s = interval_s
        self.window_s = window_s
        self.clock_tolerance_s = clock_tolerance_s
        self.max_past = max_past
        self.max_future = max_future
        self.forward_inline = forward_inline
        self.keep_closed = keep_closed and detection is None
        kw: dict[str, Any] = {
            "interval_s": interval_s,
            "window_s": window_s,
            "allowed_lateness_s": allowed_lateness_s,
            "close_delay_s": close_delay_s,
            "min_completeness": min_completeness,
            "sources": sources,
            "track_closed": detection is not None or self.keep_closed,
            "write_behind": write_behind,
        }
        # Windows in memory as columns, unless they must live in a (changelogged) store.
        self.engine = ColumnEngine(topology, **kw) if store is None else LineLossEngine(topology, store, **kw)
        # Batches of meters the index holds skip the per-item id pattern (checked once per meter).
        self._checked = self.engine.checked_ids if isinstance(self.engine, ColumnEngine) else None
        self._learning: list[AreaInterval] = []  # closed in this step, for the detectors at its end

    def step(
        self,
        records: Iterable[Record],
        now: datetime | None = None,
        *,
        on_error: Callable[[Record, Exception], None] | None = None,
    ) -> StepOutput:
        """Apply ``records`` in order. ``now`` (UTC) enables the wall-clock checks (too old,
        in the future); a file replayed in its own time passes None.

        ``on_error``: the policy for a record that raises (a bug, not bad input). Given, it
        is told, the record is dead-lettered as ``internal_error`` and the chunk goes on (a
        worker never dies on one record); None, the exception propagates (a run or a test).
        """
        out = StepOutput()
        for record in records:
            if on_error is None:
                self._record(record, now, out)
                continue
            try:
                self._record(record, now, out)
            except Exception as exc:
                on_error(record, exc)
                out.dead_letters.append(DeadLetter("internal_error", repr(exc), record))
        self._learn(out)
        return out

    def close_idle(self, partition: int, sources: Iterable[str]) -> StepOutput:
        """``sources`` of ``partition`` went quiet: close every window that has ended by its
        watermark (the end of a file, or a quiet topic)."""
        out = StepOutput()
        for source in sources:
            self.engine.mark_idle(partition, source)
        if self.engine.knows_partition(partition):
            self._results(self.engine.flush_idle(partition), out)
        self._learn(out)
        return out

    # ---- one record ------------------------------------------------------------------------

    def _record(self, record: Record, now: datetime | None, out: StepOutput) -> None:
        counts = out.counts
        counts["records"] += 1
        role = Role.SUPPLY if record.source in self.supply_sources else Role.CUSTOMER
        msg: Reading | DecodedBatch | None = None
        if self._checked is not None:
            msg = contracts.decode_checked(record.value, self._checked)
        if msg is None:
            try:
                msg = contracts.decode_readings(record.value)
            except InvalidRecord as exc:
                out.messages["invalid"] += 1
                out.dead_letters.append(DeadLetter(exc.reason, exc.detail, record))
                return
        # Counted by kind once decoded, so the refusals below are counted too.
        out.messages["reading" if isinstance(msg, Reading) else "batch"] += 1
        key_area = record.key.decode("utf-8", "replace") if record.key is not None else None
        if key_area is not None and key_area != msg.area_id:
            detail = f"record key {key_area!r} differs from area_id {msg.area_id!r}"
            out.dead_letters.append(DeadLetter("key_mismatch", detail, record))
            return
        if now is not None and self.max_past is not None and self.max_future is not None:
            try:
                contracts.check_time(msg.ts, now, max_past=self.max_past, max_future=self.max_future)
            except InvalidRecord as exc:
                out.dead_letters.append(DeadLetter(exc.reason, exc.detail, record))
                return
        ts = snap(msg.ts.timestamp(), interval_s=self.interval_s, tolerance_s=self.clock_tolerance_s)
        if ts is None:
            detail = f"ts {msg.ts.isoformat()} is not within {self.clock_tolerance_s}s of an interval end"
            out.dead_letters.append(DeadLetter("off_grid", detail, record))
            return
        if out.first_ts is None or ts < out.first_ts:
            out.first_ts = ts
        if out.last_ts is None or ts > out.last_ts:
            out.last_ts = ts
        # The decoded values themselves are the engine's points (meter_id, register_kwh,
        # energy_kwh, flags): no copy per reading.
        points: list[Reported]
        if isinstance(msg, Reading):
            points = [msg]
        else:
            points = list(msg.values)
            for item in msg.refused:
                err = item.error
                out.dead_letters.append(
                    DeadLetter(err.reason, err.detail, record, item.item, item.meter_id, item.raw)
                )
        counts["readings"] += len(points)
        self._ingest(record, msg.area_id, ts, points, role, out, single=isinstance(msg, Reading))

    def _ingest(
        self,
        record: Record,
        area_id: str,
        ts: int,
        points: list[Reported],
        role: Role,
        out: StepOutput,
        *,
        single: bool = False,
    ) -> None:
        got = self.engine.ingest(record.partition, area_id, ts, points, role, source=record.source)
        counts = out.counts
        counts["accepted"] += got.accepted
        if got.duplicates or got.replaced:
            counts["duplicate"] += got.duplicates
            counts["replaced"] += got.replaced
        for refusal in got.refused:
            out.refused.append(
                Refused(refusal.reason, refusal.detail, record, area_id, ts, refusal.point, single)
            )
        # Results (and first closes) before the forwards' own: the order a run replays them in.
        if got.results or self.detection is not None or self.keep_closed:
            self._results(got.results, out)
        for fwd in got.forwards:
            counts["rerouted"] += len(fwd.points)
            moved = Forward(fwd.area_id, fwd.ts, [rerouted(p) for p in fwd.points])
            if self.forward_inline:
                self._ingest(record, moved.area_id, moved.ts, moved.points, role, out)
            else:
                out.forwards.append((record.source, moved))
        for direct in got.directs:  # only a sharded archive has a meter directory
            counts["directed"] += len(direct.points)
            out.directs.append((record.source, area_id, direct))

    def _results(self, results: list[LossResult], out: StepOutput) -> None:
        revision = self.engine.revision
        out.results.extend((r, revision(r)) for r in results)
        detection = self.detection
        if detection is None:
            if self.keep_closed:
                out.closed.extend(self.engine.pop_closed())
            return
        for closed in self.engine.pop_closed():
            out.windows_closed += 1
            area = closed.result.area_id
            intervals = closed_intervals(detection, closed, self.topology, self.interval_s, self.window_s)
            if intervals:
                self._learning.extend(intervals)
                out.learned_areas.add(area)

    def _learn(self, out: StepOutput) -> None:
        """The detectors over every area-interval the step closed, in one call (they learn
        them in the order closed; the meter detector steps the areas of a round together)."""
        if self.detection is not None and self._learning:
            out.alerts.extend(self.detection.step(self._learning))
            self._learning = []


def closed_intervals(
    detection: Detection, closed: ClosedWindow, topology: Topology, interval_s: int, window_s: int
) -> list[AreaInterval]:
    """The area-intervals the detectors learn from a window closed for the first time (the
    step's and the worker's one way there)."""
    r = closed.result
    return window_intervals(
        detection,
        r.area_id,
        r.window_start,
        closed.points,
        topology,
        interval_s=interval_s,
        window_s=window_s,
    )


def merge(into: StepOutput, more: StepOutput) -> None:
    """Append ``more`` to ``into`` (a run made of several steps)."""
    into.results.extend(more.results)
    into.alerts.extend(more.alerts)
    into.dead_letters.extend(more.dead_letters)
    into.refused.extend(more.refused)
    into.forwards.extend(more.forwards)
    into.directs.extend(more.directs)
    into.learned_areas |= more.learned_areas
    into.closed.extend(more.closed)
    into.windows_closed += more.windows_closed
    into.counts.update(more.counts)
    into.messages.update(more.messages)
    for ts in (more.first_ts, more.last_ts):
        if ts is not None:
            into.first_ts = ts if into.first_ts is None else min(into.first_ts, ts)
            into.last_ts = ts if into.last_ts is None else max(into.last_ts, ts)
