"""Unit tests for simulator/city.py: determinism, theft and outage labels, message contracts."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from models.lineloss import LossState, evaluate_window
from simulator.city import City, CitySpec, build, messages
from streams.contracts import DecodedBatch, Reading, decode_readings
from topology import Role

SMALL = dict(areas=4, meters_per_area=12, days=0.25)


def registers_equal(a: City, b: City) -> bool:
    return a.registers.keys() == b.registers.keys() and all(
        np.array_equal(a.registers[m], b.registers[m]) for m in a.registers
    )


def test_same_seed_identical_registers() -> None:
    a, b = build(CitySpec(seed=11, **SMALL)), build(CitySpec(seed=11, **SMALL))
    assert registers_equal(a, b)
    assert a.times == b.times
    assert list(messages(a)) == list(messages(b))


def test_different_seed_differs() -> None:
    a, b = build(CitySpec(seed=11, **SMALL)), build(CitySpec(seed=12, **SMALL))
    assert a.registers.keys() == b.registers.keys()  # same ids, different values
    assert not registers_equal(a, b)


def test_shape_of_city() -> None:
    city = build(CitySpec(seed=3, **SMALL))
    assert len(city.times) == 0.25 * 96 + 1  # opening read + 24 quarter hours
    assert all(len(r) == len(city.times) for r in city.registers.values())
    t = city.spec.start
    for area_id in city.area_ids:
        assert set(city.topology.customer_meters(area_id, t)) == set(city.customers[area_id])
        assert set(city.topology.supply_meters(area_id, t)) == {city.supply[area_id]}
        assert city.topology.meter_at(city.supply[area_id], t).role is Role.SUPPLY  # type: ignore[union-attr]
    # Registers never run backwards and resolve 0.01 kWh.
    for r in city.registers.values():
        assert np.all(np.diff(r) >= 0)
        assert np.allclose(r * 100, np.round(r * 100))


def used(city: City, meter: str) -> float:
    r = city.registers[meter]
    return float(r[-1] - r[0])


@pytest.mark.parametrize("share", [0.8, 0.3])
def test_theft_lowers_reported_energy_of_thieves_only(share: float) -> None:
    spec = dict(seed=5, thieves_per_area=3, **SMALL)
    clean = build(CitySpec(**spec))  # type: ignore[arg-type]
    theft = build(CitySpec(theft_areas=(1,), theft_share=share, **spec))  # type: ignore[arg-type]
    area = clean.area_ids[1]
    thieves = clean.customers[area][:3]
    for m in thieves:
        # Reported = (1 - share) x true use; registers round to 0.01 at both ends.
        assert used(theft, m) == pytest.approx((1 - share) * used(clean, m), abs=0.02)
        assert used(theft, m) < used(clean, m)
    for m in clean.customers[area][3:]:
        assert np.array_equal(theft.registers[m], clean.registers[m])
    # What flows is unchanged: the supply meter and the other areas read the same.
    assert np.array_equal(theft.registers[theft.supply[area]], clean.registers[clean.supply[area]])
    other = clean.area_ids[2]
    for m in clean.customers[other]:
        assert np.array_equal(theft.registers[m], clean.registers[m])


def daily_loss(city: City, area_id: str) -> tuple[LossState, float | None]:
    start = city.times[0]
    window_s = city.times[-1] - start
    k_of = {ts: k for k, ts in enumerate(city.times)}
    meters = [*city.customers[area_id], city.supply[area_id]]
    data = {m: {ts: (float(city.registers[m][k]), None) for ts, k in k_of.items()} for m in meters}
    r = evaluate_window(
        area_id,
        start,
        data,
        city.topology,
        interval_s=city.spec.interval_s,
        window_s=window_s,
        min_completeness=0.98,
    )
    return r.state, r.loss_rate


def test_theft_area_loss_rises_by_stolen_share() -> None:
    spec = dict(seed=5, thieves_per_area=3, **SMALL)
    clean = build(CitySpec(**spec))  # type: ignore[arg-type]
    theft = build(CitySpec(theft_areas=(1,), theft_share=0.8, **spec))  # type: ignore[arg-type]
    area = clean.area_ids[1]
    state_clean, rate_clean = daily_loss(clean, area)
    state_theft, rate_theft = daily_loss(theft, area)
    assert rate_clean is not None and rate_theft is not None
    supply = used(clean, clean.supply[area]) * 5.0  # simulator's supply CT ratio
    stolen = 0.8 * sum(used(clean, m) for m in clean.customers[area][:3])
    assert rate_theft - rate_clean == pytest.approx(stolen / supply, abs=1e-3)
    assert state_clean is LossState.QUALIFIED
    assert state_theft is LossState.HIGH_LOSS


def test_outage_meters_missing_from_batches() -> None:
    city = build(CitySpec(seed=2, outage_areas=(0,), outage_intervals=4, **SMALL))
    area = city.area_ids[0]
    silent = {m for m, _ in city.missing}
    assert silent == set(city.customers[area][: len(city.customers[area]) // 4])
    for msg in messages(city):
        if msg.kind == "readings" and msg.key == area:
            k = city.times.index(msg.ts)
            ids = {v["meter_id"] for v in msg.value["readings"]}  # type: ignore[union-attr]
            assert ids.isdisjoint({m for m in silent if (m, k) in city.missing})


@pytest.mark.parametrize("batches", [True, False])
def test_messages_satisfy_reading_contract(batches: bool) -> None:
    city = build(CitySpec(seed=4, areas=2, meters_per_area=5, days=0.05))
    n = 0
    for msg in messages(city, batches=batches):
        decoded = decode_readings(orjson.dumps(msg.value))
        assert decoded.area_id == msg.key
        assert int(decoded.ts.timestamp()) == msg.ts
        if isinstance(decoded, DecodedBatch):
            assert decoded.refused == []
        else:
            assert isinstance(decoded, Reading)
            expected_kind = "supply" if decoded.meter_id == city.supply[msg.key] else "readings"
            assert msg.kind == expected_kind
        n += 1
    per_interval = 2 * (1 + 1) if batches else 2 * (5 + 1)
    assert n == per_interval * len(city.times)
