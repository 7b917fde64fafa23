"""Records of a stream chunk grouped for the engine: pure, no Kafka.

The worker takes records from Faust in chunks (``take_events``). Consecutive records of one
partition, source topic, area and interval end (the single readings one concentrator sends
for one interval) become one :class:`Group`, ingested, closed and published as one call:
Faust's cost per record stays, gridwatch's own cost per record mostly goes.

A group never holds a meter twice, so what the engine sees is what it would see one record
at a time: a repeat starts a new group and is judged a duplicate or a replacement as before.

>>> from streams.engine import Point
>>> def rec(offset, meter, ts=900):
...     points = [Point(meter, 1.0, None)]
...     return Prepared("readings", 0, offset, b"A", b"raw", Role.CUSTOMER, "A", ts, points)
>>> g = Group(rec(10, "m1"))
>>> g.takes(rec(11, "m2")), g.takes(rec(11, "m1")), g.takes(rec(11, "m2", ts=1800))
(True, False, False)
>>> g.add(rec(11, "m2"))
>>> [p.meter_id for p in g.points], g.origin(g.points[1])[0]
(['m1', 'm2'], 11)
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from streams.engine import Point
from topology import Role


@dataclass(slots=True)
class Prepared:
    """One decoded, checked record: what the engine is to ingest, and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    single: bytes | None  # the record's bytes when it is a single reading (its dead letter)
    role: Role
    area_id: str
    ts: int
    points: list[Point]


class Group:
    """Consecutive records of one partition, source, area and interval end, ingested as one.

    A meter already in the group ends it, so a repeat is still seen by the engine as a
    duplicate or a replacement of what came before, as when ingested one by one.
    """

    __slots__ = (
        "topic",
        "partition",
        "role",
        "area_id",
        "ts",
        "points",
        "records",
        "prepare_s",
        "_starts",
        "_meters",
    )

    def __init__(self, first: Prepared) -> None:
        self.topic, self.partition, self.role = first.topic, first.partition, first.role
        self.area_id, self.ts = first.area_id, first.ts
        self.points: list[Point] = []
        self.records: list[tuple[int, bytes | None, bytes | None]] = []  # offset, key, single
        self.prepare_s: list[float] = []  # per record: its decoding and checks
        self._starts: list[int] = []  # index in points of each record's first point
        self._meters: set[str] | None = None  # built when a second record could join
        self.add(first)

    def takes(self, rec: Prepared) -> bool:
        if not (
            rec.area_id == self.area_id
            and rec.ts == self.ts
            and rec.partition == self.partition
            and rec.topic == self.topic
        ):
            return False
        if self._meters is None:
            self._meters = {p.meter_id for p in self.points}
        return self._meters.isdisjoint([p.meter_id for p in rec.points])

    def add(self, rec: Prepared) -> None:
        self.records.append((rec.offset, rec.key, rec.single))
        self._starts.append(len(self.points))
        self.points += rec.points
        if self._meters is not None:
            self._meters.update(p.meter_id for p in rec.points)

    def origin(self, point: Point) -> tuple[int, bytes | None, bytes | None]:
        """(offset, key, single-reading bytes or None) of the record a point came in (for a
        refusal: rare, so a search)."""
        i = next(i for i, p in enumerate(self.points) if p is point)
        return self.records[bisect.bisect_right(self._starts, i) - 1]
