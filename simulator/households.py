"""Realistic households (``SimSpec(households="realistic")``): residential load as smart-meter
trials show it, not a smooth shape with a little noise.

Each household has its own level (daily energy log-normal across homes, median 8 kWh, sigma
0.75: 1-2 kWh to 40+ kWh a day), an always-on base (fridge, standby: 20-40% of its mean), a
shaped activity load with its own timing (peaks shifted by up to 1.5 h) and day-to-day swing, and
appliance events (kettle, oven, washer, shower: 1-6 kW for 10-90 minutes, a third of its energy)
that make a quarter-hour peak several times its mean. Days differ by the household's own swing,
weekday / weekend habits, and a weather series shared by the city that moves weather-sensitive
homes (electric heating) most. Occupancy changes: days out, away spells (holidays, 3-14 days:
base load only), guests (activity x 1.5) and new tenants (a vacancy of 0-7 days, then another
level). A tenth of the meters register in 0.1 kWh steps. docs/simulator.md gives the figures
and their sources.

Deterministic for a seed: the plan (levels, habits, occupancy) is drawn once from
``(seed, HOUSEHOLD, 0)`` and each day's draws from ``(seed, HOUSEHOLD, 1, day)``.

>>> from simulator.synth import Sim, SimSpec
>>> from simulator.anomalies import AnomalySpec
>>> sim = Sim.build(SimSpec(seed=3, areas=2, days=2, households="realistic",
...                         anomalies=AnomalySpec.only({})))
>>> flow = np.concatenate([c.flow_kwh for c in sim.chunks()], axis=1)
>>> bool((flow >= 0).all()), flow.shape[1]
(True, 192)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulator.shapes import RESIDENTIAL, class_shapes

HOUSEHOLDS = ("smooth", "realistic")
MEDIAN_DAILY_KWH = 8.0  # Ofgem TDCV medium: 2,900 kWh a year
LEVEL_SIGMA = 0.75  # log-normal across homes: quartiles ~4.8 / 13 kWh a day (TDCV low 5, high 12)
BASE_SHARE = (0.2, 0.4)  # always-on load as a share of the household's mean
EVENT_SHARE = 0.33  # share of the energy in appliance events
EVENT_KW = (2.0, 0.45)  # event power: log-normal median kW, sigma (kettle 3, oven 2, washer 2)
EVENT_MINUTES = (10, 90)
ACTIVITY_SIGMA = 0.35  # per-interval noise of the activity load
DAY_SIGMA = (0.15, 0.35)  # a household's own day-to-day swing (log-normal sigma)
WEEKEND_SIGMA = 0.15  # a household's weekend level against its weekdays
SHIFT_INTERVALS = 6  # activity timing shifted by up to this many intervals either way
WEATHER_PHI, WEATHER_SIGMA = 0.7, 0.12  # AR(1) weather series; effect of one sd at full sensitivity
BETA = (0.0, 1.0)  # weather sensitivity of a household (electric heating: high)
# Occupancy changes, per household and 30 days (Poisson rates) unless said otherwise.
DAY_OUT = 0.05  # chance of any day being out (activity x 0.3)
AWAY_RATE, AWAY_DAYS = 0.15, (3, 14)
GUEST_RATE, GUEST_DAYS = 0.05, (2, 7)
TENANT_RATE, VACANCY_DAYS = 0.03, (0, 7)
COARSE_SHARE = 0.1  # meters registering 0.1 kWh steps instead of 0.01


def household_levels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mean power (kW) of ``n`` households: daily energy log-normal (median 8 kWh, sigma 0.75)."""
    return np.asarray(MEDIAN_DAILY_KWH / 24 * np.exp(LEVEL_SIGMA * rng.standard_normal(n)))


