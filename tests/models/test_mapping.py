"""Mapping-error finder: a customer recorded under one area and fed from another is named, with
both areas; clean areas give nothing; and on the simulator's wrong_mapping labels."""

from __future__ import annotations

import numpy as np

from models.mapping import MappingErrorFinder
from models.suspects import SuspectRanker
from simulator.anomalies import AnomalySpec
from simulator.synth import Sim, SimSpec

HOUR = 3600


def city(*, moved: bool, hours: int = 72, seed: int = 0) -> SuspectRanker:
    """Four areas of 80 customers; with ``moved``, area C's workshop W (archive: area A) is fed
    from C. Every area has its own load shape noise, no-load + load^2 technical loss and a
    supply register stepping by 1 kWh."""
    rng = np.random.default_rng(seed)
    t = np.arange(hours)
    ranker = SuspectRanker(interval_s=HOUR)
    shape = 0.6 + 0.5 * np.exp(-(((t % 24) - 19.5) ** 2) / 6)
    shift = ((t % 24 >= 7) & (t % 24 < 17)).astype(float)  # the workshop works 07-17
    workshop = 12.0 * shift * rng.lognormal(0, 0.1, hours)
    areas = {}
    for name in "ABCD":
        mean = rng.lognormal(np.log(0.5), 0.5, 80)
        real = mean[:, None] * shape * rng.lognormal(-0.01, 0.15, (80, hours))
        areas[name] = ([f"{name}{i:02d}" for i in range(80)], real)
    for h in range(hours):
        for name, (meters, real) in areas.items():
            ids, energy = list(meters), real[:, h].copy()
            fed = float(energy.sum())
            if name == "A":  # W is on A's archive (and A's concentrator bills it)
                ids.append("W")
                energy = np.append(energy, workshop[h])
                fed += 0.0 if moved else workshop[h]
            if name == "C" and moved:
                fed += workshop[h]
            supply = fed + 0.8 + 0.02 * fed**2 / 45
            ranker.observe(name, h * HOUR, ids, energy, float(np.round(supply)))
    return ranker


def test_moved_customer_is_named_with_both_areas() -> None:
    ranker = city(moved=True)
    finder = MappingErrorFinder(ranker)
    assert finder.negative_areas() == ["A"]
    found = finder.find()
    assert [(e.meter, e.recorded_area, e.likely_area) for e in found] == [("W", "A", "C")]
    e = found[0]
    assert e.share_recorded > 0.8 and e.share_likely > 0.8 and e.score > 0
    assert e.recorded_loss_rate < -0.05 < 0.05 < e.likely_loss_rate
    assert abs(e.energy_kwh - 12.0 * 10 * 3) < 0.15 * 360  # ten working hours a day, three days


def test_no_mapping_error_nothing_named() -> None:
    finder = MappingErrorFinder(city(moved=False))
    assert finder.negative_areas() == []
    assert finder.find() == []
    assert finder.find(negative=["A"]) == []  # A's loss is technical: no meter fits a mirror


def test_candidates_limit_where_the_meter_may_belong() -> None:
    ranker = city(moved=True, seed=3)
    finder = MappingErrorFinder(ranker)
    assert [e.likely_area for e in finder.find(candidates=["B", "C", "D"])] == ["C"]
    assert finder.find(candidates=["B", "D"]) == []  # the real area not offered: no false pair


def test_simulated_wrong_mappings_are_named() -> None:
    """Two wrong_mapping labels in a ten-area city, two days; the finder runs once at the end."""
    spec = SimSpec(seed=4, areas=10, days=2, anomalies=AnomalySpec.only({"wrong_mapping": 2}))
    sim = Sim.build(spec)
    grid = sim.grid
    by_area = [np.flatnonzero(grid.archive_area == a) for a in range(len(grid.area_ids))]
    ids = [[grid.meter_ids[i] for i in idx] for idx in by_area]
    ranker = SuspectRanker(interval_s=spec.interval_s)
    for chunk in sim.chunks():
        energy = np.diff(chunk.registers, axis=1) * grid.archive_multiplier[:, None]
        supply = np.diff(chunk.supply_registers, axis=1) * grid.supply_archive_multiplier[:, None]
        for j in range(energy.shape[1]):
            start = int(chunk.times[j])
            for a, idx in enumerate(by_area):
                ranker.observe(grid.area_ids[a], start, ids[a], energy[idx, j], float(supply[a, j]))
    truth = {
        (lab["entity"], lab["parameters"]["archive_area"], lab["parameters"]["actual_area"])
        for lab in sim.labels()
    }
    found = {(e.meter, e.recorded_area, e.likely_area) for e in MappingErrorFinder(ranker).find()}
    assert len(truth) == 2 and found == truth
