"""Unit tests for models/lineloss.py: meter energy, loss states, area windows and the pass rate."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models.lineloss import (
    LossResult,
    LossState,
    MeterEnergy,
    evaluate_window,
    judge,
    meter_window_energy,
    pass_rate,
)
from topology import Area, Bounds, MeterRecord, Role, Topology

T0 = 1767225600  # 2026-01-01T00:00Z
QH = 900
HOUR = 3600
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
URBAN = Bounds(-0.01, 0.07)


def energy(points: dict[int, tuple[float | None, float | None]], window_s: int = HOUR) -> MeterEnergy:
    return meter_window_energy(points, T0, interval_s=QH, window_s=window_s)


def registers(values: list[float], start: int = T0) -> dict[int, tuple[float | None, float | None]]:
    return {start + i * QH: (v, None) for i, v in enumerate(values)}


# ---- meter_window_energy ---------------------------------------------------------------------


def test_register_deltas_sum_over_window() -> None:
    # Hour window needs the opening read at 00:00 plus the four interval ends.
    e = energy(registers([100.0, 100.5, 101.5, 103.0, 103.25]))
    assert e == MeterEnergy(pytest.approx(3.25), True, 0)


def test_reads_outside_window_do_not_count() -> None:
    pts = registers([90.0, 100.0, 100.5, 101.5, 103.0, 103.25, 200.0], start=T0 - QH)
    assert energy(pts).kwh == pytest.approx(3.25)
    assert energy(pts).complete


def test_interval_energies_only() -> None:
    pts = {T0 + k * QH: (None, 0.25 * k) for k in range(1, 5)}
    assert energy(pts) == MeterEnergy(pytest.approx(2.5), True, 0)


def test_interval_energy_preferred_over_register_delta() -> None:
    # At 00:30 both are reported; the interval energy (0.4) wins over the delta (1.0).
    pts = registers([100.0, 100.5, 101.5, 103.0, 103.25])
    pts[T0 + 2 * QH] = (101.5, 0.4)
    assert energy(pts).kwh == pytest.approx(0.5 + 0.4 + 1.5 + 0.25)
    assert energy(pts).complete


def test_mixed_energy_and_registers() -> None:
    # 00:15 and 00:30 by interval energy; 00:45 by delta from the 00:30 register; 01:00 by delta.
    pts = {
        T0 + QH: (None, 0.3),
        T0 + 2 * QH: (50.0, 0.2),
        T0 + 3 * QH: (50.6, None),
        T0 + HOUR: (51.0, None),
    }
    assert energy(pts) == MeterEnergy(pytest.approx(0.3 + 0.2 + 0.6 + 0.4), True, 0)


def test_register_after_energy_only_point_is_incomplete() -> None:
    # The delta at 00:30 needs a register at 00:15, which only sent an interval energy.
    pts = {T0: (10.0, None), T0 + QH: (None, 0.3), T0 + 2 * QH: (11.0, None)}
    e = energy(pts, window_s=2 * QH)
    assert e.kwh == pytest.approx(0.3)
    assert not e.complete


def test_missing_opening_register_is_incomplete() -> None:
    pts = registers([100.5, 101.5, 103.0, 103.25], start=T0 + QH)  # no 00:00 read
    e = energy(pts)
    assert not e.complete
    assert e.kwh == pytest.approx(1.0 + 1.5 + 0.25)


def test_gap_in_middle_loses_two_intervals() -> None:
    pts = registers([100.0, 100.5, 101.5, 103.0, 103.25])
    del pts[T0 + 2 * QH]  # 00:30 missing: no energy for (00:15,00:30] nor (00:30,00:45]
    e = energy(pts)
    assert not e.complete
    assert e.rollbacks == 0
    assert e.kwh == pytest.approx(0.5 + 0.25)


def test_no_points_is_incomplete_zero() -> None:
    assert energy({}) == MeterEnergy(0.0, False, 0)


def test_rollback_never_negative() -> None:
    # Register goes back from 5000 to 2 (meter swapped at 00:30): no -4998 kWh.
    pts = registers([4999.0, 4999.5, 2.0, 2.5, 3.0])
    e = energy(pts)
    assert e.kwh >= 0
    assert e.kwh == pytest.approx(0.5 + 0.5 + 0.5)
    assert e.rollbacks == 1
    assert not e.complete


def test_repeated_rollbacks_counted() -> None:
    e = energy(registers([10.0, 9.0, 8.0, 7.0, 6.0]))
    assert e == MeterEnergy(0.0, False, 4)


def test_flat_register_is_complete_zero() -> None:
    assert energy(registers([42.0] * 5)) == MeterEnergy(0.0, True, 0)


# ---- judge -----------------------------------------------------------------------------------


def _judge(supply: float, sales: float, **over: object) -> tuple[LossState, float | None]:
    kw: dict[str, object] = dict(
        customers_expected=100,
        customers_reported=100,
        supplies_expected=1,
        supplies_reported=1,
        bounds=URBAN,
        min_completeness=0.98,
    )
    kw.update(over)
    return judge(supply_kwh=supply, sales_kwh=sales, **kw)  # type: ignore[arg-type]


def test_judge_qualified() -> None:
    assert _judge(100, 95) == (LossState.QUALIFIED, pytest.approx(0.05))


def test_judge_high_loss() -> None:
    assert _judge(100, 80) == (LossState.HIGH_LOSS, pytest.approx(0.2))


def test_judge_negative_loss() -> None:
    assert _judge(100, 110) == (LossState.NEGATIVE_LOSS, pytest.approx(-0.1))


def test_judge_no_supply() -> None:
    assert _judge(0, 0) == (LossState.NO_SUPPLY, None)
    assert _judge(-1.0, 5.0) == (LossState.NO_SUPPLY, None)


@pytest.mark.parametrize(
    "over",
    [
        {"customers_reported": 97},  # 0.97 < 0.98
        {"supplies_reported": 0},
        {"supplies_expected": 2, "supplies_reported": 1},
        {"customers_expected": 0, "customers_reported": 0},  # no mapping
        {"supplies_expected": 0, "supplies_reported": 0},
    ],
)
def test_judge_incomplete(over: dict[str, object]) -> None:
    assert _judge(100, 95, **over) == (LossState.INCOMPLETE, None)


def test_judge_incomplete_wins_over_no_supply() -> None:
    # Too few meters reported: we cannot tell an outage of supply from a collection gap.
    assert _judge(0, 0, customers_reported=50) == (LossState.INCOMPLETE, None)


def test_judge_completeness_threshold_is_inclusive() -> None:
    assert _judge(100, 95, customers_reported=98)[0] is LossState.QUALIFIED
    assert _judge(100, 95, customers_expected=50, customers_reported=49)[0] is LossState.QUALIFIED
    assert _judge(100, 95, customers_expected=50, customers_reported=48)[0] is LossState.INCOMPLETE
    assert _judge(100, 95, customers_reported=50, min_completeness=0.5)[0] is LossState.QUALIFIED


@pytest.mark.parametrize(
    ("supply", "sales", "rate"),
    [
        (100.0, 93.0, 0.07),  # exactly the upper bound
        (100.0, 101.0, -0.01),  # exactly the lower bound
        # Decimal-exact 7% and -1% whose float arithmetic lands a hair outside the band:
        # (7.7 - 7.161) / 7.7 == 0.07000000000000008 unrounded.
        (7.7, 7.161, 0.07),
        (1.1, 1.111, -0.01),
    ],
)
def test_judge_bounds_are_inclusive(supply: float, sales: float, rate: float) -> None:
    state, loss_rate = _judge(supply, sales)
    assert state is LossState.QUALIFIED
    assert loss_rate == pytest.approx(rate)


def test_judge_just_outside_bounds() -> None:
    assert _judge(100.0, 92.99)[0] is LossState.HIGH_LOSS
    assert _judge(100.0, 101.01)[0] is LossState.NEGATIVE_LOSS
    assert _judge(100.0, 93.01)[0] is LossState.QUALIFIED
    assert _judge(100.0, 100.99)[0] is LossState.QUALIFIED


def test_judge_uses_given_bounds() -> None:
    assert _judge(100, 95, bounds=Bounds(0.0, 0.04))[0] is LossState.HIGH_LOSS
    assert _judge(100, 100.5, bounds=Bounds(0.0, 0.04))[0] is LossState.NEGATIVE_LOSS
    assert _judge(100, 90, bounds=Bounds(0.0, 0.15))[0] is LossState.QUALIFIED


# ---- evaluate_window -------------------------------------------------------------------------


def _topology(customers: int = 3, supply_multiplier: float = 80.0) -> Topology:
    topo = Topology()
    topo.set_area(Area("A", "urban"))
    topo.apply(MeterRecord("S", "A", Role.SUPPLY, supply_multiplier, "supply", True, EPOCH))
    for i in range(customers):
        topo.apply(MeterRecord(f"c{i}", "A", Role.CUSTOMER, 1.0, "residential", True, EPOCH))
    return topo


def _evaluate(
    data: dict, topo: Topology, *, window_s: int = QH, min_completeness: float = 0.98
) -> LossResult:
    return evaluate_window(
        "A", T0, data, topo, interval_s=QH, window_s=window_s, min_completeness=min_completeness
    )


def _two_reads(a: float, b: float) -> dict[int, tuple[float | None, float | None]]:
    return {T0: (a, None), T0 + QH: (b, None)}


def test_supply_multiplier_applied() -> None:
    # CT ratio 80: a 0.10 kWh register step is 8 kWh delivered.
    data = {
        "S": _two_reads(100.00, 100.10),
        "c0": _two_reads(10.0, 13.0),
        "c1": _two_reads(20.0, 24.6),
        "c2": _two_reads(30.0, 30.0),
    }
    r = _evaluate(data, _topology())
    assert r.supply_kwh == pytest.approx(8.0)
    assert r.sales_kwh == pytest.approx(7.6)
    assert r.loss_kwh == pytest.approx(0.4)
    assert r.loss_rate == pytest.approx(0.05)
    assert r.state is LossState.QUALIFIED
    assert (r.customers_expected, r.customers_reported) == (3, 3)
    assert (r.supplies_expected, r.supplies_reported) == (1, 1)
    assert r.completeness == 1.0
    assert (r.lower, r.upper) == (URBAN.lower, URBAN.upper)


def test_customer_multiplier_applied() -> None:
    topo = _topology(customers=1, supply_multiplier=10.0)
    topo.apply(MeterRecord("ct", "A", Role.CUSTOMER, 20.0, "commercial", True, EPOCH))
    data = {"S": _two_reads(0.0, 10.0), "c0": _two_reads(0.0, 5.0), "ct": _two_reads(0.0, 4.5)}
    r = _evaluate(data, topo)
    assert r.supply_kwh == pytest.approx(100.0)
    assert r.sales_kwh == pytest.approx(5.0 + 90.0)
    assert r.loss_rate == pytest.approx(0.05)


def test_meters_not_in_topology_or_area_ignored() -> None:
    topo = _topology()
    topo.apply(MeterRecord("b1", "B", Role.CUSTOMER, 1.0, "residential", True, EPOCH))
    base = {
        "S": _two_reads(100.00, 100.10),
        "c0": _two_reads(10.0, 13.0),
        "c1": _two_reads(20.0, 24.6),
        "c2": _two_reads(30.0, 30.0),
    }
    extra = {**base, "ghost": _two_reads(0.0, 500.0), "b1": _two_reads(0.0, 300.0)}
    assert _evaluate(extra, topo) == _evaluate(base, topo)


def test_inactive_meter_not_expected() -> None:
    topo = _topology()
    topo.apply(MeterRecord("c2", "A", Role.CUSTOMER, 1.0, "residential", False, EPOCH))
    data = {"S": _two_reads(0.0, 0.1), "c0": _two_reads(0.0, 3.0), "c1": _two_reads(0.0, 4.6)}
    r = _evaluate(data, topo)
    assert (r.customers_expected, r.customers_reported) == (2, 2)
    assert r.state is LossState.QUALIFIED


def test_completeness_threshold_over_population() -> None:
    topo = _topology(customers=50, supply_multiplier=1.0)
    # 49 of 50 customers report 1 kWh; supply 51.5 -> loss (51.5 - 49) / 51.5 = 4.9%.
    data = {f"c{i}": _two_reads(0.0, 1.0) for i in range(49)}
    data["S"] = _two_reads(0.0, 51.5)
    r = _evaluate(data, topo)
    assert r.completeness == pytest.approx(0.98)
    assert r.state is LossState.QUALIFIED
    del data["c0"]
    r = _evaluate(data, topo)
    assert r.customers_reported == 48
    assert (r.state, r.loss_rate) == (LossState.INCOMPLETE, None)
    # A stricter threshold refuses what 0.98 accepted.
    data["c0"] = _two_reads(0.0, 1.0)
    assert _evaluate(data, topo, min_completeness=1.0).state is LossState.INCOMPLETE


def test_partial_meter_not_counted_as_reported() -> None:
    topo = _topology(customers=1, supply_multiplier=1.0)
    data = {
        "S": registers([0.0, 1.0, 2.0, 3.0, 4.0]),
        "c0": {T0: (0.0, None), T0 + QH: (0.9, None)},  # 3 of 4 intervals missing
    }
    r = _evaluate(data, topo, window_s=HOUR)
    assert r.customers_reported == 0
    assert r.sales_kwh == 0.0  # partial energy is not added to sales
    assert r.state is LossState.INCOMPLETE


def test_missing_supply_is_incomplete() -> None:
    data = {"c0": _two_reads(0.0, 1.0), "c1": _two_reads(0.0, 1.0), "c2": _two_reads(0.0, 1.0)}
    r = _evaluate(data, _topology())
    assert (r.state, r.supplies_reported, r.supply_kwh) == (LossState.INCOMPLETE, 0, 0.0)


def test_zero_supply_is_no_supply() -> None:
    data = {m: _two_reads(5.0, 5.0) for m in ("S", "c0", "c1", "c2")}
    r = _evaluate(data, _topology())
    assert (r.state, r.loss_rate) == (LossState.NO_SUPPLY, None)


def test_customer_rollback_counted_and_meter_unreported() -> None:
    topo = _topology(customers=1, supply_multiplier=1.0)
    data = {"S": _two_reads(0.0, 1.0), "c0": _two_reads(9999.0, 1.0)}
    r = _evaluate(data, topo)
    assert r.rollbacks == 1
    assert r.customers_reported == 0
    assert r.sales_kwh == 0.0
    assert r.state is LossState.INCOMPLETE


def test_area_bounds_override_used() -> None:
    topo = _topology()
    topo.set_area(Area("A", "urban", Bounds(0.0, 0.04)))
    data = {
        "S": _two_reads(100.00, 100.10),
        "c0": _two_reads(10.0, 13.0),
        "c1": _two_reads(20.0, 24.6),
        "c2": _two_reads(30.0, 30.0),
    }
    r = _evaluate(data, topo)
    assert (r.lower, r.upper) == (0.0, 0.04)
    assert r.state is LossState.HIGH_LOSS  # 5% > 4%


def test_membership_at_window_start() -> None:
    # c2 moves to B at 00:30; the 00:00 hour is judged with the archive at 00:00 (c2 in A).
    topo = _topology(supply_multiplier=1.0)
    topo.apply(
        MeterRecord(
            "c2", "B", Role.CUSTOMER, 1.0, "residential", True, datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
        )
    )
    data = {m: registers([0.0, 1.0, 2.0, 3.0, 4.0]) for m in ("c0", "c1", "c2")}
    data["S"] = registers([0.0, 3.0, 6.0, 9.0, 12.5])
    r = _evaluate(data, topo, window_s=HOUR)
    assert r.customers_expected == 3
    assert r.sales_kwh == pytest.approx(12.0)
    assert r.loss_rate == pytest.approx(0.5 / 12.5)


def test_result_to_dict_window_iso() -> None:
    data = {m: _two_reads(5.0, 6.0) for m in ("c0", "c1", "c2")}
    data["S"] = _two_reads(0.0, 0.04)
    d = _evaluate(data, _topology()).to_dict()
    assert d["window_start"] == "2026-01-01T00:00:00Z"
    assert d["window_end"] == "2026-01-01T00:15:00Z"
    assert d["state"] == "qualified" and d["v"] == 1


# ---- pass_rate -------------------------------------------------------------------------------


def _result(state: LossState, expected: int = 10, reported: int = 10) -> LossResult:
    return LossResult(
        "A", "urban", T0, QH, state, 1.0, 1.0, 0.0, None, 1.0, expected, reported, 1, 1, -0.01, 0.07, 0
    )


def test_pass_rate_excludes_incomplete_and_no_supply() -> None:
    results = (
        [_result(LossState.QUALIFIED)] * 6
        + [_result(LossState.HIGH_LOSS), _result(LossState.NEGATIVE_LOSS)]
        + [_result(LossState.INCOMPLETE, 10, 5)] * 3
        + [_result(LossState.NO_SUPPLY)]
    )
    pr = pass_rate(T0, results)
    assert (pr.qualified, pr.judged) == (6, 8)
    assert pr.pass_rate == pytest.approx(0.75)
    assert pr.by_state == {
        "qualified": 6,
        "high_loss": 1,
        "negative_loss": 1,
        "incomplete": 3,
        "no_supply": 1,
    }
    # 12 areas x 10 expected; incomplete ones reported 5 each.
    assert pr.collection_ratio == pytest.approx((120 - 15) / 120)
    assert pr.window_start == T0


def test_pass_rate_none_when_nothing_judged() -> None:
    pr = pass_rate(T0, [_result(LossState.INCOMPLETE, 10, 0), _result(LossState.NO_SUPPLY)])
    assert pr.judged == 0
    assert pr.pass_rate is None
    assert pr.collection_ratio == pytest.approx(0.5)


def test_pass_rate_empty_population() -> None:
    pr = pass_rate(T0, [])
    assert pr.pass_rate is None
    assert pr.collection_ratio is None
    assert set(pr.by_state.values()) == {0}


def test_pass_rate_all_qualified() -> None:
    assert pass_rate(T0, [_result(LossState.QUALIFIED)] * 4).pass_rate == 1.0
