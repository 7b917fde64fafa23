"""The grid model: which meters feed which transformer area, their multipliers and roles, and
the line-loss bounds each area is judged against.

A meter's mapping is a history: every record has an ``effective_from`` and the record in force at
an instant is the latest one not after it, so a meter moved between areas counts in its new area
from the effective time on, while late readings from before still count in the old one.

>>> topo = Topology()
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> topo.apply(MeterRecord("m1", "A", Role.CUSTOMER, 1.0, "residential", True, t0))
>>> topo.apply(MeterRecord("m1", "B", Role.CUSTOMER, 1.0, "residential", True, t0 + HOUR))
>>> topo.meter_at("m1", t0).area_id, topo.meter_at("m1", t0 + HOUR).area_id
('A', 'B')
>>> sorted(topo.customer_meters("A", t0)), sorted(topo.customer_meters("A", t0 + HOUR))
(['m1'], [])
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from archive import ACTIVE, SHADOWED, SUPPLY, ArchiveBuilder, MeterArchive, Version

HOUR = timedelta(hours=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Role(StrEnum):
    """What a meter measures for its area: energy delivered into it, or energy billed."""

    CUSTOMER = "customer"
    SUPPLY = "supply"


@dataclass(frozen=True, slots=True)
class MeterRecord:
    """One version of a meter's archive entry, in force from ``effective_from``."""

    meter_id: str
    area_id: str
    role: Role
    multiplier: float
    customer_class: str
    active: bool
    effective_from: datetime

    def __post_init__(self) -> None:
        if not self.meter_id or not self.area_id:
            raise ValueError("meter_id and area_id must be non-empty")
        if not (self.multiplier > 0 and self.multiplier < 1e6):
            raise ValueError(f"multiplier must be in (0, 1e6), got {self.multiplier!r}")
        if self.effective_from.tzinfo is None:
            raise ValueError("effective_from must be timezone-aware")

    def to_dict(self) -> dict[str, object]:
        return {
            "v": 1,
            "meter_id": self.meter_id,
            "area_id": self.area_id,
            "role": self.role.value,
            "multiplier": self.multiplier,
            "customer_class": self.customer_class,
            "active": self.active,
            "effective_from": self.effective_from.isoformat().replace("+00:00", "Z"),
        }

    def topic_key(self) -> bytes:
        """Key on the compacted topology topic: meter and effective time, so compaction keeps
        every version of a meter (its history), not only the latest.

        >>> MeterRecord("m1", "A", Role.CUSTOMER, 1.0, "residential", True, EPOCH).topic_key()
        b'm1|1970-01-01T00:00:00+00:00'
        """
        return f"{self.meter_id}|{self.effective_from.isoformat()}".encode()

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> MeterRecord:
        """Build from a topology-topic record or a CSV row; raises ValueError when malformed."""
        for name in ("meter_id", "area_id"):
            if d.get(name) in (None, ""):
                raise ValueError(f"missing field {name!r}")
        multiplier = d.get("multiplier")
        try:
            return cls(
                meter_id=str(d["meter_id"]),
                area_id=str(d["area_id"]),
                role=Role(str(d.get("role") or "customer")),
                multiplier=1.0 if multiplier in (None, "") else float(str(multiplier)),
                customer_class=str(d.get("customer_class") or "residential"),
                active=_parse_bool(d.get("active", True)),
                effective_from=parse_time(str(d.get("effective_from") or "1970-01-01T00:00:00Z")),
            )
        except KeyError as exc:
            raise ValueError(f"missing field {exc.args[0]!r}") from None


@dataclass(frozen=True, slots=True)
class Bounds:
    """Qualified band of an area's loss rate: ``lower <= loss_rate <= upper``.

    >>> Bounds(0.0, 0.1).contains(0.05), Bounds(0.0, 0.1).contains(-0.02)
    (True, False)
    """

    lower: float
    upper: float

    def __post_init__(self) -> None:
        if not self.lower < self.upper:
            raise ValueError(f"lower bound {self.lower} must be below upper bound {self.upper}")

    def contains(self, loss_rate: float) -> bool:
        return self.lower <= loss_rate <= self.upper


# Common practice (docs/domain.md): small negative tolerance for clock misalignment, tighter upper
# bound in dense urban areas than on long rural feeders. Overridable per class and per area.
DEFAULT_CLASS_BOUNDS: dict[str, Bounds] = {
    "urban": Bounds(-0.01, 0.07),
    "rural": Bounds(-0.01, 0.10),
}
FALLBACK_BOUNDS = Bounds(-0.01, 0.10)


