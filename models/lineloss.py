"""Line loss of a transformer area over a window, and the pass rate of a population of areas.

Formulas and states follow docs/domain.md:
``loss_rate = (supply - sales) / supply`` with supply and sales the sums of register deltas x
multiplier over the area's supply and customer meters. Everything here is pure and
order-independent: a window's result depends on the *set* of readings it holds, so streaming,
replays and batch recomputation agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum

from models.columns import MeterPoints, interval_energy
from models.windows import interval_ends
from topology import Bounds, Topology


class LossState(StrEnum):
    QUALIFIED = "qualified"
    HIGH_LOSS = "high_loss"
    NEGATIVE_LOSS = "negative_loss"
    INCOMPLETE = "incomplete"
    NO_SUPPLY = "no_supply"


JUDGED = (LossState.QUALIFIED, LossState.HIGH_LOSS, LossState.NEGATIVE_LOSS)


@dataclass(frozen=True, slots=True)
class MeterEnergy:
    """Energy (register units, before multiplier) a meter recorded over a window."""

    kwh: float
    complete: bool
    rollbacks: int  # intervals where the register went backwards (reset, swap, tamper)


def meter_window_energy(
    points: MeterPoints, window_start: int, *, interval_s: int, window_s: int
) -> MeterEnergy:
    """Sum a meter's interval energies over a window.

    An interval's energy is the reported interval energy when present, else the register
    delta to the previous interval end. A register that went backwards (meter swap, reset,
    rollback) gives no energy for that interval rather than a huge negative one, and the
    interval counts as missing.

    >>> pts = {0: (100.0, None), 900: (101.5, None), 1800: (102.0, None)}
    >>> meter_window_energy(pts, 0, interval_s=900, window_s=1800)
    MeterEnergy(kwh=2.0, complete=True, rollbacks=0)
    >>> pts = {0: (100.0, None), 900: (3.0, None), 1800: (4.0, None)}   # swapped at 00:15
    >>> meter_window_energy(pts, 0, interval_s=900, window_s=1800)
    MeterEnergy(kwh=1.0, complete=False, rollbacks=1)
    >>> meter_window_energy({900: (None, 0.7)}, 0, interval_s=900, window_s=900)
    MeterEnergy(kwh=0.7, complete=True, rollbacks=0)
    """
    return MeterEnergy(*_energy(points, _end_pairs(window_start, interval_s, window_s)))


def _end_pairs(window_start: int, interval_s: int, window_s: int) -> list[tuple[int, int]]:
    ends = interval_ends(window_start, interval_s=interval_s, window_s=window_s)
    return [(end, end - interval_s) for end in ends]


def _energy(points: MeterPoints, ends: list[tuple[int, int]]) -> tuple[float, bool, int]:
    # meter_window_energy's sum over precomputed (interval end, previous end) pairs: the
    # per-meter inner loop of evaluate_window.
    total = 0.0
    complete = True
    rollbacks = 0
    for end, prev_end in ends:
        kwh, backwards = interval_energy(points, end, prev_end)
        if kwh != kwh:  # NaN: unknown
            complete = False
            rollbacks += backwards
            continue
        total += kwh
    return total, complete, rollbacks


def judge(
    *,
    supply_kwh: float,
    sales_kwh: float,
    customers_expected: int,
    customers_reported: int,
    supplies_expected: int,
    supplies_reported: int,
    bounds: Bounds,
    min_completeness: float,
) -> tuple[LossState, float | None]:
    """State and loss rate of one area-window.

    An area is judged only when every supply meter and at least ``min_completeness`` of its
    customer meters reported the whole window; a collection gap must never look like theft.

    >>> b = Bounds(-0.01, 0.07)
    >>> kw = dict(customers_expected=100, supplies_expected=1, supplies_reported=1,
    ...           bounds=b, min_completeness=0.98)
    >>> judge(supply_kwh=100, sales_kwh=95, customers_reported=100, **kw)
    (<LossState.QUALIFIED: 'qualified'>, 0.05)
    >>> judge(supply_kwh=100, sales_kwh=80, customers_reported=99, **kw)[0]
    <LossState.HIGH_LOSS: 'high_loss'>
    >>> judge(supply_kwh=100, sales_kwh=105, customers_reported=100, **kw)[0]
    <LossState.NEGATIVE_LOSS: 'negative_loss'>
    >>> judge(supply_kwh=100, sales_kwh=95, customers_reported=90, **kw)
    (<LossState.INCOMPLETE: 'incomplete'>, None)
    >>> judge(supply_kwh=0, sales_kwh=0, customers_reported=100, **kw)
    (<LossState.NO_SUPPLY: 'no_supply'>, None)
    """
    if customers_expected == 0 or supplies_expected == 0 or supplies_reported < supplies_expected:
        return LossState.INCOMPLETE, None
    if customers_reported / customers_expected < min_completeness:
        return LossState.INCOMPLETE, None
    if supply_kwh <= 0:
        return LossState.NO_SUPPLY, None
    loss_rate = round((supply_kwh - sales_kwh) / supply_kwh, 12)
    if loss_rate > bounds.upper:
        return LossState.HIGH_LOSS, loss_rate
    if loss_rate < bounds.lower:
        return LossState.NEGATIVE_LOSS, loss_rate
    return LossState.QUALIFIED, loss_rate


@dataclass(frozen=True, slots=True)
class LossResult:
    """One area-window's line loss: the record written to the results topic."""

    area_id: str
    area_class: str
    window_start: int
    window_s: int
    state: LossState
    supply_kwh: float
    sales_kwh: float
    loss_kwh: float
    loss_rate: float | None
    completeness: float
    customers_expected: int
    customers_reported: int
    supplies_expected: int
    supplies_reported: int
    lower: float
    upper: float
    rollbacks: int

    def to_dict(self) -> dict[str, object]:
        # Field by field: dataclasses.asdict deep-copies recursively (profiled: 3% of a batch run).
        d = {name: getattr(self, name) for name in _RESULT_FIELDS}
        d["state"] = self.state.value
        d["window_start"] = _iso(self.window_start)
        d["window_end"] = _iso(self.window_start + self.window_s)
        return {"v": 1, **d}

    def key(self) -> str:
        return f"{self.area_id}|{self.window_start}"


