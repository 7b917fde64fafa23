"""The synthetic city: determinism, a sane clean city, and anomalies that do what their labels say
(checked against the same city without them, and with the line-loss arithmetic of models/)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.lineloss import LossResult, LossState, evaluate_window
from simulator.anomalies import TYPES, AnomalySpec
from simulator.faults import TransportSpec
from simulator.files import JsonlSink, read_labels
from simulator.grid import AREA_SIZES
from simulator.run import simulate
from simulator.shapes import RESIDENTIAL
from simulator.synth import Series, Sim, SimSpec, series
from topology import parse_time

CLEAN = AnomalySpec.only({})


def spec(**kw: Any) -> SimSpec:
    base: dict[str, Any] = dict(seed=5, areas=4, days=1.0, transport=TransportSpec.none())
    return SimSpec(**(base | kw))


def read(sim: Sim, se: Series, when: str) -> int:
    """Read index of an ISO instant."""
    return int((parse_time(when).timestamp() - sim.spec.t0) // sim.spec.interval_s)


def area_window(sim: Sim, se: Series, area_id: str, r0: int, r1: int) -> LossResult:
    """Line loss of an area over reads r0..r1, as the worker computes it from what was reported."""
    g, a = sim.grid, sim.grid.area_ids.index(area_id)
    data: dict[str, dict[int, tuple[float | None, float | None]]] = {}
    for m in np.flatnonzero(g.archive_area == a):
        data[g.meter_ids[m]] = {
            int(se.times[k]): (float(se.registers[m, k]), None)
            for k in range(r0, r1 + 1)
            if not se.missing[m, k]
        }
    data[g.supply_ids[a]] = {
        int(se.times[k]): (float(se.supply_registers[a, k]), None) for k in range(r0, r1 + 1)
    }
    return evaluate_window(
        area_id,
        int(se.times[r0]),
        data,
        sim.topology(),
        interval_s=sim.spec.interval_s,
        window_s=int(se.times[r1] - se.times[r0]),
        min_completeness=0.98,
    )


def one(labels: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [lab for lab in labels if lab["type"] == kind]
    assert len(found) == 1, f"{kind}: {found}"
    return found[0]


# ---- determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("to", ["readings.jsonl", "readings.jsonl.gz"])
def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, to: str) -> None:
    def run(seed: int, name: str) -> dict[str, bytes]:
        out = tmp_path / name
        s = SimSpec(
            seed=seed, areas=3, days=0.5, transport=TransportSpec(duplicate_rate=0.05, malformed_rate=0.02)
        )
        simulate(s, out, JsonlSink(out / to))
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    a, b, c = run(11, "a"), run(11, "b"), run(12, "c")
    assert set(a) == {"areas.csv", "meters.csv", "labels.jsonl", "spec.json", to}
    assert a == b
    assert a[to] != c[to] and a["labels.jsonl"] != c["labels.jsonl"] and a["meters.csv"] != c["meters.csv"]


def test_load_does_not_depend_on_the_anomalies_asked_for() -> None:
    clean, dirty = series(Sim.build(spec(anomalies=CLEAN))), series(Sim.build(spec()))
    sim = Sim.build(spec())
    touched = {a.index for a in sim.anomalies if a.role == "customer" and a.type == "shutdown"}
    others = [m for m in range(sim.grid.meters) if m not in touched]
    assert np.array_equal(clean.flow_kwh[others], dirty.flow_kwh[others])


# ---- a clean city -----------------------------------------------------------------------------


def test_clean_city_shape_registers_and_multipliers() -> None:
    sim = Sim.build(spec(areas=12, anomalies=CLEAN))
    se, g = series(sim), sim.grid
    sizes = np.diff(g.first)
    classes = set(g.area_class.tolist())
    assert classes == {0, 1}  # urban and rural
    for a, n in enumerate(sizes):
        lo, hi = AREA_SIZES[int(g.area_class[a])]
        assert lo <= n <= hi
    assert se.registers.shape == (g.meters, 97) and len(se.times) == 97
    assert np.all(np.diff(se.registers, axis=1) >= 0) and np.all(np.diff(se.supply_registers, axis=1) >= 0)
    assert np.allclose(se.registers * 100, np.round(se.registers * 100))
    assert se.registers[:, 0].min() >= 10  # registers start where years of use left them
    assert np.all(g.multiplier[g.customer_class == RESIDENTIAL] == 1)
    assert np.all(g.multiplier[g.customer_class == 2] > 1)  # industrial: CT-connected
    assert np.all(g.supply_multiplier >= 20)
    # Supply = customers' energy + technical loss; every area qualifies on the daily window.
    for area_id in g.area_ids:
        r = area_window(sim, se, area_id, 0, 96)
        assert r.state is LossState.QUALIFIED, r
        assert 0.005 < (r.loss_rate or 0) < 0.08


def test_weekly_shape_commercial_quiet_on_sunday() -> None:
    sim = Sim.build(
        spec(areas=6, days=7.0, start=parse_time("2026-01-05T00:00:00Z"), anomalies=CLEAN)
    )  # Monday
    se, g = series(sim), sim.grid
    assert np.all(np.diff(se.registers, axis=1) >= 0)  # continuous across the daily chunks
    commercial = g.customer_class == 1
    daily = se.flow_kwh[commercial].sum(axis=0).reshape(7, 96).sum(axis=1)
    assert daily[6] < 0.7 * daily[:5].mean()


def test_meters_target_is_exact() -> None:
    sim = Sim.build(SimSpec(meters=2345, days=0.1, anomalies=CLEAN))
    assert sim.grid.meters == 2345
    assert 8 <= len(sim.grid.area_ids) <= 20


# ---- anomalies do what the labels say ---------------------------------------------------------


@pytest.mark.parametrize("share", [0.3, 0.75])
def test_theft_h1_lowers_meter_energy_by_share_and_raises_area_loss(share: float) -> None:
    dirty_sim = Sim.build(spec(anomalies=AnomalySpec.only({"theft_h1": 1}, theft_share=share)))
    clean_sim = Sim.build(spec(anomalies=CLEAN))
    dirty, clean = series(dirty_sim), series(clean_sim)
    label = one(dirty_sim.labels(), "theft_h1")
    assert label["parameters"]["share"] == share
    m = dirty_sim.grid.meter_ids.index(label["entity"])
    mult = float(dirty_sim.grid.multiplier[m])
    r0, r1 = read(dirty_sim, dirty, label["start"]), read(dirty_sim, dirty, label["end"])
    used_clean = (clean.registers[m, r1] - clean.registers[m, r0]) * mult
    used_dirty = (dirty.registers[m, r1] - dirty.registers[m, r0]) * mult
    assert used_clean - used_dirty == pytest.approx(share * used_clean, abs=0.02 * mult)
    # before the span the meter reads as it would have
    assert np.array_equal(dirty.registers[m, : r0 + 1], clean.registers[m, : r0 + 1])
    # the area's loss over the span rises by exactly the energy taken
    before = area_window(clean_sim, clean, label["area_id"], r0, r1)
    after = area_window(dirty_sim, dirty, label["area_id"], r0, r1)
    assert after.supply_kwh == before.supply_kwh
    assert after.loss_kwh - before.loss_kwh == pytest.approx(used_clean - used_dirty, abs=1e-6)
    assert label["parameters"]["true_kwh"] - label["parameters"]["reported_kwh"] == pytest.approx(
        used_clean - used_dirty, abs=0.02 * mult
    )


def test_wrong_mapping_makes_one_area_negative_and_the_other_high() -> None:
    dirty_sim = Sim.build(spec(anomalies=AnomalySpec.only({"wrong_mapping": 1})))
    clean_sim = Sim.build(spec(anomalies=CLEAN))
    dirty, clean = series(dirty_sim), series(clean_sim)
    label = one(dirty_sim.labels(), "wrong_mapping")
    archive, actual = label["parameters"]["archive_area"], label["parameters"]["actual_area"]
    assert archive != actual and label["area_id"] == actual
    m = dirty_sim.grid.meter_ids.index(label["entity"])
    energy = (dirty.registers[m, -1] - dirty.registers[m, 0]) * dirty_sim.grid.multiplier[m]
    # A (archive) counts the customer in its sales; B (actual) feeds it and misses it.
    a_dirty, a_clean = (
        area_window(s, se, archive, 0, 96) for s, se in ((dirty_sim, dirty), (clean_sim, clean))
    )
    b_dirty, b_clean = (
        area_window(s, se, actual, 0, 96) for s, se in ((dirty_sim, dirty), (clean_sim, clean))
    )
    assert a_dirty.sales_kwh - a_clean.sales_kwh == pytest.approx(energy, abs=1e-6)
    assert b_clean.sales_kwh - b_dirty.sales_kwh == pytest.approx(energy, abs=1e-6)
    assert a_dirty.state is LossState.NEGATIVE_LOSS
    assert b_dirty.state is LossState.HIGH_LOSS
    # the archive says A
    assert dirty_sim.topology().meter_at(label["entity"], dirty_sim.spec.start).area_id == archive  # type: ignore[union-attr]


def test_register_anomalies_show_in_the_registers() -> None:
    kinds = ["stopped", "flat_line", "rollback", "meter_swap", "spike", "theft_h2", "theft_h5", "theft_h6"]
    sim = Sim.build(spec(areas=8, days=2.0, anomalies=AnomalySpec.only({k: 1 for k in kinds})))
    se, labels = series(sim), sim.labels()
    idx = sim.grid.meter_ids.index

    def span(kind: str) -> tuple[int, int, int]:
        lab = one(labels, kind)
        return idx(lab["entity"]), read(sim, se, lab["start"]), read(sim, se, lab["end"])

    m, r0, r1 = span("stopped")
    assert np.all(se.registers[m, r0 : r1 + 1] == se.registers[m, r0])
    assert se.flow_kwh[m, r0:r1].sum() > 0
    m, r0, r1 = span("theft_h2")
    assert np.all(se.registers[m, r0 : r1 + 1] == se.registers[m, r0]) and r1 - r0 >= 16
    m, r0, r1 = span("flat_line")
    stuck = one(labels, "flat_line")["parameters"]["stuck_register"]
    assert np.all(se.registers[m, r0 : r1 + 1] == stuck)
    if r1 < sim.spec.steps:  # the meter kept counting: the next read catches up
        assert se.registers[m, r1 + 1] == pytest.approx(
            stuck + se.flow_kwh[m, r0 : r1 + 1].sum() / sim.grid.multiplier[m], abs=0.02
        )
    m, r0, r1 = span("rollback")
    assert se.registers[m, r1] < se.registers[m, r0]
    m, r0, r1 = span("meter_swap")
    params = one(labels, "meter_swap")["parameters"]
    assert se.missing[m].sum() == params["missing_reads"]
    assert se.registers[m, r1] < params["new_register"] + 5 < se.registers[m, r0]
    m, r0, r1 = span("spike")
    jump = np.diff(se.registers[m, r0 : r1 + 1]) * sim.grid.multiplier[m]
    assert jump.sum() > 10 * se.flow_kwh[m, r0:r1].sum()
    m, r0, r1 = span("theft_h5")  # the day's mean in every interval: same total, flat profile
    steps = np.diff(se.registers[m, r0 : r1 + 1])
    assert steps.max() - steps.min() < 0.02 + 2 * se.flow_kwh[m, r0:r1].mean() * 0.5
    m, r0, r1 = span("theft_h6")  # reversed in time within the day: same energy over the day
    assert (se.registers[m, r1] - se.registers[m, r0]) * sim.grid.multiplier[m] == pytest.approx(
        se.flow_kwh[m, r0:r1].sum(), abs=0.02 * sim.grid.multiplier[m]
    )


def test_wrong_multiplier_shutdown_and_h3_h4() -> None:
    kinds = ["wrong_multiplier", "shutdown", "theft_h3", "theft_h4"]
    sim = Sim.build(spec(areas=6, seed=9, anomalies=AnomalySpec.only({k: 2 for k in kinds})))
    se, labels, g = series(sim), sim.labels(), sim.grid
    rows = {r["meter_id"]: r for r in _meters_csv(sim)}
    for lab in (x for x in labels if x["type"] == "wrong_multiplier"):
        p = lab["parameters"]
        assert p["archive_multiplier"] != p["real_multiplier"]
        assert float(rows[lab["entity"]]["multiplier"]) == p["archive_multiplier"]  # the archive is wrong
        r0 = read(sim, se, lab["start"])
        if lab["role"] == "customer":
            m = g.meter_ids.index(lab["entity"])
            units, flow = se.registers[m, -1] - se.registers[m, r0], se.flow_kwh[m, r0:].sum()
        else:
            a = g.supply_ids.index(lab["entity"])
            units, flow = se.supply_registers[a, -1] - se.supply_registers[a, r0], se.supply_kwh[a, r0:].sum()
        assert units * p["real_multiplier"] == pytest.approx(flow, abs=0.02 * p["real_multiplier"])
    for lab in (x for x in labels if x["type"] == "shutdown"):
        m = g.meter_ids.index(lab["entity"])
        assert g.customer_class[m] == 2
        r0 = read(sim, se, lab["start"])
        ramp = int(lab["parameters"]["ramp_hours"] * 4) + 1
        if r0 + ramp < sim.spec.steps:
            after = se.flow_kwh[m, r0 + ramp :].mean()
            assert after < 0.1 * lab["parameters"]["mean_kw"] * 0.25
    for lab in (x for x in labels if x["type"] in ("theft_h3", "theft_h4")):
        assert 0.1 < lab["parameters"]["share"] < 0.9


def _meters_csv(sim: Sim) -> list[dict[str, str]]:
    import tempfile

    from simulator.files import write_archive

    with tempfile.TemporaryDirectory() as tmp:
        write_archive(sim.topology(), sim.grid.area_ids, Path(tmp))
        with (Path(tmp) / "meters.csv").open() as f:
            return list(csv.DictReader(f))


def test_every_type_labelled_with_sane_fields(tmp_path: Path) -> None:
    s = SimSpec(
        seed=4,
        areas=8,
        days=2.0,
        transport=TransportSpec(duplicate_rate=0.02, reorder_rate=0.02, malformed_rate=0.01),
    )
    simulate(s, tmp_path, JsonlSink(tmp_path / "readings.jsonl"))
    labels = read_labels(tmp_path / "labels.jsonl")
    meters = {r["meter_id"]: r for r in csv.DictReader((tmp_path / "meters.csv").open())}
    areas = {r["area_id"] for r in csv.DictReader((tmp_path / "areas.csv").open())}
    kinds = {lab["type"] for lab in labels}
    assert kinds == set(TYPES) | {"duplicate", "out_of_order", "malformed"}
    t0, t1 = s.start, parse_time("2026-01-03T00:00:00Z")
    for lab in labels:
        assert set(lab) == {"entity", "type", "start", "end", "area_id", "role", "parameters"}
        start, end = parse_time(lab["start"]), parse_time(lab["end"])
        assert t0 <= start <= end <= t1
        assert lab["area_id"] in areas
        assert lab["entity"] in meters or lab["entity"] in areas
        if lab["role"] == "customer":
            assert start < end
        if lab["type"].startswith("theft_h"):
            assert 0 <= lab["parameters"]["share"] <= 1
        if lab["type"] == "concentrator_outage":
            assert parse_time(lab["parameters"]["resent_at"]) > end
        if lab["type"] == "wrong_mapping":
            assert meters[lab["entity"]]["area_id"] == lab["parameters"]["archive_area"] != lab["area_id"]
        if lab["type"] == "malformed":
            assert lab["parameters"]["reason"] in {"json", "empty", "schema", "unknown_meter"}
    labels_sorted = sorted(labels, key=lambda d: (d["start"], d["type"], d["entity"]))
    assert labels == labels_sorted