@dataclass
class Households:
    """The residential meters' habits and occupancy over a run, and their load a day at a time."""

    meters: np.ndarray  # (H,) customer meter indices
    level_kw: np.ndarray  # (H,) mean power of the first tenant
    base_share: np.ndarray
    day_sigma: np.ndarray
    weekend: np.ndarray  # weekend level factor
    beta: np.ndarray  # weather sensitivity
    shift: np.ndarray  # activity timing, intervals
    weather: np.ndarray  # (days,) city-wide weather series (standard units)
    activity: np.ndarray  # (H, days) occupancy factor of activity and events
    base: np.ndarray  # (H, days) factor of the always-on load
    level: np.ndarray  # (H, days) level factor (a new tenant's level / the first one's)
    coarse: np.ndarray  # (H,) registers in 0.1 kWh steps
    events: list[dict[str, Any]] = field(default_factory=list)  # occupancy changes, for analysis

    @classmethod
    def plan(
        cls, rng: np.random.Generator, meters: np.ndarray, level_kw: np.ndarray, days: int
    ) -> Households:
        n = len(meters)
        shock = rng.standard_normal(days)
        weather = shock.copy()
        for d in range(1, days):  # AR(1), stationary with unit variance
            weather[d] = WEATHER_PHI * weather[d - 1] + math.sqrt(1 - WEATHER_PHI**2) * shock[d]
        activity = np.where(rng.random((n, days)) < DAY_OUT, 0.3, 1.0)
        base = np.ones((n, days))
        level = np.ones((n, days))
        events: list[dict[str, Any]] = []
        scale = days / 30

        def spells(rate: float, span: tuple[int, int]) -> list[tuple[int, int, int]]:
            count = rng.poisson(rate * scale, n)
            out = []
            for h in np.flatnonzero(count):
                for _ in range(int(count[h])):
                    length = int(rng.integers(span[0], span[1] + 1))
                    first = int(rng.integers(0, days))
                    out.append((int(h), first, min(days, first + length)))
            return out

        for h, d0, d1 in spells(AWAY_RATE, AWAY_DAYS):
            activity[h, d0:d1] = 0.0
            base[h, d0:d1] = rng.uniform(0.5, 0.9)  # heating and lights off, fridge on
            events.append({"meter": int(meters[h]), "kind": "away", "first_day": d0, "last_day": d1 - 1})
        for h, d0, d1 in spells(GUEST_RATE, GUEST_DAYS):
            activity[h, d0:d1] *= 1.5
            events.append({"meter": int(meters[h]), "kind": "guests", "first_day": d0, "last_day": d1 - 1})
        moved = rng.random(n) < 1 - math.exp(-TENANT_RATE * scale)
        for h in np.flatnonzero(moved):
            d0 = int(rng.integers(1, max(2, days)))
            vacant = int(rng.integers(VACANCY_DAYS[0], VACANCY_DAYS[1] + 1))
            activity[h, d0 : d0 + vacant] = 0.0
            base[h, d0 : d0 + vacant] = 0.3
            new = float(household_levels(rng, 1)[0])
            level[h, d0 + vacant :] = new / level_kw[h]
            events.append(
                {
                    "meter": int(meters[h]),
                    "kind": "new_tenant",
                    "first_day": d0,
                    "last_day": days - 1,
                    "vacant_days": vacant,
                    "level_change": round(new / float(level_kw[h]), 3),
                }
            )
        return cls(
            meters=meters,
            level_kw=level_kw,
            base_share=rng.uniform(*BASE_SHARE, n),
            day_sigma=rng.uniform(*DAY_SIGMA, n),
            weekend=np.exp(WEEKEND_SIGMA * rng.standard_normal(n)),
            beta=rng.uniform(*BETA, n),
            shift=rng.integers(-SHIFT_INTERVALS, SHIFT_INTERVALS + 1, n),
            weather=weather,
            activity=activity,
            base=base,
            level=level,
            coarse=rng.random(n) < COARSE_SHARE,
            events=sorted(events, key=lambda e: (e["first_day"], e["meter"], e["kind"])),
        )

    def flow(
        self, rng: np.random.Generator, day: int, ends: np.ndarray, *, interval_s: int, utc_offset_h: float
    ) -> np.ndarray:
        """True energy (kWh) of each household in the intervals ending at ``ends`` (one day)."""
        n, steps = len(self.meters), len(ends)
        dt = interval_s / 3600
        shifts = np.arange(-SHIFT_INTERVALS, SHIFT_INTERVALS + 1)
        table = np.stack(
            [
                class_shapes(ends + k * interval_s, interval_s=interval_s, utc_offset_h=utc_offset_h)[
                    RESIDENTIAL
                ]
                for k in shifts
            ]
        )
        shape = table[self.shift + SHIFT_INTERVALS]  # (H, steps)
        mid = int(ends[steps // 2]) - interval_s // 2 + int(utc_offset_h * 3600)
        weekend = (mid // 86400 + 3) % 7 >= 5
        d = min(day, self.activity.shape[1] - 1)
        level = self.level_kw * self.level[:, d] * (self.weekend if weekend else 1.0)
        common = np.exp(WEATHER_SIGMA * self.beta * self.weather[d] - (WEATHER_SIGMA * self.beta) ** 2 / 2)
        own = np.exp(self.day_sigma * rng.standard_normal(n) - self.day_sigma**2 / 2)
        act = own * common * self.activity[:, d]
        base = (level * self.base_share * self.base[:, d] * dt)[:, None] * np.exp(
            0.1 * rng.standard_normal((n, steps)) - 0.005
        )
        noise = np.exp(ACTIVITY_SIGMA * rng.standard_normal((n, steps)) - ACTIVITY_SIGMA**2 / 2)
        share = 1 - self.base_share - EVENT_SHARE
        out = base + (level * share * act * dt)[:, None] * shape * noise
        # Appliance events: as many as carry EVENT_SHARE of the energy on average, timed by the
        # household's activity shape, each a power for a duration, spread over the intervals.
        mu, sig = math.log(EVENT_KW[0]), EVENT_KW[1]
        mean_event_kwh = math.exp(mu + sig**2 / 2) * sum(EVENT_MINUTES) / 2 / 60
        rate = level * EVENT_SHARE * act * steps * dt / mean_event_kwh
        count = rng.poisson(rate)
        who = np.repeat(np.arange(n), count)
        if len(who):
            kw = np.exp(mu + sig * rng.standard_normal(len(who)))
            minutes = rng.uniform(*EVENT_MINUTES, len(who))
            cum = np.cumsum(shape[who], axis=1)
            u = rng.random(len(who)) * cum[:, -1]
            start = (cum < u[:, None]).sum(axis=1)
            span = np.maximum(1, np.ceil(minutes * 60 / interval_s)).astype(np.int64)
            per = kw * minutes / 60 / span
            for j in range(int(span.max())):
                on = span > j
                np.add.at(out, (who[on], np.minimum(start[on] + j, steps - 1)), per[on])
        return np.asarray(out)