@dataclass(slots=True)
class Area:
    area_id: str
    area_class: str = "urban"
    bounds: Bounds | None = None  # per-area override of the class bounds


_INF = float("inf")
# Materialised member sets kept per (area, role): a worker evaluates its areas over and over,
# but a province's worth of MeterRecord objects is what the columns exist to avoid.
_MEMBERS_KEPT = 8192
_ROLE_OF_FLAGS = {0: Role.CUSTOMER, SUPPLY: Role.SUPPLY}


@dataclass
class Topology:
    """Meter-to-area mapping over time, and the bounds each area is judged against.

    Bulk-loaded meters live in a compact :class:`archive.MeterArchive` (:meth:`install`);
    records applied one by one afterwards (the live topology feed, tests, the simulator) live
    beside it as Python objects, and a meter touched by one moves there with its history.
    """

    class_bounds: dict[str, Bounds] = field(default_factory=lambda: dict(DEFAULT_CLASS_BOUNDS))
    areas: dict[str, Area] = field(default_factory=dict)
    archive: MeterArchive | None = None
    # meter_id -> records sorted by effective_from (parallel list of epoch seconds for bisect)
    _history: dict[str, list[MeterRecord]] = field(default_factory=dict)
    _starts: dict[str, list[float]] = field(default_factory=dict)
    # area_id -> meter ids that were ever mapped to it (candidates; filtered by time on lookup)
    _area_meters: dict[str, set[str]] = field(default_factory=dict)
    # (area_id, role) -> (valid from, valid until, members): every window of an area is judged
    # against its members, which change only when an archive record takes effect; emptied by
    # any change to the archive.
    _members: dict[tuple[str, Role], tuple[float, float, dict[str, MeterRecord]]] = field(
        default_factory=dict
    )
    version: int = 0  # bumped by every apply(): results judged before may be stale
    # meter_id -> (effective from, record) for meters with one archive record: most of them
    _only: dict[str, tuple[float, MeterRecord]] = field(default_factory=dict)
    _at: dict[float, datetime] = field(default_factory=dict)  # effective_from by POSIX seconds

    def install(self, archive: MeterArchive) -> None:
        """Replace every meter with the bulk-built ``archive`` (records applied one by one
        before are dropped: the archive is built from the whole topic, which holds them)."""
        self.archive = archive
        self._history.clear()
        self._starts.clear()
        self._area_meters.clear()
        self._only.clear()
        self._members.clear()
        self.version += 1
        # No Area per archive area: an area without one is judged with the default class's
        # bounds either way, and a province's worth of them would be a per-worker constant.

    def apply(self, record: MeterRecord) -> None:
        """Add or replace (same meter and effective_from) one archive record."""
        self._members.clear()
        self.version += 1
        history = self._history.get(record.meter_id)
        if history is None:
            history = self._history[record.meter_id] = self._take_from_archive(record.meter_id)
            self._starts[record.meter_id] = [r.effective_from.timestamp() for r in history]
        starts = self._starts[record.meter_id]
        ts = record.effective_from.timestamp()
        i = bisect.bisect_left(starts, ts)
        if i < len(starts) and starts[i] == ts:
            history[i] = record
        else:
            history.insert(i, record)
            starts.insert(i, ts)
        self._area_meters.setdefault(record.area_id, set()).add(record.meter_id)
        self.areas.setdefault(record.area_id, Area(record.area_id))
        if len(history) == 1:
            self._only[record.meter_id] = (starts[0], history[0])
        else:
            self._only.pop(record.meter_id, None)

    def _take_from_archive(self, meter_id: str) -> list[MeterRecord]:
        """The versions of a bulk-loaded meter, moved out of the columns (which stop answering
        for it) so that records applied later combine with them."""
        archive = self.archive
        i = archive.index(meter_id) if archive is not None else -1
        if archive is None or i < 0:
            return []
        history = [self._record(meter_id, v) for v in archive.versions(i)]
        archive.shadow(i)
        for rec in history:
            self._area_meters.setdefault(rec.area_id, set()).add(meter_id)
        return history

    def _record(self, meter_id: str, v: Version) -> MeterRecord:
        archive = self.archive
        assert archive is not None
        area, flags, cls, multiplier, start, _ = v
        at = self.at(start)
        return MeterRecord(
            meter_id,
            archive.area_ids[area],
            Role.SUPPLY if flags & SUPPLY else Role.CUSTOMER,
            multiplier,
            archive.classes[cls],
            bool(flags & ACTIVE),
            at,
        )

    def at(self, start: float) -> datetime:
        """The instant of POSIX seconds ``start`` (shared: records of one start share it)."""
        at = self._at.get(start)
        if at is None:
            at = self._at[start] = datetime.fromtimestamp(start, UTC)
        return at

    def meter_at(self, meter_id: str, at: datetime) -> MeterRecord | None:
        """The archive record in force for ``meter_id`` at ``at``, or None if unknown then."""
        return self.meter_at_ts(meter_id, at.timestamp())

    def meter_at_ts(self, meter_id: str, ts: float) -> MeterRecord | None:
        """:meth:`meter_at` for a POSIX timestamp."""
        return self.meter_span_ts(meter_id, ts)[0]

    def meter_span_ts(self, meter_id: str, ts: float) -> tuple[MeterRecord | None, float]:
        """The record in force at ``ts`` and when the next one takes effect (inf: none does),
        so a caller can reuse one lookup for later times before that."""
        only = self._only.get(meter_id)
        if only is not None and only[0] <= ts:
            return only[1], _INF
        starts = self._starts.get(meter_id)
        if not starts:
            archive = self.archive
            i = archive.index(meter_id) if archive is not None else -1
            if archive is None or i < 0:
                return None, _INF
            version, until = archive.span(i, ts)
            return (self._record(meter_id, version) if version is not None else None), until
        i = bisect.bisect_right(starts, ts) - 1
        until = starts[i + 1] if i + 1 < len(starts) else _INF
        return (self._history[meter_id][i] if i >= 0 else None), until

    def placement_ts(self, meter_id: str, ts: float) -> tuple[str, Role, float] | None:
        """Area and role of ``meter_id`` at ``ts`` and when its next record takes effect, or
        None if unknown then: :meth:`meter_span_ts` without building a record (the engine's
        lookup per reading)."""
        if self._starts:
            only = self._only.get(meter_id)
            if only is not None and only[0] <= ts:
                return only[1].area_id, only[1].role, _INF
        if meter_id in self._starts:
            rec, until = self.meter_span_ts(meter_id, ts)
            return (rec.area_id, rec.role, until) if rec is not None else None
        archive = self.archive
        placed = archive.locate(meter_id, ts) if archive is not None else None
        if placed is None:
            return None
        area_id, flags, until = placed
        return area_id, _ROLE_OF_FLAGS[flags & SUPPLY], until

    def area_at_ts(self, meter_id: str, ts: float) -> str | None:
        """The area ``meter_id`` is mapped to at ``ts``, or None if unknown then."""
        placed = self.placement_ts(meter_id, ts)
        return placed[0] if placed is not None else None

    def directed_partition(self, meter_id: str) -> int | None:
        """For a meter this (sharded) topology does not know: the readings partition of the
        worker that holds it, from the archive's meter directory (a hint, exact for the meters
        of the topic at the last build). None without a directory."""
        return self.archive.directed_partition(meter_id) if self.archive is not None else None

    def knows(self, meter_id: str) -> bool:
        if meter_id in self._history:
            return True
        return self.archive is not None and self.archive.index(meter_id) >= 0

    def _meters(self, area_id: str, at: datetime, role: Role) -> dict[str, MeterRecord]:
        ts = at.timestamp()
        cached = self._members.get((area_id, role))
        if cached is not None and cached[0] <= ts < cached[1]:
            return cached[2]
        members = {}
        valid_from, valid_until = float("-inf"), float("inf")
        for meter_id in self._area_meters.get(area_id, ()):
            starts = self._starts[meter_id]
            i = bisect.bisect_right(starts, ts) - 1
            if i >= 0:
                valid_from = max(valid_from, starts[i])
                rec = self._history[meter_id][i]
                if rec.area_id == area_id and rec.role is role and rec.active:
                    members[meter_id] = rec
            if i + 1 < len(starts):
                valid_until = min(valid_until, starts[i + 1])
        archive = self.archive
        if archive is not None:
            a_from, a_until, found = archive.members(area_id, ts, role is Role.SUPPLY)
            valid_from, valid_until = max(valid_from, a_from), min(valid_until, a_until)
            for i, version in found:
                meter_id = archive.meter_id(i)
                members[meter_id] = self._record(meter_id, version)
        if len(self._members) >= _MEMBERS_KEPT:
            self._members.clear()
        self._members[(area_id, role)] = (valid_from, valid_until, members)
        return members

    def customer_meters(self, area_id: str, at: datetime) -> dict[str, MeterRecord]:
        """Active customer meters mapped to ``area_id`` at ``at`` (shared: do not modify)."""
        return self._meters(area_id, at, Role.CUSTOMER)

    def supply_meters(self, area_id: str, at: datetime) -> dict[str, MeterRecord]:
        """Active supply (check) meters of ``area_id`` at ``at`` (shared: do not modify)."""
        return self._meters(area_id, at, Role.SUPPLY)

    def area_class(self, area_id: str) -> str:
        area = self.areas.get(area_id)
        return area.area_class if area else "urban"

    def bounds_for(self, area_id: str) -> Bounds:
        """Per-area override if set, else the bounds of the area's class.

        >>> t = Topology()
        >>> t.set_area(Area("A", "rural"))
        >>> t.bounds_for("A")
        Bounds(lower=-0.01, upper=0.1)
        >>> t.set_area(Area("A", "rural", Bounds(0.0, 0.04)))
        >>> t.bounds_for("A")
        Bounds(lower=0.0, upper=0.04)
        """
        area = self.areas.get(area_id)
        if area is not None and area.bounds is not None:
            return area.bounds
        cls = area.area_class if area else "urban"
        return self.class_bounds.get(cls, FALLBACK_BOUNDS)

    def set_area(self, area: Area) -> None:
        self.areas[area.area_id] = area

    def meter_count(self) -> int:
        archive = self.archive
        held = archive.size - archive.shadowed() if archive is not None else 0
        return len(self._history) + held

    # ---- loading ---------------------------------------------------------------------------

    def load_meters_csv(self, path: Path) -> int:
        """Apply every row of a meters CSV (archive_csv.read_meters: all bad rows reported at
        once, nothing applied then); returns rows applied."""
        from archive_csv import read_meters  # archive_csv builds on this module's records

        records, _ = read_meters(path)
        for record in records:
            self.apply(record)
        return len(records)

    def load_areas_csv(self, path: Path) -> int:
        """Areas CSV: ``area_id,area_class[,loss_lower,loss_upper]`` (empty bounds: class's)."""
        from archive_csv import read_areas

        areas, _ = read_areas(path)
        for area in areas:
            self.set_area(area)
        return len(areas)

    @classmethod
    def from_csv(cls, meters: Path, areas: Path | None = None) -> Topology:
        topo = cls()
        if areas is not None and areas.exists():
            topo.load_areas_csv(areas)
        topo.load_meters_csv(meters)
        return topo

    def records(self) -> Iterable[MeterRecord]:
        for history in self._history.values():
            yield from history
        archive = self.archive
        if archive is not None:
            for i, meter_id in enumerate(archive.meter_ids()):
                if not archive.flags[i] & SHADOWED:
                    for version in archive.versions(i):
                        yield self._record(meter_id, version)


