"""A small synthetic city with known answers: areas, meters, load curves and registers.

Deterministic for a seed. Customers draw daily-shaped load with noise; each area's supply meter
records the customers' energy plus technical loss (a no-load part and a part growing with the
square of the load). Anomalies are applied to what the *meters report*, not to what flows, so
an area with a thief shows high loss, and a mis-mapped customer shows one area negative and
another high.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from topology import Area, MeterRecord, Role, Topology

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CitySpec:
    areas: int = 20
    meters_per_area: int = 50
    days: float = 1.0
    interval_s: int = 900
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    seed: int = 7
    theft_areas: tuple[int, ...] = ()  # area indices with a thief taking `theft_share`
    theft_share: float = 0.8
    thieves_per_area: int = 10
    negative_areas: tuple[int, ...] = ()  # supply meter under-registers by `negative_share`
    negative_share: float = 0.2
    outage_areas: tuple[int, ...] = ()  # a quarter of customers silent for `outage_intervals`
    outage_intervals: int = 8


@dataclass
class City:
    spec: CitySpec
    topology: Topology
    area_ids: list[str]
    # per area: customer meter ids, supply meter id
    customers: dict[str, list[str]]
    supply: dict[str, str]
    # registers[meter] = array of register values at interval ends 0..T (T+1 points)
    registers: dict[str, np.ndarray] = field(default_factory=dict)
    # (meter, interval index) pairs that are not reported (outages)
    missing: set[tuple[str, int]] = field(default_factory=set)

    @property
    def times(self) -> list[int]:
        """Interval-end epoch seconds, index 0 is the starting register read."""
        t0 = int(self.spec.start.timestamp())
        n = int(self.spec.days * 86400 // self.spec.interval_s)
        return [t0 + i * self.spec.interval_s for i in range(n + 1)]


def build(spec: CitySpec) -> City:
    rng = np.random.default_rng(spec.seed)
    topo = Topology()
    area_ids = [f"A{a:04d}" for a in range(spec.areas)]
    n_steps = int(spec.days * 86400 // spec.interval_s)
    t0 = int(spec.start.timestamp())
    hours = ((np.arange(1, n_steps + 1) * spec.interval_s + t0) % 86400) / 3600.0
    # Residential-like daily shape: night trough, morning bump, evening peak.
    shape = 0.35 + 0.25 * np.exp(-((hours - 8) ** 2) / 4) + 0.6 * np.exp(-((hours - 19.5) ** 2) / 6)
    city = City(spec, topo, area_ids, {}, {})
    for a, area_id in enumerate(area_ids):
        topo.set_area(Area(area_id, "urban" if a % 3 else "rural"))
        ids = [f"{area_id}-M{m:04d}" for m in range(spec.meters_per_area)]
        base_kw = rng.lognormal(mean=-0.3, sigma=0.5, size=len(ids))
        noise = rng.lognormal(0.0, 0.25, size=(len(ids), n_steps))
        kwh = base_kw[:, None] * shape[None, :] * noise * (spec.interval_s / 3600.0)
        reported = kwh.copy()
        if a in spec.theft_areas:
            reported[: spec.thieves_per_area] *= 1.0 - spec.theft_share
        load = kwh.sum(axis=0)
        # Technical loss: no-load part plus a part growing with the square of the load.
        technical = 0.01 * load.mean() + 0.03 * load**2 / load.mean()
        supply_kwh = load + technical
        supply_mult = 5.0  # CT ratio; register quantisation x this is the noise floor
        if a in spec.negative_areas:
            supply_kwh = supply_kwh * (1.0 - spec.negative_share)
        starts = rng.uniform(100.0, 20000.0, size=len(ids))
        for i, meter_id in enumerate(ids):
            topo.apply(MeterRecord(meter_id, area_id, Role.CUSTOMER, 1.0, "residential", True, EPOCH))
            city.registers[meter_id] = _registers(starts[i], reported[i])
        supply_id = f"{area_id}-S"
        topo.apply(MeterRecord(supply_id, area_id, Role.SUPPLY, supply_mult, "supply", True, EPOCH))
        city.registers[supply_id] = _registers(rng.uniform(1000, 9000), supply_kwh / supply_mult)
        city.customers[area_id] = ids
        city.supply[area_id] = supply_id
        if a in spec.outage_areas:
            silent = ids[: max(1, len(ids) // 4)]
            first = n_steps // 2
            for meter_id in silent:
                for k in range(first, min(n_steps + 1, first + spec.outage_intervals)):
                    city.missing.add((meter_id, k))
    return city


def _registers(start: float, kwh: np.ndarray) -> np.ndarray:
    # Registers resolve 0.01 kWh, as real meters do.
    return np.round(start + np.concatenate([[0.0], np.cumsum(kwh)]), 2)


@dataclass(frozen=True, slots=True)
class Message:
    """One record for Kafka: which topic kind, key, JSON value, event time."""

    kind: str  # "readings" or "supply"
    key: str
    value: dict[str, object]
    ts: int


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def messages(city: City, *, batches: bool = True) -> Iterator[Message]:
    """Readings in time order: per interval end, one concentrator batch (or single readings)
    per area for the customers, and one single reading for the supply meter."""
    for k, ts in enumerate(city.times):
        for area_id in city.area_ids:
            values = [
                {"meter_id": m, "register_kwh": float(city.registers[m][k])}
                for m in city.customers[area_id]
                if (m, k) not in city.missing
            ]
            if batches and values:
                yield Message(
                    "readings",
                    area_id,
                    {"kind": "batch", "v": 1, "area_id": area_id, "ts": iso(ts), "readings": values},
                    ts,
                )
            elif values:
                for v in values:
                    yield Message(
                        "readings",
                        area_id,
                        {"kind": "reading", "v": 1, "area_id": area_id, "ts": iso(ts), **v},
                        ts,
                    )
            supply_id = city.supply[area_id]
            yield Message(
                "supply",
                area_id,
                {
                    "kind": "reading",
                    "v": 1,
                    "area_id": area_id,
                    "ts": iso(ts),
                    "meter_id": supply_id,
                    "register_kwh": float(city.registers[supply_id][k]),
                },
                ts,
            )


def aligned_start(now: datetime, days: float, interval_s: int) -> datetime:
    """A start time such that the city's data ends a little before ``now``."""
    end = int(now.timestamp()) // interval_s * interval_s - interval_s
    return datetime.fromtimestamp(end - int(days * 86400), UTC)
