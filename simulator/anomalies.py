"""Injected anomalies: what goes wrong in the field, on the meters, in the archive and at the
concentrators, and the labels that say so (the ground truth a detector is scored against).

Intervals are numbered 1..N (interval ``i`` ends at register read ``i``; read 0 is the opening
register). An anomaly affects intervals ``first..last`` inclusive; its label spans
``[start, end]`` = ``[t(first - 1), t(last)]``. Each anomaly hooks into one stage of a chunk's
generation: the energy that flows (``shutdown``), the energy the meter registers (thefts,
``stopped``, ``spike``), register units (``wrong_multiplier``), register values (``rollback``,
``meter_swap``, ``flat_line``), the archive (``wrong_mapping``, ``wrong_multiplier``), or
delivery (``concentrator_outage``). See docs/simulator.md for the definitions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from simulator.grid import CT_PRIMARIES, Grid
from simulator.shapes import COMMERCIAL, INDUSTRIAL, RESIDENTIAL
from simulator.theft_models import REALISTIC_THEFTS, draw_params, reported

THEFTS = tuple(f"theft_h{i}" for i in range(1, 7))
TYPES = (
    *THEFTS,
    "stopped",
    "spike",
    "flat_line",
    "rollback",
    "meter_swap",
    "wrong_multiplier",
    "wrong_mapping",
    "concentrator_outage",
    "shutdown",
)
# The volume-price-fee watch's cases (docs/simulator.md), drawn only when counted, after the
# others (a city without them is unchanged): a shop billed as a home, and an honest home with a
# large constant load.
WATCH = ("misclassified", "large_consumer")
METERED = (*THEFTS, "stopped", "spike", *REALISTIC_THEFTS)
RUN_MIN, RUN_MAX = 4 * 3600, 12 * 3600  # h2's zeroed run, flat lines: hours
G_RANGE = (0.1, 0.8)  # h3 / h4 factor range (Jokar et al. 2016)
LARGE_EXTRA_KW = (15.0, 25.0)  # a large consumer's added constant load: 360-600 kWh a day


@dataclass(frozen=True)
class AnomalySpec:
    """How many anomalies of each type: ``counts[type]`` if given, else one per ``per_meters``
    customer meters (at least one). The theft models of simulator/theft_models.py
    (``REALISTIC_THEFTS``) only when counted here: a single thief in a fresh area each."""

    per_meters: int = 1000
    counts: Mapping[str, int] = field(default_factory=dict)
    theft_share: float | None = None  # share of energy h1 takes; None: drawn in [0.2, 0.9]
    outage_hours: tuple[float, float] = (1.0, 6.0)

    def __post_init__(self) -> None:
        unknown = set(self.counts) - set(TYPES) - set(REALISTIC_THEFTS) - set(WATCH)
        if unknown:
            known = ", ".join((*TYPES, *REALISTIC_THEFTS, *WATCH))
            raise ValueError(f"unknown anomaly type(s) {sorted(unknown)}; known: {known}")
        if any(n < 0 for n in self.counts.values()):
            raise ValueError("anomaly counts must be >= 0")
        if self.theft_share is not None and not 0 < self.theft_share <= 1:
            raise ValueError(f"theft share must be in (0, 1], got {self.theft_share}")
        if self.per_meters < 1:
            raise ValueError("per_meters must be >= 1")

    def count(self, kind: str, meters: int) -> int:
        default = 0 if kind in REALISTIC_THEFTS or kind in WATCH else max(1, meters // self.per_meters)
        return self.counts.get(kind, default)

    @classmethod
    def only(cls, counts: Mapping[str, int], **kw: Any) -> AnomalySpec:
        """Exactly ``counts``; every other type zero (``only({})`` is a clean city)."""
        return cls(counts={t: counts.get(t, 0) for t in TYPES} | dict(counts), **kw)


@dataclass
class Anomaly:
    type: str
    entity: str  # meter id, or area id for a concentrator outage
    role: str  # "customer", "supply" or "area"
    index: int  # customer meter index, or area index for supply meters and outages
    area: int  # physical area index
    first: int
    last: int
    params: dict[str, Any]
    stats: dict[str, float] = field(default_factory=dict)  # realised over the run

    def cols(self, c0: int, steps: int) -> tuple[int, int] | None:
        """Energy columns ``[lo, hi)`` of a chunk holding intervals ``c0+1..c0+steps``."""
        lo, hi = max(self.first, c0 + 1), min(self.last, c0 + steps)
        return (lo - c0 - 1, hi - c0) if lo <= hi else None


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class _Picker:
    """Targets: never the same meter twice, and a fresh area while one is left, so a label's
    area shows one cause."""

    def __init__(self, grid: Grid, rng: np.random.Generator) -> None:
        self.grid = grid
        self.rng = rng
        self.order = [int(a) for a in rng.permutation(len(grid.area_ids))]
        self.used_areas: set[int] = set()
        self.used_meters: set[int] = set()

    def area(self, ok: Callable[[int], bool] = lambda a: True) -> int | None:
        for fresh_only in (True, False):
            for a in self.order:
                if (not fresh_only or a not in self.used_areas) and ok(a):
                    self.used_areas.add(a)
                    return a
        return None

    def free(self, a: int, mask: np.ndarray | None = None) -> np.ndarray:
        idx = self.grid.area_meters(a)
        if mask is not None:
            idx = idx[mask[idx]]
        return np.array([m for m in idx if int(m) not in self.used_meters], dtype=np.int64)

    def meter(self, mask: np.ndarray | None = None, *, largest: bool = False) -> tuple[int, int] | None:
        a = self.area(lambda a: len(self.free(a, mask)) > 0)
        if a is None:
            return None
        free = self.free(a, mask)
        m = int(free[np.argmax(self.grid.mean_kw[free])]) if largest else int(self.rng.choice(free))
        self.used_meters.add(m)
        return a, m


def _span(rng: np.random.Generator, steps: int, lo: int, hi: int) -> tuple[int, int]:
    length = int(rng.integers(min(lo, steps), min(hi, steps) + 1))
    first = int(rng.integers(1, steps - length + 2))
    return first, first + length - 1


def plan(
    grid: Grid, spec: AnomalySpec, rng: np.random.Generator, *, steps: int, interval_s: int, t0: int
) -> list[Anomaly]:
    """Draw every anomaly's target, span and parameters; writes archive errors into ``grid``."""
    pick = _Picker(grid, rng)
    day, run_lo, run_hi = 86400 // interval_s, RUN_MIN // interval_s, RUN_MAX // interval_s
    out: list[Anomaly] = []

    def customer(kind: str, first: int, last: int, params: dict[str, Any], **kw: Any) -> bool:
        target = pick.meter(kw.get("mask"), largest=kw.get("largest", False))
        if target is None:
            return False
        a, m = target
        out.append(Anomaly(kind, grid.meter_ids[m], "customer", m, a, first, last, params))
        return True

    for kind in TYPES:
        for _ in range(spec.count(kind, grid.meters)):
            ok = True
            if kind == "theft_h1":
                share = spec.theft_share if spec.theft_share is not None else round(rng.uniform(0.2, 0.9), 4)
                ok = customer(
                    kind, *_span(rng, steps, run_lo, steps), {"a": round(1 - share, 6), "share": share}
                )
            elif kind == "theft_h2":
                ok = customer(kind, *_span(rng, steps, run_lo, run_hi), {})
            elif kind in ("theft_h3", "theft_h4"):
                ok = customer(kind, *_span(rng, steps, run_lo, steps), {"g_range": list(G_RANGE)})
            elif kind in ("theft_h5", "stopped"):
                ok = customer(kind, *_span(rng, steps, run_lo, steps), {})
            elif kind == "theft_h6":
                ok = customer(kind, *_span(rng, steps, day, steps), {})
            elif kind == "spike":
                ok = customer(kind, *_span(rng, steps, 1, 2), {"factor": round(rng.uniform(20, 60), 1)})
            elif kind == "flat_line":
                ok = customer(kind, *_span(rng, steps, run_lo // 2, run_hi), {})
            elif kind == "rollback":
                first, _ = _span(rng, steps, 1, 1)
                ok = customer(kind, first, first, {"drop_share": round(rng.uniform(0.05, 0.5), 3)})
            elif kind == "meter_swap":
                first, _ = _span(rng, steps, 1, 1)
                gap = int(rng.integers(0, 3))
                params = {"new_register": round(rng.uniform(0, 5), 2), "missing_reads": gap}
                ok = customer(kind, first, min(steps, first + gap), params)
            elif kind == "wrong_multiplier":
                ok = _wrong_multiplier(grid, pick, rng, out, steps)
            elif kind == "wrong_mapping":
                ok = _wrong_mapping(grid, pick, out, steps)
            elif kind == "concentrator_outage":
                ok = _outage(grid, pick, rng, out, spec, steps=steps, interval_s=interval_s, t0=t0)
            elif kind == "shutdown":
                industrial = grid.customer_class == INDUSTRIAL
                first = int(rng.integers(1, max(1, steps - 8) + 1))
                params = {
                    "ramp_hours": round(rng.uniform(2, 12), 2),
                    "residual_share": round(rng.uniform(0.02, 0.06), 3),
                }
                ok = customer(kind, first, steps, params, mask=industrial, largest=True)
            if not ok:
                break  # no target left for this type
    for kind in REALISTIC_THEFTS:  # drawn after the others: a city without them is unchanged
        for _ in range(spec.count(kind, grid.meters)):
            if not customer(kind, *_span(rng, steps, day, steps), {}):
                break
            out[-1].params = draw_params(kind, rng, float(grid.mean_kw[out[-1].index]) * interval_s / 3600)
    for _ in range(spec.count("misclassified", grid.meters)):
        # A commercial customer filed as residential for the whole run: billed at the wrong tariff.
        if not customer("misclassified", 1, steps, {}, mask=grid.customer_class == COMMERCIAL):
            break
        grid.archive_class[out[-1].index] = RESIDENTIAL
        out[-1].params["archive_class"] = "residential"
    for _ in range(spec.count("large_consumer", grid.meters)):
        # An honest home that starts a large constant load (a workshop, heat pumps, a miner).
        extra = round(float(rng.uniform(*LARGE_EXTRA_KW)), 2)
        if not customer("large_consumer", *_span(rng, steps, 2 * day, steps), {"extra_kw": extra},
                        mask=grid.customer_class == RESIDENTIAL):  # fmt: skip
            break
    for a in out:
        if a.role == "customer" and a.type in ("shutdown", "wrong_mapping"):
            a.params["mean_kw"] = round(float(grid.mean_kw[a.index]), 3)
    return out


def _wrong_multiplier(
    grid: Grid, pick: _Picker, rng: np.random.Generator, out: list[Anomaly], steps: int
) -> bool:
    first = int(rng.integers(1, steps + 1))
    ct = grid.multiplier > 1
    target = pick.meter(ct) if rng.random() < 0.5 else None
    if target is not None:
        a, index = target
        entity, role, archive = grid.meter_ids[index], "customer", float(grid.archive_multiplier[index])
    else:  # the area's supply meter: its CT was changed in the field, the archive was not
        found = pick.area()
        if found is None:
            return False
        a = index = found
        entity, role, archive = grid.supply_ids[a], "supply", float(grid.supply_archive_multiplier[a])
    primaries = np.array(CT_PRIMARIES, dtype=float)
    i = int(np.argmin(abs(primaries - archive * 5)))
    j = int(np.clip(i + rng.choice([-2, -1, 1, 2]), 0, len(primaries) - 1))
    j = j if j != i else (i + 1 if i + 1 < len(primaries) else i - 1)
    params = {"archive_multiplier": archive, "real_multiplier": float(primaries[j] / 5)}
    out.append(Anomaly("wrong_multiplier", entity, role, index, a, first, steps, params))
    return True


def _wrong_mapping(grid: Grid, pick: _Picker, out: list[Anomaly], steps: int) -> bool:
    if len(grid.area_ids) < 2:
        return False
    # The biggest free non-residential customer of the area it is really fed from...
    target = pick.meter(grid.customer_class != RESIDENTIAL, largest=True) or pick.meter(largest=True)
    if target is None:
        return False
    actual, m = target
    # ...recorded under another area: the lightest one left, where it shows most.
    load = grid.area_mean_kw()
    by_load = sorted(range(len(grid.area_ids)), key=lambda a: (load[a], a))
    archive = next((a for a in by_load if a != actual and a not in pick.used_areas), None)
    if archive is None:
        archive = next(a for a in by_load if a != actual)
    pick.used_areas.add(archive)
    grid.archive_area[m] = archive
    params = {"archive_area": grid.area_ids[archive], "actual_area": grid.area_ids[actual]}
    out.append(Anomaly("wrong_mapping", grid.meter_ids[m], "customer", m, actual, 1, steps, params))
    return True


def _outage(
    grid: Grid,
    pick: _Picker,
    rng: np.random.Generator,
    out: list[Anomaly],
    spec: AnomalySpec,
    *,
    steps: int,
    interval_s: int,
    t0: int,
) -> bool:
    a = pick.area()
    if a is None:
        return False
    hours = rng.uniform(*spec.outage_hours)
    length = int(min(steps, max(1, round(hours * 3600 / interval_s))))
    first = int(rng.integers(1, steps - length + 2))
    last = first + length - 1
    delay = int(rng.integers(1, 5)) * interval_s
    params = {
        "hours": round(length * interval_s / 3600, 4),
        "resent_at": iso(t0 + last * interval_s + delay),
        "resend_delay_s": delay,
    }
    out.append(Anomaly("concentrator_outage", grid.area_ids[a], "area", a, a, first, last, params))
    return True


# ---- applying to a chunk -------------------------------------------------------------------


def apply_flow(anomalies: Iterable[Anomaly], flow: np.ndarray, c0: int, *, interval_s: int) -> None:
    """What really flows: a shutdown ramps the customer's load down to a residual; a large
    consumer adds a constant load."""
    steps = flow.shape[1]
    for a in anomalies:
        if a.type not in ("shutdown", "large_consumer") or (c := a.cols(c0, steps)) is None:
            continue
        lo, hi = c
        if a.type == "large_consumer":
            flow[a.index, lo:hi] += a.params["extra_kw"] * interval_s / 3600
            continue
        i = np.arange(c0 + 1 + lo, c0 + 1 + hi)
        ramp = max(1.0, a.params["ramp_hours"] * 3600 / interval_s)
        done = np.minimum(1.0, (i - a.first + 1) / ramp)
        flow[a.index, lo:hi] *= 1 - (1 - a.params["residual_share"]) * done


def apply_metered(
    anomalies: Iterable[Anomaly],
    flow: np.ndarray,
    metered: np.ndarray,
    c0: int,
    rng_for: Callable[[int], np.random.Generator],
    *,
    interval_s: int,
    mean_kw: np.ndarray,
    local_hour: np.ndarray | None = None,
) -> None:
    """What the meter registers (kWh before its multiplier) where it differs from the flow.
    ``local_hour``: the local hour at each interval's start (the theft models need it)."""
    steps = flow.shape[1]
    for n, a in enumerate(anomalies):
        if a.type not in METERED or (c := a.cols(c0, steps)) is None:
            continue
        lo, hi = c
        x = flow[a.index, lo:hi]
        k = a.type
        if k == "theft_h1":
            y = a.params["a"] * x
        elif k in ("theft_h2", "stopped"):
            y = np.zeros_like(x)
        elif k == "theft_h3":
            y = rng_for(n).uniform(*G_RANGE, size=len(x)) * x
        elif k == "theft_h4":
            y = rng_for(n).uniform(*G_RANGE, size=len(x)) * x.mean()
        elif k == "theft_h5":
            y = np.full_like(x, x.mean())
        elif k == "theft_h6":
            y = x[::-1].copy()
        elif k in REALISTIC_THEFTS:
            hours = local_hour[lo:hi] if local_hour is not None else np.zeros(len(x))
            y = reported(k, a.params, x, rng_for(n), hours)
        else:  # spike: the register jumps by factor x the meter's mean interval energy
            y = x + a.params["factor"] * mean_kw[a.index] * interval_s / 3600
        metered[a.index, lo:hi] = y
        a.stats["true_kwh"] = a.stats.get("true_kwh", 0.0) + float(x.sum())
        a.stats["reported_kwh"] = a.stats.get("reported_kwh", 0.0) + float(y.sum())


def apply_units(
    anomalies: Iterable[Anomaly],
    metered: np.ndarray,
    supply: np.ndarray,
    units: np.ndarray,
    supply_units: np.ndarray,
    c0: int,
) -> None:
    """Register units = kWh / the multiplier really installed, which may not be the archive's."""
    steps = metered.shape[1]
    for a in anomalies:
        if a.type != "wrong_multiplier" or (c := a.cols(c0, steps)) is None:
            continue
        lo, hi = c
        src, dst = (metered, units) if a.role == "customer" else (supply, supply_units)
        dst[a.index, lo:hi] = src[a.index, lo:hi] / a.params["real_multiplier"]


def apply_registers(anomalies: Iterable[Anomaly], reg: np.ndarray, offset: np.ndarray, c0: int) -> None:
    """Register steps before rounding: a rollback drops it, a swap restarts it. ``reg`` holds
    reads ``c0..c0+T`` (column 0 already published); ``offset`` carries the step onward."""
    steps = reg.shape[1] - 1
    for a in anomalies:
        if a.type not in ("rollback", "meter_swap"):
            continue
        j = a.first - c0
        if not 1 <= j <= steps:
            continue
        before = float(reg[a.index, j - 1])
        if a.type == "rollback":
            step = -round(a.params["drop_share"] * before, 2)
        else:
            step = a.params["new_register"] - before
        reg[a.index, j:] += step
        offset[a.index] += step
        a.stats["register_before"] = round(before, 2)
        a.stats["register_step"] = round(step, 2)


def apply_flat(anomalies: Iterable[Anomaly], reg: np.ndarray, c0: int) -> None:
    """A stuck register repeats its last value over the span; the meter kept counting, so the
    first read after it catches up."""
    steps = reg.shape[1] - 1
    for a in anomalies:
        if a.type != "flat_line":
            continue
        lo, hi = max(a.first - c0, 1), min(a.last - c0, steps)
        if lo > hi:
            continue
        if "stuck_register" not in a.stats:
            a.stats["stuck_register"] = float(reg[a.index, lo - 1])
        reg[a.index, lo : hi + 1] = a.stats["stuck_register"]


def apply_missing(anomalies: Iterable[Anomaly], missing: np.ndarray, c0: int) -> None:
    """Reads a meter never sends: while a swapped meter is out."""
    steps = missing.shape[1] - 1
    for a in anomalies:
        if a.type == "meter_swap" and a.params["missing_reads"]:
            lo = max(a.first - c0, 0)
            hi = min(a.first + a.params["missing_reads"] - 1 - c0, steps)
            if lo <= hi:
                missing[a.index, lo : hi + 1] = True


def label(a: Anomaly, *, t0: int, interval_s: int, area_ids: list[str]) -> dict[str, Any]:
    """One line of the labels file."""
    params = dict(a.params)
    stats = {k: round(v, 4) for k, v in a.stats.items()}
    if a.type == "spike":
        stats["extra_kwh"] = round(a.stats.get("reported_kwh", 0.0) - a.stats.get("true_kwh", 0.0), 4)
    elif a.type in METERED and stats.get("true_kwh"):
        params.setdefault("share", round(1 - a.stats["reported_kwh"] / a.stats["true_kwh"], 6))
    return {
        "entity": a.entity,
        "type": a.type,
        "start": iso(t0 + (a.first - 1) * interval_s),
        "end": iso(t0 + a.last * interval_s),
        "area_id": area_ids[a.area],
        "role": a.role,
        "parameters": params | stats,
    }
