"""The static part of a synthetic city: areas, customer meters, supply meters, the archive.

Arrays, not objects, so a city of 100,000 meters builds in well under a second. Customer
meters are numbered area by area, so area ``a``'s meters (where they physically are) are
``first[a]:first[a + 1]``; the archive (``archive_area``, ``archive_multiplier``) is what the
utility believes and may differ from the field (wrong mapping, wrong multiplier).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from simulator.households import household_levels
from simulator.shapes import CLASSES, COMMERCIAL, INDUSTRIAL, RESIDENTIAL
from topology import Area, MeterRecord, Role, Topology

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AREA_CLASSES = ("urban", "rural")
URBAN, RURAL = 0, 1
# (min, max) customer meters of an area by class (docs/domain.md: 50-300 typical)
AREA_SIZES = ((100, 300), (50, 150))
# Customer class mix by area class, and each class's mean power (lognormal median kW, sigma).
CLASS_MIX = ((0.85, 0.13, 0.02), (0.92, 0.06, 0.02))
MEAN_KW = ((0.45, 0.55), (4.0, 0.8), (30.0, 0.7))
# Standard CT primaries (A) with a 5 A secondary: multiplier = primary / 5.
CT_PRIMARIES = (50, 75, 100, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000)
KW_TO_A = 1000 / (3**0.5 * 400 * 0.9)  # three-phase 400 V, power factor 0.9
COMMERCIAL_CT_KW = 8.0  # commercial customers above this mean power are CT-connected


@dataclass
class Grid:
    area_ids: list[str]
    area_class: np.ndarray  # (A,) URBAN / RURAL
    first: np.ndarray  # (A + 1,) customer meter offsets by physical area
    meter_ids: list[str]
    meter_area: np.ndarray  # (M,) physical area (whose transformer feeds the meter)
    customer_class: np.ndarray  # (M,) index into shapes.CLASSES
    mean_kw: np.ndarray  # (M,)
    multiplier: np.ndarray  # (M,) CT ratio in the field
    register_start: np.ndarray  # (M,) register units at the start
    supply_ids: list[str]
    supply_multiplier: np.ndarray  # (A,)
    supply_register_start: np.ndarray  # (A,)
    noload_share: np.ndarray  # (A,) no-load loss as a share of the area's mean load
    load_loss_share: np.ndarray  # (A,) load loss at mean load, as a share of it (grows with load^2)
    archive_area: np.ndarray  # (M,) area in the archive
    archive_multiplier: np.ndarray  # (M,) multiplier in the archive
    supply_archive_multiplier: np.ndarray  # (A,)
    archive_class: np.ndarray  # (M,) customer class in the archive (what the meter is billed as)

    @property
    def meters(self) -> int:
        return len(self.meter_ids)

    def area_meters(self, a: int) -> np.ndarray:
        return np.arange(self.first[a], self.first[a + 1])

    def area_mean_kw(self) -> np.ndarray:
        """Mean power flowing into each area's customers (physical, not archive)."""
        return np.bincount(self.meter_area, weights=self.mean_kw, minlength=len(self.area_ids))

    def topology(self) -> Topology:
        """The archive as the utility has it (every record in force since the epoch)."""
        topo = Topology()
        for a, area_id in enumerate(self.area_ids):
            topo.set_area(Area(area_id, AREA_CLASSES[int(self.area_class[a])]))
        for m, meter_id in enumerate(self.meter_ids):
            topo.apply(
                MeterRecord(
                    meter_id,
                    self.area_ids[int(self.archive_area[m])],
                    Role.CUSTOMER,
                    float(self.archive_multiplier[m]),
                    CLASSES[int(self.archive_class[m])],
                    True,
                    EPOCH,
                )
            )
        for a, supply_id in enumerate(self.supply_ids):
            mult = float(self.supply_archive_multiplier[a])
            topo.apply(MeterRecord(supply_id, self.area_ids[a], Role.SUPPLY, mult, "supply", True, EPOCH))
        return topo


def ct_multiplier(peak_kw: np.ndarray, *, headroom: float, min_primary: int) -> np.ndarray:
    """Smallest standard CT whose primary carries ``headroom`` x the peak current (200 kW at
    power factor 0.9 and 1.25 headroom is 401 A: a 500/5 CT).

    >>> ct_multiplier(np.array([10.0, 200.0]), headroom=1.25, min_primary=50).tolist()
    [10.0, 100.0]
    """
    primaries = np.array(CT_PRIMARIES, dtype=float)
    need = np.maximum(peak_kw * KW_TO_A * headroom, min_primary)
    i = np.minimum(np.searchsorted(primaries, need), len(primaries) - 1)
    return np.asarray(primaries[i] / 5.0)


def _ids(prefix: str, n: int, width: int) -> list[str]:
    w = max(width, len(str(max(n - 1, 0))))
    return [f"{prefix}{i:0{w}d}" for i in range(n)]