def build_archive(
    records: Iterable[MeterRecord], keep_area: Callable[[str], bool] | None = None
) -> MeterArchive:
    """Columns of many records at once, in the order given (a later record of a meter and
    effective time replaces an earlier one, as with :meth:`Topology.apply`); ``keep_area``
    selects the areas held (see :class:`archive.ArchiveBuilder`)."""
    builder = ArchiveBuilder(keep_area)
    builder.add(*record_columns(list(records)))
    return builder.build()


def record_columns(
    records: Sequence[MeterRecord],
) -> tuple[list[str], list[str], list[bool], list[float], list[str], list[bool], list[float]]:
    """The fields of ``records`` as the columns :meth:`archive.ArchiveBuilder.add` takes."""
    return (
        [r.meter_id for r in records],
        [r.area_id for r in records],
        [r.role is Role.SUPPLY for r in records],
        [r.multiplier for r in records],
        [r.customer_class for r in records],
        [r.active for r in records],
        [r.effective_from.timestamp() for r in records],
    )


def parse_time(value: str) -> datetime:
    """Parse an ISO-8601 instant; a naive value is rejected rather than guessed.

    >>> parse_time("2026-01-01T00:15:00Z")
    datetime.datetime(2026, 1, 1, 0, 15, tzinfo=datetime.timezone.utc)
    """
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no timezone")
    return dt.astimezone(UTC)


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in {"1", "true", "yes", "y", "t", ""}:
        return True
    if s in {"0", "false", "no", "n", "f"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")
