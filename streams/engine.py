"""Event-time line-loss windows over a key-value store, with no Kafka in sight.

The worker backs ``store`` with a Faust table (changelogged, so it survives a crash); tests back
it with a dict. State is a pure function of the *set* of readings received: each window keeps,
per meter, the points (register, interval energy) keyed by interval end, so a duplicate or
re-sent reading replaces its point instead of adding to it, and replaying after a crash changes
nothing. Watermarks, which windows were emitted, and revision counters are derived and kept in
memory: after a restart they are rebuilt from the store and closed windows are emitted again
(an identical record; the latest record per area-window is the answer).

Window life: *open* while readings arrive; *closed* (first result) once the partition's
watermark passes its end by ``close_delay_s`` or the partition goes quiet; *corrected* (a new
record) when a later reading changes it; *released* (state dropped, final record) once the
watermark passes its end by ``allowed_lateness_s``. Readings for released windows are late.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from models.lineloss import LossResult, evaluate_window
from models.windows import window_of, windows_touched
from topology import Role, Topology

REROUTED = "rerouted"
_WM_PREFIX = "~wm|"  # store key of a partition's per-source watermarks; area ids cannot hold "~"


@dataclass(slots=True)
class Point:
    meter_id: str
    register_kwh: float | None
    energy_kwh: float | None
    flags: tuple[str, ...] = ()


@dataclass(slots=True)
class Refusal:
    point: Point
    reason: str
    detail: str


@dataclass(slots=True)
class Forward:
    """Points to send on to another area's key (the archive maps the meter elsewhere)."""

    area_id: str
    ts: int
    points: list[Point]


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    """An area-window closed for the first time in this process, with the points it held
    (meter -> interval end -> (register, interval energy)): what the detectors learn from."""

    result: LossResult
    partition: int
    points: dict[str, dict[int, tuple[float | None, float | None]]]


@dataclass(slots=True)
class Outcome:
    accepted: int = 0
    duplicates: int = 0
    replaced: int = 0
    late: int = 0
    refused: list[Refusal] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    results: list[LossResult] = field(default_factory=list)


def window_key(area_id: str, window_start: int) -> str:
    return f"{area_id}|{window_start}"


def split_key(key: str) -> tuple[str, int]:
    area, _, start = key.rpartition("|")
    return area, int(start)


