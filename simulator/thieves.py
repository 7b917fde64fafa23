"""Several thieves in one area: a share of an area's customers (up to 15%) tampering at once,
each with a theft model of simulator/theft_models.py, onsets spread over the run.

Drawn from its own random stream after the other anomalies, on meters that carry none, so a
city without thieves (``ThiefSpec()``, the default) is the city it always was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.anomalies import Anomaly
from simulator.grid import Grid
from simulator.shapes import RESIDENTIAL
from simulator.theft_models import REALISTIC_THEFTS, draw_params


@dataclass(frozen=True)
class ThiefSpec:
    """Which areas hold thieves and how many: ``area_share`` of the areas (0: none), in each
    ``count`` thieves or, when None, a share of its customers drawn in ``share``; each thief's
    model drawn from ``types``, its onset uniform over the ``onset`` part of the run; it steals
    until the end (a thief goes on until found). Residential customers only, unless
    ``residential_only`` is False."""

    area_share: float = 0.0
    share: tuple[float, float] = (0.01, 0.15)
    count: int | None = None
    types: tuple[str, ...] = REALISTIC_THEFTS
    onset: tuple[float, float] = (0.0, 0.7)
    residential_only: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.area_share <= 1:
            raise ValueError(f"thief area_share must be in [0, 1], got {self.area_share}")
        if not 0 < self.share[0] <= self.share[1] <= 1:
            raise ValueError(f"thief share must be 0 < lo <= hi <= 1, got {self.share}")
        if self.count is not None and self.count < 1:
            raise ValueError("thief count must be >= 1")
        unknown = set(self.types) - set(REALISTIC_THEFTS)
        if unknown or not self.types:
            raise ValueError(
                f"unknown theft model(s) {sorted(unknown)}; known: {', '.join(REALISTIC_THEFTS)}"
            )
        if not 0 <= self.onset[0] <= self.onset[1] <= 1:
            raise ValueError(f"thief onset must be 0 <= lo <= hi <= 1 (share of the run), got {self.onset}")


def plan_thieves(
    grid: Grid, spec: ThiefSpec, rng: np.random.Generator, *, steps: int, interval_s: int, used: set[int]
) -> list[Anomaly]:
    """The thieves of a city; ``used`` are customer meters that already carry an anomaly."""
    n_areas = len(grid.area_ids)
    chosen = int(round(spec.area_share * n_areas))
    if spec.area_share > 0:
        chosen = max(1, chosen)
    out: list[Anomaly] = []
    dt = interval_s / 3600
    for a in sorted(int(x) for x in rng.permutation(n_areas)[:chosen]):
        idx = grid.area_meters(a)
        ok = np.array([int(m) not in used for m in idx], dtype=bool)
        if spec.residential_only:
            ok &= grid.customer_class[idx] == RESIDENTIAL
        free = idx[ok]
        want = spec.count if spec.count is not None else round(rng.uniform(*spec.share) * len(idx))
        k = min(len(free), max(1, int(want)))
        for m in sorted(int(x) for x in rng.choice(free, size=k, replace=False)):
            kind = str(rng.choice(spec.types))
            first = 1 + int(rng.uniform(*spec.onset) * (steps - 1))
            params = draw_params(kind, rng, float(grid.mean_kw[m]) * dt)
            out.append(Anomaly(kind, grid.meter_ids[m], "customer", m, a, first, steps, params))
            used.add(m)
    return out
