"""Realistic households and the theft models: the statistics docs/simulator.md states hold over
many households, each theft model reports what it says, and the labels say what was done."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simulator.anomalies import AnomalySpec
from simulator.faults import TransportSpec
from simulator.households import COARSE_SHARE
from simulator.shapes import RESIDENTIAL
from simulator.synth import Series, Sim, SimSpec, series
from simulator.theft_models import REALISTIC_THEFTS, draw_params, reported
from simulator.thieves import ThiefSpec
from topology import parse_time

CLEAN = AnomalySpec.only({})
DAY = 96


def realistic(**kw: Any) -> SimSpec:
    base: dict[str, Any] = dict(
        seed=11, areas=8, days=30.0, households="realistic", anomalies=CLEAN, transport=TransportSpec.none()
    )
    return SimSpec(**(base | kw))


@pytest.fixture(scope="module")
def month() -> tuple[Sim, Series]:
    sim = Sim.build(realistic())
    return sim, series(sim)


def daily(se: Series, rows: np.ndarray) -> np.ndarray:
    flow = se.flow_kwh[rows]
    return flow.reshape(len(rows), -1, DAY).sum(axis=2)


# ---- household statistics ---------------------------------------------------------------------


def test_level_spread_is_lognormal_1_to_50(month: tuple[Sim, Series]) -> None:
    sim, se = month
    res = np.flatnonzero(sim.grid.customer_class == RESIDENTIAL)
    assert len(res) > 800
    level = daily(se, res).mean(axis=1)
    p1, p25, p50, p75, p99 = np.quantile(level, [0.01, 0.25, 0.5, 0.75, 0.99])
    assert 6.0 <= p50 <= 10.0  # Ofgem TDCV medium: 2,900 kWh a year, 8 kWh a day
    assert 3.5 <= p25 <= 6.5 and 10.0 <= p75 <= 16.0  # TDCV low 5, high 12 kWh a day
    assert 0.5 <= p1 <= 2.5 and p99 >= 30.0  # 1-2 kWh to 40+ kWh a day
    assert 20 <= p99 / p1 <= 80  # about 1:50 between small and large
    # log-normal: the log levels are symmetric (mean ~ median)
    logs = np.log(level)
    assert abs(logs.mean() - np.median(logs)) < 0.1


def test_day_to_day_variability(month: tuple[Sim, Series]) -> None:
    sim, se = month
    res = np.flatnonzero(sim.grid.customer_class == RESIDENTIAL)
    d = daily(se, res)
    cv = d.std(axis=1) / d.mean(axis=1)
    assert 0.3 <= float(np.median(cv)) <= 0.6
    assert 0.25 <= float(np.quantile(cv, 0.25)) and float(np.quantile(cv, 0.75)) <= 0.75


def test_appliance_spikes_make_peaks(month: tuple[Sim, Series]) -> None:
    sim, se = month
    res = np.flatnonzero(sim.grid.customer_class == RESIDENTIAL)
    half_hours = se.flow_kwh[res].reshape(len(res), 30, 48, 2).sum(axis=3)
    ratio = half_hours.max(axis=2) / half_hours.mean(axis=2).clip(1e-9)
    # a home's half-hourly peak of the day is often 3-5x its mean
    assert 3.0 <= float(np.median(ratio)) <= 6.0


def test_occupancy_changes_show(month: tuple[Sim, Series]) -> None:
    sim, se = month
    hh = sim.households
    assert hh is not None
    kinds = {e["kind"] for e in hh.events}
    assert {"away", "guests"} <= kinds
    away = [e for e in hh.events if e["kind"] == "away" and e["last_day"] - e["first_day"] >= 2]
    assert away
    for e in away:
        d = daily(se, np.array([e["meter"]]))[0]
        inside = d[e["first_day"] : e["last_day"] + 1].mean()
        outside = np.delete(d, np.arange(e["first_day"], e["last_day"] + 1)).mean()
        assert inside < 0.75 * outside  # base load only while away


def test_new_tenant_changes_level() -> None:
    sim = Sim.build(realistic(areas=30, days=20.0))
    assert sim.households is not None
    moved = [e for e in sim.households.events if e["kind"] == "new_tenant"]
    assert moved
    level = sim.households.level[np.searchsorted(sim.households.meters, moved[0]["meter"])]
    first = moved[0]["first_day"] + moved[0]["vacant_days"]
    assert np.allclose(level[first:], moved[0]["level_change"], rtol=1e-2)
    assert np.all(level[: moved[0]["first_day"]] == 1.0)


def test_weekend_and_weather_are_shared(month: tuple[Sim, Series]) -> None:
    sim, se = month
    hh = sim.households
    assert hh is not None
    total = daily(se, hh.meters).sum(axis=0)
    # weather-sensitive homes move together with the city's weather series
    sensitive = hh.meters[hh.beta > 0.6]
    r = np.corrcoef(daily(se, sensitive).sum(axis=0), hh.weather[:30])[0, 1]
    assert r > 0.4
    assert total.std() / total.mean() > 0.02  # the common shifts do not average away


def test_register_quantisation(month: tuple[Sim, Series]) -> None:
    sim, se = month
    hh = sim.households
    assert hh is not None
    coarse = hh.meters[hh.coarse]
    assert 0.5 * COARSE_SHARE <= len(coarse) / len(hh.meters) <= 2 * COARSE_SHARE
    reg = se.registers[coarse]
    assert np.allclose(reg * 10, np.round(reg * 10), atol=1e-6)
    assert (np.diff(reg, axis=1) >= -1e-9).all()
    # the reported energy follows the flow to within one register step over the month
    assert np.all(np.abs(reg[:, -1] - reg[:, 0] - se.flow_kwh[coarse].sum(axis=1)) <= 0.1 + 1e-6)
    fine = hh.meters[~hh.coarse]
    assert np.all(
        np.abs(se.registers[fine, -1] - se.registers[fine, 0] - se.flow_kwh[fine].sum(axis=1)) <= 0.011
    )


def test_deterministic_and_default_untouched() -> None:
    a, b = (series(Sim.build(realistic(areas=2, days=2.0))) for _ in range(2))
    assert np.array_equal(a.registers, b.registers)
    smooth = series(Sim.build(realistic(areas=2, days=2.0, households="smooth")))
    assert not np.array_equal(a.flow_kwh, smooth.flow_kwh)
    with pytest.raises(ValueError, match="households"):
        SimSpec(households="lumpy")


# ---- theft models: the reported series against the true one ----------------------------------


def run(
    kind: str, rng: np.random.Generator, x: np.ndarray, hours: np.ndarray
) -> tuple[dict[str, Any], np.ndarray]:
    params = draw_params(kind, rng, float(x.mean()))
    return params, reported(kind, params, x, rng, hours)


X = np.random.default_rng(1).lognormal(-2.0, 0.6, 96)
HOURS = np.arange(96) * 0.25


def test_fdi_fresh_factor_per_interval() -> None:
    _, y = run("theft_fdi", np.random.default_rng(2), X, HOURS)
    g = y / X
    assert g.min() >= 0.2 and g.max() <= 0.8 and g.std() > 0.1


def test_days_one_factor_a_day_on_some_days() -> None:
    rng = np.random.default_rng(3)
    params = draw_params("theft_days", rng, 0.1)
    factors = []
    for day in range(200):
        g = reported("theft_days", params, X, np.random.default_rng([3, day]), HOURS) / X
        assert np.allclose(g, g[0])
        factors.append(g[0])
    f = np.array(factors)
    stolen = f < 1
    assert abs(stolen.mean() - params["p"]) < 0.12
    assert f[stolen].min() >= 0.1 and f[stolen].max() <= 0.7


def test_hours_steal_whole_hours_by_a() -> None:
    params, y = run("theft_hours", np.random.default_rng(4), X, HOURS)
    g = (y / X).reshape(24, 4)
    assert np.allclose(g, g[:, :1])  # one decision per hour
    assert set(np.round(g[:, 0], 6)) <= {1.0, round(params["a"], 6)}
    assert (g[:, 0] < 1).any() and (g[:, 0] == 1).any()


def test_zero_hours_window_wraps_midnight() -> None:
    params = {"from_hour": 22, "hours": 4}
    y = reported("theft_zero_hours", params, X, np.random.default_rng(5), HOURS)
    zero = (HOURS >= 22) | (HOURS < 2)
    assert (y[zero] == 0).all() and np.array_equal(y[~zero], X[~zero])


def test_cap_and_shift() -> None:
    params, y = run("theft_cap", np.random.default_rng(6), X, HOURS)
    assert np.array_equal(y, np.minimum(X, params["cap_kwh"])) and (y < X).any()
    params, y = run("theft_shift", np.random.default_rng(7), X, HOURS)
    assert np.allclose(y, np.maximum(X - params["shift_kwh"], 0.0))
    assert 0.2 * X.mean() <= params["shift_kwh"] <= 0.6 * X.mean()


def test_mixed_random_days_random_factors() -> None:
    params = draw_params("theft_mixed", np.random.default_rng(8), 0.1)
    honest = 0
    for day in range(100):
        g = reported("theft_mixed", params, X, np.random.default_rng([8, day]), HOURS) / X
        if np.allclose(g, 1.0):
            honest += 1
        else:
            assert g.min() >= 0.2 and g.max() <= 0.8 and g.std() > 0.1
    assert abs((100 - honest) / 100 - params["p"]) < 0.15


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown theft model"):
        draw_params("theft_magic", np.random.default_rng(0), 1.0)
    with pytest.raises(ValueError, match="unknown theft model"):
        ThiefSpec(area_share=1.0, types=("theft_magic",))


# ---- several thieves per area, end to end ----------------------------------------------------


@pytest.mark.parametrize("kind", REALISTIC_THEFTS)
def test_thieves_in_the_city_match_their_labels(kind: str) -> None:
    spec = realistic(
        areas=3,
        days=4.0,
        area_meters=(40, 60),
        thieves=ThiefSpec(area_share=1.0, share=(0.1, 0.15), types=(kind,), onset=(0.1, 0.6)),
    )
    sim = Sim.build(spec)
    se = series(sim)
    labels = sim.labels()
    grid = sim.grid
    assert labels and {lab["type"] for lab in labels} == {kind}
    by_area: dict[str, int] = {}
    for lab in labels:
        m = grid.meter_ids.index(lab["entity"])
        assert grid.area_ids[int(grid.meter_area[m])] == lab["area_id"]
        assert grid.customer_class[m] == RESIDENTIAL
        by_area[lab["area_id"]] = by_area.get(lab["area_id"], 0) + 1
        first = int((parse_time(lab["start"]).timestamp() - spec.t0) // spec.interval_s)  # read index
        last = int((parse_time(lab["end"]).timestamp() - spec.t0) // spec.interval_s)
        assert last == spec.steps
        res = (
            0.1
            if sim.households is not None and m in set(sim.households.meters[sim.households.coarse])
            else 0.01
        )
        reg, flow = se.registers[m], se.flow_kwh[m]
        # honest before the onset, the label's energies over its span
        assert abs((reg[first] - reg[0]) - flow[:first].sum()) <= res + 1e-6
        p = lab["parameters"]
        assert abs((reg[last] - reg[first]) - p["reported_kwh"]) <= res + 1e-6
        assert p["true_kwh"] == pytest.approx(flow[first:last].sum(), abs=1e-3)
        assert p["share"] == pytest.approx(1 - p["reported_kwh"] / p["true_kwh"], abs=1e-3)
        assert p["reported_kwh"] <= p["true_kwh"] + 1e-9
    for area, n in by_area.items():
        size = int(np.sum(np.array(grid.area_ids)[grid.meter_area] == area))
        assert 1 <= n <= max(1, round(0.15 * size))
    starts = {lab["start"] for lab in labels}
    assert len(starts) > 1  # onsets spread over the run


def test_case_five_thieves_of_33() -> None:
    spec = realistic(
        areas=4,
        days=3.0,
        area_meters=(33, 33),
        class_mix=(1.0, 0.0, 0.0),
        thieves=ThiefSpec(area_share=1.0, count=5, types=("theft_days", "theft_fdi", "theft_mixed")),
    )
    sim = Sim.build(spec)
    assert (sim.grid.customer_class == RESIDENTIAL).all()
    assert np.all(np.diff(sim.grid.first) == 33)
    labels = sim.labels()
    assert len(labels) == 20
    assert all(sum(lab["area_id"] == a for lab in labels) == 5 for a in sim.grid.area_ids)


def test_single_realistic_thief_by_count() -> None:
    spec = realistic(areas=4, days=2.0, anomalies=AnomalySpec.only({"theft_cap": 2, "theft_fdi": 1}))
    sim = Sim.build(spec)
    series(sim)  # realised energies and shares
    labels = sim.labels()
    assert sorted(lab["type"] for lab in labels) == ["theft_cap", "theft_cap", "theft_fdi"]
    assert all(lab["parameters"]["share"] > 0 for lab in labels)