class LineLossEngine:
    def __init__(
        self,
        topology: Topology,
        store: MutableMapping[str, Any],
        *,
        interval_s: int,
        window_s: int,
        allowed_lateness_s: int,
        close_delay_s: int,
        min_completeness: float,
        sources: tuple[str, ...] = ("readings",),
        track_closed: bool = False,
    ) -> None:
        self.topology = topology
        self.track_closed = track_closed  # keep first-closed windows for pop_closed()
        self.sources = sources
        self.store = store
        self.interval_s = interval_s
        self.window_s = window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.close_delay_s = close_delay_s
        self.min_completeness = min_completeness
        # partition -> min over its sources (topics) of the newest event time seen from each:
        # readings and supply topics are consumed independently and can drift hours apart.
        self.watermark: dict[int, int] = {}
        self._source_wm: dict[int, dict[str, int]] = {}
        self._idle_sources: set[tuple[int, str]] = set()
        self._open: dict[int, dict[int, set[str]]] = {}  # partition -> window start -> keys
        self._emitted: dict[str, LossResult] = {}
        self._revision: dict[str, int] = {}
        self._closed: list[ClosedWindow] = []

    # ---- partitions ------------------------------------------------------------------------

    def knows_partition(self, partition: int) -> bool:
        return partition in self._open

    def recover_partition(self, partition: int) -> int:
        """Rebuild the in-memory index of one partition from the store; returns windows found."""
        index: dict[int, set[str]] = {}
        for key, value in list(self.store.items()):
            if key.startswith(_WM_PREFIX) or not value or value.get("p") != partition:
                continue
            _, start = split_key(key)
            index.setdefault(start, set()).add(key)
        self._open[partition] = index
        saved = self.store.get(f"{_WM_PREFIX}{partition}") or {}
        self._source_wm[partition] = dict(saved.get("sources", {}))
        self.watermark[partition] = int(saved.get("watermark", 0))
        self._update_watermark(partition)
        return sum(len(keys) for keys in index.values())

    def _update_watermark(self, partition: int) -> None:
        # A source not heard from yet counts as 0 until it is marked idle: a topic that starts
        # first must not release windows before the other has delivered anything.
        seen = self._source_wm.get(partition) or {}
        active = [seen.get(src, 0) for src in self.sources if (partition, src) not in self._idle_sources]
        candidate = min(active) if active else max(seen.values(), default=0)
        # Never backwards: a source returning from idle must not reopen released windows.
        self.watermark[partition] = max(self.watermark.get(partition, 0), candidate)

    def is_idle(self, partition: int, source: str) -> bool:
        return (partition, source) in self._idle_sources

    def mark_idle(self, partition: int, source: str) -> None:
        """A source that went quiet stops holding the partition's watermark back."""
        if (partition, source) not in self._idle_sources:
            self._idle_sources.add((partition, source))
            self._update_watermark(partition)

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop derived state of partitions this worker no longer owns."""
        for p in partitions:
            for keys in self._open.pop(p, {}).values():
                for key in keys:
                    self._emitted.pop(key, None)
                    self._revision.pop(key, None)
            self.watermark.pop(p, None)
            self._source_wm.pop(p, None)

    def partitions(self) -> list[int]:
        return sorted(self._open)

    def open_windows(self) -> int:
        return sum(len(keys) for idx in self._open.values() for keys in idx.values())

    # ---- ingest ----------------------------------------------------------------------------

    def ingest(
        self,
        partition: int,
        area_id: str,
        ts: int,
        points: list[Point],
        role: Role,
        source: str = "readings",
    ) -> Outcome:
        """Apply the points of one interval end reported under ``area_id``'s key, read from
        ``source`` (the topic; each source advances its own watermark)."""
        if partition not in self._open:
            self.recover_partition(partition)
        out = Outcome()
        watermark = self.watermark.get(partition, 0)
        changes: dict[str, dict[str, list[float | None]]] = {}
        forwards: dict[str, dict[str, Point]] = {}  # target area -> meter -> point
        for point in points:
            starts = (
                windows_touched(ts, interval_s=self.interval_s, window_s=self.window_s)
                if point.register_kwh is not None
                else [window_of(ts, interval_s=self.interval_s, window_s=self.window_s)]
            )
            own = starts[0]
            rec = self.topology.meter_at(point.meter_id, _dt(own))
            if rec is None:
                out.refused.append(Refusal(point, "unknown_meter", _unknown(point, ts)))
                continue
            if rec.role is not role:
                detail = f"meter {point.meter_id!r} is a {rec.role.value} meter in the archive"
                out.refused.append(Refusal(point, "role_mismatch", detail))
                continue
            applied = False
            all_late = True
            misrouted = forwarded = False
            for start in starts:
                target = rec if start == own else self.topology.meter_at(point.meter_id, _dt(start))
                if target is None:
                    continue
                if start + self.window_s + self.allowed_lateness_s < watermark:
                    continue  # that window is released
                all_late = False
                if target.area_id != area_id:
                    # Forward once: a forwarded reading only feeds its own area's windows.
                    if REROUTED not in point.flags:
                        forwards.setdefault(target.area_id, {})[point.meter_id] = point
                        forwarded = True
                    else:
                        misrouted = True
                    continue
                key = window_key(area_id, start)
                meter_points = changes.setdefault(key, {})
                meter_points[point.meter_id] = [point.register_kwh, point.energy_kwh]
                applied = True
            if all_late:
                out.late += 1
                detail = f"ts {_dt(ts).isoformat()} is beyond the allowed lateness"
                out.refused.append(Refusal(point, "late", detail))
            elif applied:
                out.accepted += 1
            elif misrouted and not forwarded:
                # Flagged as our own forward, yet under an area the meter is not in: a forward
                # is only ever sent to the meter's area, so this one is forged or stale.
                detail = f"meter {point.meter_id!r} is not in area {area_id!r}, yet flagged {REROUTED!r}"
                out.refused.append(Refusal(point, "misrouted", detail))
        seen_kinds = self._write(partition, ts, changes)
        out.duplicates, out.replaced = seen_kinds
        for target_area, fwd_points in forwards.items():
            out.forwards.append(Forward(target_area, ts, list(fwd_points.values())))
        if changes:
            self._advance_source(partition, source, ts)
        out.results = self._advance(partition, touched=set(changes))
        return out

    def _write(
        self, partition: int, ts: int, changes: dict[str, dict[str, list[float | None]]]
    ) -> tuple[int, int]:
        # A boundary register is stored in two windows but is one reading: count per meter.
        duplicates: set[str] = set()
        replaced: set[str] = set()
        sts = str(ts)
        index = self._open.setdefault(partition, {})
        for key, meters in changes.items():
            value = self.store.get(key) or {"p": partition, "m": {}}
            for meter_id, pair in meters.items():
                meter_points = value["m"].setdefault(meter_id, {})
                before = meter_points.get(sts)
                if before is not None:
                    (duplicates if list(before) == pair else replaced).add(meter_id)
                meter_points[sts] = pair
            self.store[key] = value  # reassign: a Faust table changelogs on set, not on mutate
            index.setdefault(split_key(key)[1], set()).add(key)
        return len(duplicates), len(replaced - duplicates)

    def _advance_source(self, partition: int, source: str, ts: int) -> None:
        if (partition, source) in self._idle_sources:
            self._idle_sources.discard((partition, source))
            self._update_watermark(partition)
        sources = self._source_wm.setdefault(partition, {})
        if ts > sources.get(source, 0):
            sources[source] = ts
            # Persisted (one small write per interval and source) so a restart resumes with the
            # same watermark instead of one guessed from the newest point stored.
            self._update_watermark(partition)
            self.store[f"{_WM_PREFIX}{partition}"] = {
                "sources": dict(sources),
                "watermark": self.watermark[partition],
            }

    # ---- closing ---------------------------------------------------------------------------

    def _advance(self, partition: int, *, touched: set[str], idle: bool = False) -> list[LossResult]:
        # idle=True runs from a timer, outside stream iteration, where a Faust table may be
        # read but not written: it closes windows but leaves releasing to the next record.
        watermark = self.watermark.get(partition, 0)
        index = self._open.get(partition, {})
        results: list[LossResult] = []
        for start in sorted(index):
            end = start + self.window_s
            release = not idle and end + self.allowed_lateness_s < watermark
            ended = end + self.close_delay_s <= watermark or (idle and end <= watermark)
            close = release or ended or end + self.allowed_lateness_s < watermark
            if not close:
                break  # later windows end later still
            for key in sorted(index[start]):
                if key in self._emitted and key not in touched and not release:
                    continue
                evaluated = self._evaluate(key)
                if evaluated is not None and self._emitted.get(key) != evaluated[0]:
                    result = evaluated[0]
                    if self.track_closed and key not in self._emitted:
                        self._closed.append(ClosedWindow(result, partition, evaluated[1]))
                    self._emitted[key] = result
                    self._revision[key] = self._revision.get(key, -1) + 1
                    results.append(result)
            if release:
                for key in index.pop(start):
                    self.store.pop(key, None)
                    self._emitted.pop(key, None)
                    self._revision.pop(key, None)
        return results

    def flush_idle(self, partition: int) -> list[LossResult]:
        """Close every window that has ended by the watermark of a quiet partition.

        Reads the store only, so it may run outside stream iteration (from a timer).
        """
        return self._advance(partition, touched=set(), idle=True)

    def pop_closed(self) -> list[ClosedWindow]:
        """Windows closed for the first time since the last call, in closing order (per
        partition, oldest window first). After a restart, windows closed before it come again:
        consumers must be idempotent (the detectors skip intervals they learned)."""
        closed, self._closed = self._closed, []
        return closed

    def revision(self, result: LossResult) -> int:
        return self._revision.get(result.key(), 0)

    def _evaluate(
        self, key: str
    ) -> tuple[LossResult, dict[str, dict[int, tuple[float | None, float | None]]]] | None:
        value = self.store.get(key)
        if not value:
            return None
        area_id, start = split_key(key)
        data = {
            meter_id: {int(t): (pair[0], pair[1]) for t, pair in pts.items()}
            for meter_id, pts in value["m"].items()
        }
        result = evaluate_window(
            area_id,
            start,
            data,
            self.topology,
            interval_s=self.interval_s,
            window_s=self.window_s,
            min_completeness=self.min_completeness,
        )
        return result, data


@lru_cache(maxsize=8192)
def _dt(ts: int) -> datetime:
    # Called per reading and window; the same few window starts recur (profiled: 11% of a batch run).
    return datetime.fromtimestamp(ts, UTC)


def _unknown(point: Point, ts: int) -> str:
    return f"meter {point.meter_id!r} is not in the archive at {_dt(ts).isoformat()}"
