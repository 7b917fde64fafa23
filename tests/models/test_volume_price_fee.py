"""The volume-price-fee watch: large consumption per class (local day and month) and the
billed class against the load shape (models/large_consumption.py, models/tariff_class.py), on
their own and through Detection on the realistic simulator with injected cases."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evaluation.evaluate import run_detectors
from models.detection import AreaInterval, Detection
from models.large_consumption import LargeConsumptionDetector
from models.tariff_class import TariffClassDetector
from simulator.anomalies import AnomalySpec
from simulator.synth import Sim, SimSpec
from streams.settings import SettingsError, load_settings

WATCH_TYPES = ("meter_large_consumption_day", "meter_large_consumption_month", "meter_tariff_mismatch")


def test_a_local_day_ends_at_local_midnight() -> None:
    """In UTC+8 a day's energy restarts at 16:00 UTC, not at 00:00 UTC."""
    det = LargeConsumptionDetector({0: (10.0, 1e9)}, utc_offset_s=8 * 3600)
    m, g = np.array([0]), np.array([0])
    t0 = 86400 * 100 + 8 * 3600  # 08:00 UTC = 16:00 local
    fired = [e for k in range(1, 33) for e in det.step(t0 + 900 * k, m, np.array([0.5]), g)]
    # 0.5 kWh a quarter: 10 kWh after 20 intervals (21:00 local), still before local midnight
    assert [(e.type, e.firing) for e in fired] == [("large_day", True)]
    ended = det.step(t0 + 900 * 33, m, np.array([0.5]), g)  # 00:15 local: a new local day
    assert [(e.type, e.firing) for e in ended] == [("large_day", False)]


def test_a_month_adds_up_across_days_and_missing_reads() -> None:
    det = LargeConsumptionDetector({0: (1e9, 100.0), 1: (1e9, 50.0)})
    m, g = np.array([0, 1, 2]), np.array([0, 1, 2])  # class 2 has no threshold
    jan = 20454 * 86400  # 2026-01-01
    events = []
    for k in range(1, 96 * 20):
        e = np.array([0.07, 0.04, 50.0]) if k % 7 else np.full(3, np.nan)
        events += det.step(jan + 900 * k, m, e, g)
    fired = [(ev.meter, ev.type) for ev in events if ev.firing]
    assert sorted(fired) == [(0, "large_month"), (1, "large_month")]
    opened = {ev.meter: ev for ev in events if ev.firing}
    assert opened[0].evidence["observed_kwh"] > 100.0 and opened[0].evidence["threshold_kwh"] == 100.0
    assert not [ev for ev in events if not ev.firing]  # January is not over


