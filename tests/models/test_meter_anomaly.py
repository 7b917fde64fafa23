"""Per-meter detector on crafted series: each type within its delay, nothing on clean noise."""

from __future__ import annotations

import numpy as np
import pytest

from models.meter_anomaly import MeterAnomalyDetector, MeterEvent

DAY = 96


def clean(n: int = 60, days: int = 14, seed: int = 0) -> np.ndarray:
    """Energies (n meters x intervals): daily shape x lognormal noise (sigma 0.25)."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    hour = (t % DAY) / 4
    shape = 0.4 + 0.3 * np.exp(-((hour - 7.5) ** 2) / 3) + 0.8 * np.exp(-((hour - 19.5) ** 2) / 5)
    base = rng.lognormal(np.log(0.12), 0.5, size=n)[:, None]
    return np.asarray(base * shape * rng.lognormal(-(0.25**2) / 2, 0.25, size=(n, len(t))))


def run(
    det: MeterAnomalyDetector,
    energy: np.ndarray,
    *,
    back: np.ndarray | None = None,
    active: np.ndarray | None = None,
    start: int = 0,
) -> list[tuple[int, MeterEvent]]:
    n, steps = energy.shape
    idx = np.arange(n)
    out = []
    for t in range(start, steps):
        b = np.zeros(n, bool) if back is None else back[:, t]
        a = np.ones(n, bool) if active is None else active[:, t]
        out += [(t, e) for e in det.step(idx, energy[:, t], b, a)]
    return out


def opened(events: list[tuple[int, MeterEvent]], kind: str, meter: int) -> list[int]:
    return [t for t, e in events if e.type == kind and e.meter == meter and e.firing]


def test_clean_noisy_series_raises_nothing_over_14_days() -> None:
    for seed in range(3):
        assert run(MeterAnomalyDetector(capacity=8), clean(seed=seed)) == []


def test_state_is_compact() -> None:
    assert MeterAnomalyDetector.state_bytes_per_meter() <= 64
    det = MeterAnomalyDetector(capacity=2)
    det.step(np.array([0, 1000]), np.array([1.0, 1.0]), np.zeros(2, bool), np.ones(2, bool))
    assert det.capacity == 1024  # doubled until the index fits


def test_zero_run_alarms_on_the_fourth_interval_and_clears() -> None:
    e = clean()
    onset = 5 * DAY + 10
    e[3, onset : onset + 20] = 0.0
    ev = run(MeterAnomalyDetector(), e)
    assert opened(ev, "zero", 3) == [onset + 3]  # 4 zero intervals: onset..onset+3
    assert [t for t, x in ev if x.type == "zero" and not x.firing] == [onset + 20]


@pytest.mark.parametrize("factor", [20.0, 50.0])
def test_spike(factor: float) -> None:
    e = clean()
    t0 = 6 * DAY + 40
    e[7, t0] += factor * e[7].mean()
    ev = run(MeterAnomalyDetector(), e)
    assert opened(ev, "spike", 7) == [t0]
    assert all(x.meter == 7 for _, x in ev)


@pytest.mark.parametrize("share", [0.4, 0.6, 0.9])
def test_sustained_drop_h1_within_a_day(share: float) -> None:
    e = clean()
    onset = 4 * DAY + 30
    e[11, onset:] *= 1 - share
    ev = run(MeterAnomalyDetector(), e)
    got = opened(ev, "drop", 11)
    assert got and got[0] - onset < DAY
    assert len(got) == 1  # baselines frozen: the alarm stays open, no re-open
    assert {x.meter for _, x in ev} == {11}


def test_sustained_drop_h3_random_factor() -> None:
    e = clean()
    onset = 3 * DAY
    e[5, onset:] *= np.random.default_rng(9).uniform(0.1, 0.8, size=e.shape[1] - onset)
    got = opened(run(MeterAnomalyDetector(), e), "drop", 5)
    assert got and got[0] - onset < DAY


def test_sustained_rise_and_its_end() -> None:
    e = clean()
    onset, end = 4 * DAY, 9 * DAY
    e[20, onset:end] *= 2.5
    ev = run(MeterAnomalyDetector(), e)
    got = opened(ev, "rise", 20)
    assert got and got[0] - onset < 2 * DAY  # rises page later than drops (higher threshold)
    cleared = [t for t, x in ev if x.type == "rise" and not x.firing]
    assert cleared and end <= cleared[0] < end + DAY


def test_flat_line_of_identical_nonzero_energies() -> None:
    e = clean()
    t0 = 5 * DAY
    e[9, t0 : t0 + 20] = 0.5
    assert opened(run(MeterAnomalyDetector(), e), "flat_line", 9) == [t0 + 15]


def test_rollback_and_inactive_consumption_fire_at_once() -> None:
    e = clean()
    back = np.zeros(e.shape, bool)
    back[2, 300] = True
    e[2, 300] = np.nan
    active = np.ones(e.shape, bool)
    active[4, 500:] = False
    ev = run(MeterAnomalyDetector(), e, back=back, active=active)
    assert opened(ev, "rollback", 2) == [300]
    assert opened(ev, "inactive_consumption", 4) == [500]
    assert opened(ev, "missing", 2) == []


def test_missing_run_but_not_a_collection_outage() -> None:
    e = clean()
    e[6, 400:410] = np.nan
    e[:, 700:720] = np.nan  # the whole area: the concentrator, not the meters
    ev = run(MeterAnomalyDetector(), e)
    assert opened(ev, "missing", 6) == [403]
    assert [t for t, x in ev if x.type == "missing"] == [403, 410]


def test_snapshot_restore_gives_identical_events() -> None:
    e = clean()
    e[11, 8 * DAY :] *= 0.4
    e[3, 9 * DAY : 9 * DAY + 10] = 0.0
    first = MeterAnomalyDetector()
    run(first, e[:, : 7 * DAY])
    snap = first.snapshot()
    second = MeterAnomalyDetector()
    second.restore({k: v.copy() for k, v in snap.items()})
    a = run(first, e, start=7 * DAY)
    b = run(second, e, start=7 * DAY)
    assert a == b and opened(a, "drop", 11) and opened(a, "zero", 3)


def test_restore_refuses_incomplete_snapshot() -> None:
    snap = MeterAnomalyDetector().snapshot()
    del snap["share"]
    with pytest.raises(ValueError, match="share"):
        MeterAnomalyDetector().restore(snap)


def test_meter_stopped_from_the_start_resumes_without_a_spike_storm() -> None:
    e = clean()
    e[8, 2 : 3 * DAY] = 0.0  # stopped while the detector was still learning the meter
    ev = run(MeterAnomalyDetector(), e)
    assert len(opened(ev, "zero", 8)) == 1
    assert len(opened(ev, "spike", 8)) <= 2  # its mean was not taught that zero is normal