def area_sizes(
    rng: np.random.Generator,
    *,
    areas: int,
    meters: int | None,
    urban_share: float,
    area_meters: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class and customer count of each area; with ``meters`` set, as many areas as it takes
    to hold exactly that many customer meters. ``area_meters`` (min, max) replaces the sizes
    by class (AREA_SIZES)."""
    bounds = AREA_SIZES if area_meters is None else (area_meters, area_meters)
    if meters is not None:
        mean = urban_share * sum(bounds[URBAN]) / 2 + (1 - urban_share) * sum(bounds[RURAL]) / 2
        areas = max(1, round(meters / mean))
    cls = np.where(rng.random(areas) < urban_share, URBAN, RURAL)
    lo = np.array([bounds[c][0] for c in cls])
    hi = np.array([bounds[c][1] for c in cls])
    sizes = rng.integers(lo, hi + 1)
    if meters is not None:
        sizes = _fit(
            sizes, meters, np.minimum(lo, max(1, meters // areas)), np.maximum(hi, -(-meters // areas))
        )
    return cls, sizes


def _fit(sizes: np.ndarray, target: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    sizes = np.clip(np.floor(sizes * target / sizes.sum()), lo, hi).astype(np.int64)
    diff = int(target - sizes.sum())
    while diff:
        step = 1 if diff > 0 else -1
        room = np.flatnonzero(sizes < hi if step > 0 else sizes > lo)[: abs(diff)]
        if not len(room):
            raise ValueError(f"cannot place {target} meters in {len(sizes)} areas")
        sizes[room] += step
        diff -= step * len(room)
    return sizes


def build_grid(
    rng: np.random.Generator,
    *,
    areas: int,
    meters: int | None,
    urban_share: float,
    area_meters: tuple[int, int] | None = None,
    class_mix: tuple[float, float, float] | None = None,
    household_rng: np.random.Generator | None = None,
) -> Grid:
    """The static city. ``class_mix`` (residential, commercial, industrial shares) replaces the
    mix by area class; ``household_rng`` draws residential levels as realistic households have
    them (simulator/households.py) from its own stream, leaving every other draw as it was."""
    area_class, sizes = area_sizes(
        rng, areas=areas, meters=meters, urban_share=urban_share, area_meters=area_meters
    )
    n_areas = len(sizes)
    first = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    meter_area = np.repeat(np.arange(n_areas), sizes).astype(np.int64)
    n = int(first[-1])
    # Customer class by the mix of the meter's area class.
    u = rng.random(n)
    mix = np.cumsum(np.array(CLASS_MIX if class_mix is None else (class_mix, class_mix)), axis=1)[
        area_class[meter_area]
    ]
    customer_class = (u[:, None] >= mix[:, :2]).sum(axis=1).astype(np.int8)
    median = np.array([k[0] for k in MEAN_KW])[customer_class]
    sigma = np.array([k[1] for k in MEAN_KW])[customer_class]
    mean_kw = median * np.exp(sigma * rng.standard_normal(n))
    if household_rng is not None:
        mean_kw = np.where(customer_class == RESIDENTIAL, household_levels(household_rng, n), mean_kw)
    ct = (customer_class == INDUSTRIAL) | ((customer_class == COMMERCIAL) & (mean_kw > COMMERCIAL_CT_KW))
    multiplier = np.where(ct, ct_multiplier(mean_kw * 2.5, headroom=1.25, min_primary=50), 1.0)
    # Registers start where years of use left them (register units, 0.01 resolution).
    register_start = np.round(
        np.where(customer_class == RESIDENTIAL, rng.uniform(500, 30000, n), rng.uniform(10, 5000, n)), 2
    )
    area_kw = np.bincount(meter_area, weights=mean_kw, minlength=n_areas)
    supply_multiplier = ct_multiplier(area_kw * 2.2, headroom=1.2, min_primary=100)
    rural = area_class == RURAL
    noload = np.where(rural, rng.uniform(0.012, 0.02, n_areas), rng.uniform(0.008, 0.015, n_areas))
    load_loss = np.where(rural, rng.uniform(0.02, 0.035, n_areas), rng.uniform(0.01, 0.02, n_areas))
    return Grid(
        area_ids=_ids("A", n_areas, 4),
        area_class=area_class,
        first=first,
        meter_ids=_ids("M", n, 6),
        meter_area=meter_area,
        customer_class=customer_class,
        mean_kw=mean_kw,
        multiplier=multiplier,
        register_start=register_start,
        supply_ids=_ids("S", n_areas, 4),
        supply_multiplier=supply_multiplier,
        supply_register_start=np.round(rng.uniform(1000, 20000, n_areas), 2),
        noload_share=noload,
        load_loss_share=load_loss,
        archive_area=meter_area.copy(),
        archive_multiplier=multiplier.copy(),
        supply_archive_multiplier=supply_multiplier.copy(),
        archive_class=customer_class.copy(),
    )