def test_tariff_waits_for_enough_of_both_times() -> None:
    """A shop's shape is not judged on its first business hours: a meter needs a week's weekday
    days and four days of the rest before it can open."""
    det = TariffClassDetector()
    m, g = np.array([0]), np.array([0])
    monday = 4 * 86400
    first_open = None
    for k in range(1, 96 * 14):
        t = monday + 900 * k
        h = ((t - 450) % 86400) / 3600
        weekday = ((t - 450) // 86400 + 3) % 7 < 5
        e = np.array([3.0 if weekday and 9 <= h < 18 else 0.3])
        if det.step(t, m, e, g) and first_open is None:
            first_open = k
    assert first_open is not None and first_open > 96 * 5  # after the first working week


@pytest.fixture(scope="module")
def watched_city() -> tuple[Sim, list[dict[str, Any]]]:
    """A realistic city (1,200 customers, 10 days) with two shops billed as homes and two homes
    that start a large constant load, through the worker's Detection."""
    spec = SimSpec(
        seed=5,
        areas=10,
        meters=1200,
        days=10,
        households="realistic",
        anomalies=AnomalySpec.only({"misclassified": 2, "large_consumer": 2}),
    )
    sim = Sim.build(spec)
    return sim, run_detectors(sim, Detection(capacity=sim.grid.meters))


def test_the_watch_finds_the_injected_cases(watched_city: tuple[Sim, list[dict[str, Any]]]) -> None:
    sim, records = watched_city
    opened = [r for r in records if r["event"] == "opened" and r["type"] in WATCH_TYPES]
    by_meter: dict[str, set[str]] = {}
    for r in opened:
        by_meter.setdefault(r["entity_id"], set()).add(r["type"])
        assert r["severity"] == "info"
    labels = {a.entity: a.type for a in sim.anomalies}
    assert sorted(labels.values()) == ["large_consumer", "large_consumer", "misclassified", "misclassified"]
    for meter, kind in labels.items():
        want = "meter_tariff_mismatch" if kind == "misclassified" else "meter_large_consumption_day"
        assert want in by_meter.get(meter, set()), (meter, kind, by_meter)
    # a large consumer's day alert comes on the day its load starts, and says by how much
    for a in sim.anomalies:
        if a.type == "large_consumer":
            (first,) = [r for r in opened if r["entity_id"] == a.entity][:1]
            assert first["evidence"]["observed_kwh"] > first["evidence"]["threshold_kwh"] == 300.0


def test_honest_households_stay_silent(watched_city: tuple[Sim, list[dict[str, Any]]]) -> None:
    """Over 10 days of realistic households (holidays, guests, big homes) no meter without a
    label opens a watch alert."""
    sim, records = watched_city
    labelled = {a.entity for a in sim.anomalies}
    honest = Counter(
        r["type"]
        for r in records
        if r["event"] == "opened" and r["type"] in WATCH_TYPES and r["entity_id"] not in labelled
    )
    assert honest == Counter()
    assert int((sim.grid.archive_class == 0).sum()) > 1000  # the homes it was checked on


def test_watch_state_survives_a_snapshot() -> None:
    """An area's snapshot carries the watch's per-meter state: restored, it emits the same
    next events as the detection that kept running."""

    def run(det: Detection, ks: range, idx: np.ndarray) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for k in ks:
            e = np.array([0.2, 4.0 if k % 96 > 40 else 0.1])
            ones, zeros = np.ones(2, bool), np.zeros(2, bool)
            supply = float(e.sum()) * 1.03
            iv = AreaInterval("A1", 4 * 86400 + 900 * k, idx, e, zeros, ones, np.zeros(2, np.int64),
                              supply_kwh=supply, lower=-0.01, upper=0.07)  # fmt: skip
            out += [r for r in det.step([iv]) if r["type"] in WATCH_TYPES]
        return out

    live = Detection(large_consumption_kwh={"residential": (50.0, 1e9)})
    idx = live.index(["M1", "M2"])
    run(live, range(1, 60), idx)
    blob = live.snapshot_area("A1", ["M1", "M2"])
    restored = Detection(large_consumption_kwh={"residential": (50.0, 1e9)})
    restored.restore_area(blob)
    want = run(live, range(60, 200), idx)
    got = run(restored, range(60, 200), restored.index(["M1", "M2"]))
    assert want and got == want


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ('{"residential": {"day": 300}}', "expected"),
        ('{"residential": {"day": 0, "month": 10}}', "positive kWh"),
        ('{"residential": 300}', "valid dictionary"),
    ],
)
def test_bad_thresholds_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, why: str
) -> None:
    monkeypatch.setenv("GRIDWATCH_LARGE_CONSUMPTION_KWH", value)
    with pytest.raises(SettingsError) as err:
        load_settings(env_file=tmp_path / ".env", warn=None)
    assert "GRIDWATCH_LARGE_CONSUMPTION_KWH" in str(err.value) and why in str(err.value)
    assert "\n" not in str(err.value)


def test_thresholds_and_offset_reach_the_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRIDWATCH_LARGE_CONSUMPTION_KWH", '{"commercial": {"day": 800, "month": 9000}}')
    monkeypatch.setenv("GRIDWATCH_LOCAL_UTC_OFFSET_S", "28800")
    s = load_settings(env_file=tmp_path / ".env", warn=None)
    det = Detection(large_consumption_kwh=s.large_consumption_limits, utc_offset_s=s.local_utc_offset_s)
    lc = det.large_consumption
    assert (lc.day_kwh[1], lc.month_kwh[1], lc.utc_offset_s) == (800.0, 9000.0, 28800)
    assert np.isinf(lc.day_kwh[0])  # residential no longer listed: not checked
    monkeypatch.setenv("GRIDWATCH_LOCAL_UTC_OFFSET_S", str(15 * 3600))
    with pytest.raises(SettingsError, match="GRIDWATCH_LOCAL_UTC_OFFSET_S"):
        load_settings(env_file=tmp_path / ".env", warn=None)
