"""Unit tests for streams/chunks.py: a chunk's records ingested in groups leave the engine
exactly as ingesting them one by one does (no Kafka)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from streams.chunks import Group, Prepared
from streams.engine import LineLossEngine, Outcome, Point
from tests.streams.test_engine import QH, T0, make_topology
from topology import Role

METERS = {"A": ["S", "c1", "c2", "c3", "b1", "ghost"], "B": ["SB", "b1", "c1"]}


def engine() -> LineLossEngine:
    return LineLossEngine(
        make_topology(),
        {},
        interval_s=QH,
        window_s=QH,
        allowed_lateness_s=2 * QH,
        close_delay_s=QH,
        min_completeness=0.98,
        sources=("readings",),
    )


def random_records(rng: random.Random, n: int) -> list[Prepared]:
    """Singles as a concentrator sends them, with what goes wrong: repeats (same or new
    value), late and out-of-order intervals, unknown meters, meters of another area, supply
    meters under the customer role."""
    out = []
    ts = T0 + QH
    for offset in range(n):
        if rng.random() < 0.15:
            ts += QH * rng.choice([1, 1, 1, -1, -4])
        area = "A" if rng.random() < 0.8 else "B"
        meter = rng.choice(METERS[area])
        register = round((ts - T0) / QH * 1.5 + rng.choice([0.0, 0.0, 0.0, 0.5]), 3)
        point = Point(meter, register, None)
        out.append(Prepared("readings", 0, offset, area.encode(), b"raw", Role.CUSTOMER, area, ts, [point]))
    return out


def summary(outs: list[Outcome]) -> dict[str, Any]:
    return {
        "accepted": sum(o.accepted for o in outs),
        "duplicates": sum(o.duplicates for o in outs),
        "replaced": sum(o.replaced for o in outs),
        "late": sum(o.late for o in outs),
        "refused": Counter((r.reason, r.point.meter_id) for o in outs for r in o.refused),
        "forwards": Counter((f.area_id, p.meter_id) for o in outs for f in o.forwards for p in f.points),
        "results": [r for o in outs for r in o.results],
    }


@pytest.mark.parametrize("seed", range(40))
def test_grouped_ingest_equals_one_by_one(seed: int) -> None:
    records = random_records(random.Random(seed), 300)

    alone = engine()
    outs_alone = [
        alone.ingest(r.partition, r.area_id, r.ts, r.points, r.role, source=r.topic) for r in records
    ]

    grouped = engine()
    groups: list[Group] = []
    for r in records:
        if groups and groups[-1].takes(r):
            groups[-1].add(r)
        else:
            groups.append(Group(r))
    outs_grouped = [
        grouped.ingest(g.partition, g.area_id, g.ts, g.points, g.role, source=g.topic) for g in groups
    ]

    assert len(groups) < len(records)  # something was grouped
    a, b = summary(outs_alone), summary(outs_grouped)
    # Results come out once per group instead of once per record; the latest per area-window
    # (the answer) is the same, and so is the engine's state.
    latest_alone = {r.key(): r for r in a.pop("results")}
    latest_grouped = {r.key(): r for r in b.pop("results")}
    assert latest_alone == latest_grouped
    assert a == b
    alone.persist()
    grouped.persist()
    assert alone.store == grouped.store
    assert alone._emitted == grouped._emitted


def test_refusal_is_traced_to_its_own_record() -> None:
    records = [
        Prepared(
            "readings",
            3,
            40 + i,
            b"A",
            f"raw{i}".encode(),
            Role.CUSTOMER,
            "A",
            T0 + QH,
            [Point(m, 1.0, None)],
        )
        for i, m in enumerate(["c1", "nobody", "c2"])
    ]
    group = Group(records[0])
    for r in records[1:]:
        assert group.takes(r)
        group.add(r)
    out = engine().ingest(3, "A", T0 + QH, group.points, Role.CUSTOMER)
    [refusal] = out.refused
    assert refusal.reason == "unknown_meter"
    assert group.origin(refusal.point) == (41, b"A", b"raw1")
