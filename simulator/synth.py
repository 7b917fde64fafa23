"""A synthetic city with ground truth, generated a day at a time with numpy.

Customers draw class-shaped load (residential, commercial, industrial; daily and weekly shapes)
with noise; each area's supply meter sees its customers' real energy plus technical loss (a
no-load part and a part growing with the square of the load). Meters count through their CT
multiplier into cumulative registers of 0.01 resolution. Anomalies (simulator/anomalies.py) act
on what flows, what the meters register, the archive, or delivery, and are labelled.

Deterministic for a seed: every random draw comes from a generator keyed by (seed, purpose,
day), so the load of a day does not depend on which anomalies were asked for, and a clean
city and an anomalous one with the same seed carry the same underlying load.

>>> sim = Sim.build(SimSpec(seed=1, areas=2, days=0.25, anomalies=AnomalySpec.only({})))
>>> chunk = next(sim.chunks())
>>> chunk.registers.shape == (sim.grid.meters, 25), len(sim.grid.area_ids)
(True, 2)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np

from simulator import anomalies as an
from simulator.anomalies import Anomaly, AnomalySpec
from simulator.faults import TransportSpec
from simulator.grid import Grid, build_grid
from simulator.households import HOUSEHOLDS, Households
from simulator.shapes import RESIDENTIAL, class_shapes
from simulator.thieves import ThiefSpec, plan_thieves
from topology import Topology

# Purposes of the random streams (part of the seed: changing one never shifts another).
GRID, LOAD, ANOMALY, APPLY, TRANSPORT, HOUSEHOLD, THIEVES = 1, 2, 3, 4, 5, 6, 7
NOISE_SIGMA = np.array([0.30, 0.15, 0.10])  # per-interval lognormal noise by customer class
DAY_SIGMA, METER_DAY_SIGMA = 0.05, 0.10  # city-wide (weather) and per-meter day-to-day swings


def stream(seed: int, *purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, *purpose])


@dataclass(frozen=True)
class SimSpec:
    seed: int = 7
    areas: int = 20
    meters: int | None = None  # total customer meters; when set, the number of areas follows
    days: float = 1.0
    interval_s: int = 900
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    urban_share: float = 0.7
    utc_offset_h: float = 0.0  # load shapes follow local time = UTC + this
    batches: bool = True  # concentrator batches per area and interval, else single readings
    anomalies: AnomalySpec = field(default_factory=AnomalySpec)
    transport: TransportSpec = field(default_factory=TransportSpec)
    # "smooth" (class shapes with a little noise) or "realistic" (simulator/households.py)
    households: str = "smooth"
    thieves: ThiefSpec = field(default_factory=ThiefSpec)  # several thieves per area
    area_meters: tuple[int, int] | None = None  # (min, max) customers of an area, all classes
    class_mix: tuple[float, float, float] | None = None  # residential, commercial, industrial

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.areas < 1 or (self.meters is not None and self.meters < 1):
            raise ValueError("areas and meters must be >= 1")
        if self.interval_s < 60 or 86400 % self.interval_s:
            raise ValueError(f"interval_s must divide a day, got {self.interval_s}")
        if self.start.tzinfo is None or self.start.timestamp() % self.interval_s:
            raise ValueError(f"start must be timezone-aware and on the {self.interval_s}s grid")
        if self.steps < 1:
            raise ValueError("days must cover at least one interval")
        if not 0 <= self.urban_share <= 1:
            raise ValueError("urban_share must be in [0, 1]")
        if self.households not in HOUSEHOLDS:
            raise ValueError(f"households must be one of {', '.join(HOUSEHOLDS)}, got {self.households!r}")
        if self.area_meters is not None and not 1 <= self.area_meters[0] <= self.area_meters[1]:
            raise ValueError(f"area_meters must be 1 <= min <= max, got {self.area_meters}")
        if self.class_mix is not None and (
            len(self.class_mix) != 3 or min(self.class_mix) < 0 or abs(sum(self.class_mix) - 1) > 1e-9
        ):
            raise ValueError(f"class_mix must be three shares summing to 1, got {self.class_mix}")

    @property
    def t0(self) -> int:
        return int(self.start.timestamp())

    @property
    def steps(self) -> int:
        """Intervals simulated; reads are 0..steps (read 0 is the opening register)."""
        return int(self.days * 86400 // self.interval_s)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["start"] = an.iso(self.t0)
        d["anomalies"]["counts"] = dict(self.anomalies.counts)
        d["anomalies"]["outage_hours"] = list(self.anomalies.outage_hours)
        return d


@dataclass
class Chunk:
    """Up to one day of the city: reads ``c0..c0+T`` (column 0 was the previous chunk's last)."""

    c0: int
    times: np.ndarray  # (T+1,) epoch seconds of the reads
    registers: np.ndarray  # (M, T+1) customer registers as reported, 0.01 resolution
    supply_registers: np.ndarray  # (A, T+1)
    missing: np.ndarray  # (M, T+1) reads a meter never sent
    flow_kwh: np.ndarray  # (M, T) energy each customer really used per interval
    supply_kwh: np.ndarray  # (A, T) energy into each area: its customers' use + technical loss


@dataclass
class Sim:
    spec: SimSpec
    grid: Grid
    anomalies: list[Anomaly]
    households: Households | None = None  # realistic households' habits and occupancy

    @classmethod
    def build(cls, spec: SimSpec) -> Sim:
        realistic = spec.households == "realistic"
        grid = build_grid(
            stream(spec.seed, GRID),
            areas=spec.areas,
            meters=spec.meters,
            urban_share=spec.urban_share,
            area_meters=spec.area_meters,
            class_mix=spec.class_mix,
            household_rng=stream(spec.seed, HOUSEHOLD, 1) if realistic else None,
        )
        planned = an.plan(
            grid,
            spec.anomalies,
            stream(spec.seed, ANOMALY),
            steps=spec.steps,
            interval_s=spec.interval_s,
            t0=spec.t0,
        )
        if spec.thieves.area_share > 0:
            used = {a.index for a in planned if a.role == "customer"}
            planned += plan_thieves(
                grid,
                spec.thieves,
                stream(spec.seed, THIEVES),
                steps=spec.steps,
                interval_s=spec.interval_s,
                used=used,
            )
        households = None
        if realistic:
            res = np.flatnonzero(grid.customer_class == RESIDENTIAL)
            days = -(-spec.steps * spec.interval_s // 86400)
            households = Households.plan(stream(spec.seed, HOUSEHOLD, 0), res, grid.mean_kw[res], days)
            coarse = res[households.coarse]
            grid.register_start[coarse] = np.floor(grid.register_start[coarse] * 10) / 10
        return cls(spec, grid, planned, households)

    def topology(self) -> Topology:
        return self.grid.topology()

    def time(self, read: int) -> int:
        return self.spec.t0 + read * self.spec.interval_s

    def chunks(self) -> Iterator[Chunk]:
        spec, grid = self.spec, self.grid
        for a in self.anomalies:
            a.stats.clear()
        dt = spec.interval_s / 3600
        per_day = 86400 // spec.interval_s
        cls = grid.customer_class.astype(np.int64)
        sigma = NOISE_SIGMA[cls][:, None]
        mean_kwh = grid.area_mean_kw() * dt  # expected load of an interval, per area
        acc = grid.register_start.astype(float)  # the meter's true count, register units
        offset = np.zeros(grid.meters)  # steps from rollbacks and swaps, carried forward
        s_acc = grid.supply_register_start.astype(float)
        last, s_last = grid.register_start.copy(), grid.supply_register_start.copy()
        for c0 in range(0, spec.steps, per_day):
            steps = min(per_day, spec.steps - c0)
            times = spec.t0 + (c0 + np.arange(steps + 1)) * spec.interval_s
            rng = stream(spec.seed, LOAD, c0 // per_day)
            shapes = class_shapes(times[1:], interval_s=spec.interval_s, utc_offset_h=spec.utc_offset_h)
            day = np.exp(DAY_SIGMA * rng.standard_normal() - DAY_SIGMA**2 / 2)
            meter_day = np.exp(METER_DAY_SIGMA * rng.standard_normal(grid.meters) - METER_DAY_SIGMA**2 / 2)
            flow = rng.standard_normal((grid.meters, steps))
            flow *= sigma
            flow -= sigma**2 / 2
            np.exp(flow, out=flow)
            flow *= (grid.mean_kw * meter_day * day * dt)[:, None]
            flow *= shapes[cls]
            hh = self.households
            if hh is not None:
                flow[hh.meters] = hh.flow(
                    stream(spec.seed, HOUSEHOLD, 2, c0 // per_day),
                    c0 // per_day,
                    times[1:],
                    interval_s=spec.interval_s,
                    utc_offset_h=spec.utc_offset_h,
                )
            an.apply_flow(self.anomalies, flow, c0, interval_s=spec.interval_s)

            load = np.add.reduceat(flow, grid.first[:-1], axis=0)
            technical = (grid.noload_share * mean_kwh)[:, None] + (grid.load_loss_share / mean_kwh)[
                :, None
            ] * load**2
            supply = load + technical

            metered = flow.copy()
            an.apply_metered(
                self.anomalies,
                flow,
                metered,
                c0,
                partial(stream, spec.seed, APPLY, c0),
                interval_s=spec.interval_s,
                mean_kw=grid.mean_kw,
                local_hour=((times[:-1] + spec.utc_offset_h * 3600) % 86400) / 3600,
            )
            units = metered / grid.multiplier[:, None]
            s_units = supply / grid.supply_multiplier[:, None]
            an.apply_units(self.anomalies, metered, supply, units, s_units, c0)
            del metered

            np.cumsum(units, axis=1, out=units)
            units += acc[:, None]
            acc = units[:, -1].copy()
            reg = np.empty((grid.meters, steps + 1))
            reg[:, 0] = last
            np.add(units, offset[:, None], out=reg[:, 1:])
            del units
            an.apply_registers(self.anomalies, reg, offset, c0)
            reg[:, 1:] = np.round(reg[:, 1:], 2)
            if hh is not None:  # registers of 0.1 kWh steps show the count they have passed
                coarse = hh.meters[hh.coarse]
                reg[coarse, 1:] = np.floor(reg[coarse, 1:] * 10 + 1e-6) / 10
            an.apply_flat(self.anomalies, reg, c0)
            last = reg[:, -1].copy()

            s_path = s_acc[:, None] + np.cumsum(s_units, axis=1)
            s_acc = s_path[:, -1].copy()
            s_reg = np.empty((len(grid.area_ids), steps + 1))
            s_reg[:, 0] = s_last
            s_reg[:, 1:] = np.round(s_path, 2)
            s_last = s_reg[:, -1].copy()

            missing = np.zeros(reg.shape, dtype=bool)
            an.apply_missing(self.anomalies, missing, c0)
            yield Chunk(c0, times, reg, s_reg, missing, flow, supply)

    def labels(self) -> list[dict[str, Any]]:
        """Labels of the injected anomalies (run ``chunks()`` first for realised figures)."""
        spec = self.spec
        out = [
            an.label(a, t0=spec.t0, interval_s=spec.interval_s, area_ids=self.grid.area_ids)
            for a in self.anomalies
        ]
        return sorted(out, key=lambda d: (d["start"], d["type"], d["entity"]))


@dataclass
class Series:
    """A whole small city in memory (tests, notebooks): reads 0..N of every meter."""

    times: np.ndarray
    registers: np.ndarray
    supply_registers: np.ndarray
    missing: np.ndarray
    flow_kwh: np.ndarray
    supply_kwh: np.ndarray


def series(sim: Sim) -> Series:
    chunks = list(sim.chunks())
    first, rest = chunks[0], chunks[1:]
    return Series(
        np.concatenate([first.times, *(c.times[1:] for c in rest)]),
        np.concatenate([first.registers, *(c.registers[:, 1:] for c in rest)], axis=1),
        np.concatenate([first.supply_registers, *(c.supply_registers[:, 1:] for c in rest)], axis=1),
        np.concatenate([first.missing, *(c.missing[:, 1:] for c in rest)], axis=1),
        np.concatenate([c.flow_kwh for c in chunks], axis=1),
        np.concatenate([c.supply_kwh for c in chunks], axis=1),
    )