_RESULT_FIELDS = tuple(f.name for f in fields(LossResult))


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def evaluate_window(
    area_id: str,
    window_start: int,
    data: Mapping[str, MeterPoints],
    topology: Topology,
    *,
    interval_s: int,
    window_s: int,
    min_completeness: float,
) -> LossResult:
    """Line loss of ``area_id`` over one window from the points its meters reported.

    The archive in force at the window start decides membership, role and multiplier, so a
    window is judged against one consistent picture of the area.
    """
    at = datetime.fromtimestamp(window_start, UTC)
    ends = _end_pairs(window_start, interval_s, window_s)
    totals = {}
    counts = {}
    rollbacks = 0
    for role, meters in (
        ("supply", topology.supply_meters(area_id, at)),
        ("sales", topology.customer_meters(area_id, at)),
    ):
        kwh = 0.0
        reported = 0
        for meter_id, rec in meters.items():
            points = data.get(meter_id)
            if points is None:
                continue
            e_kwh, e_complete, e_rollbacks = _energy(points, ends)
            rollbacks += e_rollbacks
            if e_complete:
                kwh += e_kwh * rec.multiplier
                reported += 1
        totals[role] = round(kwh, 6)
        counts[role] = (len(meters), reported)
    return loss_result(
        area_id,
        window_start,
        window_s,
        topology,
        supply=(totals["supply"], *counts["supply"]),
        sales=(totals["sales"], *counts["sales"]),
        rollbacks=rollbacks,
        min_completeness=min_completeness,
    )


def loss_result(
    area_id: str,
    window_start: int,
    window_s: int,
    topology: Topology,
    *,
    supply: tuple[float, int, int],
    sales: tuple[float, int, int],
    rollbacks: int,
    min_completeness: float,
) -> LossResult:
    """An area-window's result from its rounded energy sums and meter counts per role
    (kWh, meters expected, meters that reported the whole window)."""
    bounds = topology.bounds_for(area_id)
    supply_kwh, supplies_expected, supplies_reported = supply
    sales_kwh, customers_expected, customers_reported = sales
    state, loss_rate = judge(
        supply_kwh=supply_kwh,
        sales_kwh=sales_kwh,
        customers_expected=customers_expected,
        customers_reported=customers_reported,
        supplies_expected=supplies_expected,
        supplies_reported=supplies_reported,
        bounds=bounds,
        min_completeness=min_completeness,
    )
    completeness = customers_reported / customers_expected if customers_expected else 0.0
    return LossResult(
        area_id=area_id,
        area_class=topology.area_class(area_id),
        window_start=window_start,
        window_s=window_s,
        state=state,
        supply_kwh=supply_kwh,
        sales_kwh=sales_kwh,
        loss_kwh=round(supply_kwh - sales_kwh, 6),
        loss_rate=loss_rate,
        completeness=round(completeness, 6),
        customers_expected=customers_expected,
        customers_reported=customers_reported,
        supplies_expected=supplies_expected,
        supplies_reported=supplies_reported,
        lower=bounds.lower,
        upper=bounds.upper,
        rollbacks=rollbacks,
    )


@dataclass(frozen=True, slots=True)
class PassRate:
    """Pass rate of one window over a population of areas.

    ``pass_rate = qualified / judged``, judged = qualified + high_loss + negative_loss.
    Incomplete and no-supply areas are left out of both numerator and denominator and shown
    beside it (``by_state``, ``collection_ratio``): an outage is a data problem, not a loss.
    """

    window_start: int
    qualified: int
    judged: int
    by_state: dict[str, int]
    customers_expected: int
    customers_reported: int

    @property
    def pass_rate(self) -> float | None:
        return self.qualified / self.judged if self.judged else None

    @property
    def collection_ratio(self) -> float | None:
        """Share of expected customer meters that reported the whole window."""
        if not self.customers_expected:
            return None
        return self.customers_reported / self.customers_expected


def pass_rate(window_start: int, results: Iterable[LossResult]) -> PassRate:
    """Aggregate area results of one window.

    >>> from topology import Topology
    >>> def r(state):
    ...     return LossResult("A", "urban", 0, 900, state, 1, 1, 0, 0, 1, 10, 10, 1, 1, 0, 1, 0)
    >>> pr = pass_rate(0, [r(LossState.QUALIFIED)] * 3 + [r(LossState.HIGH_LOSS),
    ...                    r(LossState.INCOMPLETE)])
    >>> pr.qualified, pr.judged, pr.pass_rate
    (3, 4, 0.75)
    """
    by_state = {s.value: 0 for s in LossState}
    expected = reported = 0
    for res in results:
        by_state[res.state.value] += 1
        expected += res.customers_expected
        reported += res.customers_reported
    qualified = by_state[LossState.QUALIFIED.value]
    judged = sum(by_state[s.value] for s in JUDGED)
    return PassRate(window_start, qualified, judged, by_state, expected, reported)
