"""Per-meter detector on crafted series: each type within its delay, nothing on clean noise."""

from __future__ import annotations

import numpy as np
import pytest

from models.meter_anomaly import MeterAnomalyDetector, MeterEvent

DAY = 96


def clean(n: int = 60, days: int = 14, seed: int = 0, day_sigma: float = 0.0) -> np.ndarray:
    """Energies (n meters x intervals): daily shape x lognormal noise (sigma 0.25), times a
    per-meter day factor (lognormal, ``day_sigma``) as the simulator draws one."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    hour = (t % DAY) / 4
    shape = 0.4 + 0.3 * np.exp(-((hour - 7.5) ** 2) / 3) + 0.8 * np.exp(-((hour - 19.5) ** 2) / 5)
    base = rng.lognormal(np.log(0.12), 0.5, size=n)[:, None]
    out = base * shape * rng.lognormal(-(0.25**2) / 2, 0.25, size=(n, len(t)))
    if day_sigma:
        out *= np.repeat(rng.lognormal(-(day_sigma**2) / 2, day_sigma, size=(n, days)), DAY, axis=1)
    return np.asarray(out)


def clean_ci(n: int = 8, days: int = 14, seed: int = 0) -> np.ndarray:
    """Industrial-like energies: two shifts 06-22 on weekdays, a quiet Sunday (0.15 of the
    shift), a night base load of 0.35, noise sigma 0.1 and a day factor of sigma 0.1."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    hour, weekday = (t % DAY) / 4, (t // DAY) % 7
    shift = ((hour >= 6) & (hour < 22)) * np.where(weekday == 6, 0.15, np.where(weekday == 5, 0.6, 1.0))
    base = rng.lognormal(np.log(7.5), 0.7, size=n)[:, None]
    out = base * (0.35 + 0.65 * shift) * rng.lognormal(-0.005, 0.1, size=(n, len(t)))
    return np.asarray(out * np.repeat(rng.lognormal(-0.005, 0.1, size=(n, days)), DAY, axis=1))


def run(
    det: MeterAnomalyDetector,
    energy: np.ndarray,
    *,
    back: np.ndarray | None = None,
    active: np.ndarray | None = None,
    group: np.ndarray | None = None,
    start: int = 0,
) -> list[tuple[int, MeterEvent]]:
    n, steps = energy.shape
    idx = np.arange(n)
    out = []
    for t in range(start, steps):
        b = np.zeros(n, bool) if back is None else back[:, t]
        a = np.ones(n, bool) if active is None else active[:, t]
        out += [(t, e) for e in det.step(idx, energy[:, t], b, a, group)]
    return out


def opened(events: list[tuple[int, MeterEvent]], kind: str, meter: int) -> list[int]:
    return [t for t, e in events if e.type == kind and e.meter == meter and e.firing]


def test_clean_noisy_series_raises_nothing_over_14_days() -> None:
    for seed in range(3):
        assert run(MeterAnomalyDetector(capacity=8), clean(seed=seed)) == []


def test_clean_series_with_day_to_day_swings_raises_nothing() -> None:
    # A meter's whole day 10% up or down (the simulator's per-meter day factor) is not a theft.
    for seed in range(3):
        assert run(MeterAnomalyDetector(), clean(seed=seed, day_sigma=0.1)) == []


def test_clean_industrial_week_raises_nothing_incl_collapse() -> None:
    # Quiet Sundays and nights are not a collapse, and a class of its own is its own reference.
    for seed in range(3):
        e = np.vstack([clean(n=40, seed=seed, day_sigma=0.1), clean_ci(n=8, seed=seed)])
        group = np.array([0] * 40 + [2] * 8)
        assert run(MeterAnomalyDetector(), e, group=group) == []


def test_state_is_compact() -> None:
    assert MeterAnomalyDetector.state_bytes_per_meter() <= 56  # + 8 for models.detection's register
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
    e = np.vstack([clean(), clean_ci(n=8)])
    e[11, 8 * DAY :] *= 0.4
    e[3, 9 * DAY : 9 * DAY + 10] = 0.0
    e[62, 7 * DAY + 50 :] *= 0.03  # collapses after the restore point
    group = np.array([0] * 60 + [1] * 8)
    first = MeterAnomalyDetector()
    run(first, e[:, : 7 * DAY], group=group)
    snap = first.snapshot()
    second = MeterAnomalyDetector()
    second.restore({k: v.copy() for k, v in snap.items()})
    a = run(first, e, group=group, start=7 * DAY)
    b = run(second, e, group=group, start=7 * DAY)
    assert a == b and opened(a, "drop", 11) and opened(a, "zero", 3) and opened(a, "collapse", 62)


def test_sustained_drop_h4_flat_random_factor() -> None:
    e = clean()
    onset = 5 * DAY + 48
    rng = np.random.default_rng(4)
    day_means = e[13, onset:].reshape(-1, DAY // 2).mean(axis=1).repeat(DAY // 2)  # h4: g_t x mean
    e[13, onset:] = rng.uniform(0.1, 0.8, size=e.shape[1] - onset) * day_means
    got = opened(run(MeterAnomalyDetector(), e), "drop", 13)
    assert got and got[0] - onset < DAY


def test_zeroed_run_h2_pages_as_zero_within_four_intervals() -> None:
    e = clean()
    onset = 6 * DAY + 40  # mid-morning: the meter's usual use over 4 intervals is well above 0.2 kWh
    e[15, onset : onset + 24] = 0.0
    assert opened(run(MeterAnomalyDetector(), e), "zero", 15) == [onset + 3]


def registers(e: np.ndarray) -> np.ndarray:
    """What a direct meter reports: differences of a register kept to 0.01 kWh."""
    reg = np.round(np.cumsum(e, axis=1), 2)
    return np.diff(reg, axis=1, prepend=0.0)


def test_small_meter_that_reads_zero_at_night_stops_in_the_day() -> None:
    # 0.06 kW: a night interval is half a register step (zeros are normal), a day interval 2-4
    # steps; four zeros in a row where 16 steps were expected are not chance.
    e = clean(seed=3, day_sigma=0.1)
    e[9] *= 0.015 / e[9].mean()
    e = registers(e)
    quiet = run(MeterAnomalyDetector(), e.copy())
    assert not [x for _, x in quiet if x.meter == 9]
    onset = 6 * DAY + 44  # 11:00
    e[9, onset:] = 0.0
    assert opened(run(MeterAnomalyDetector(), e), "zero", 9) == [onset + 3]


def test_theft_found_in_an_area_where_half_the_meters_steal() -> None:
    # Thieves under an open alarm are not peers: the later thefts are still measured against
    # honest meters, not against the earlier thieves' frozen baselines.
    e = clean(seed=5, day_sigma=0.1)
    onsets = {m: 3 * DAY + 12 * m for m in range(0, 60, 2)}  # one every 6 hours
    for m, t0 in onsets.items():
        e[m, t0:] *= 0.4
    ev = run(MeterAnomalyDetector(), e)
    late = [m for m, t0 in onsets.items() if not (got := opened(ev, "drop", m)) or got[0] - t0 >= DAY]
    assert late == []
    assert not [x for _, x in ev if x.meter % 2 and x.firing]  # no honest meter pages


def test_small_peer_group_needs_three_reporting_meters() -> None:
    e = clean(n=6, seed=2)
    onset = 6 * DAY
    e[0, onset:] *= 0.3
    e[4, onset:] *= 0.3
    three = run(MeterAnomalyDetector(), e, group=np.array([1, 1, 1, 2, 2, 0]))
    assert opened(three, "drop", 0)
    assert not opened(three, "drop", 4)  # a pair: no shape to compare with, no level test


def test_peer_level_keeps_its_scale() -> None:
    # Baselines are medians of log consumption and the level a median over them: they do not
    # drift together (a mean-based baseline would grow by the noise's mean / median ratio).
    det = MeterAnomalyDetector()
    e = clean(seed=1, day_sigma=0.1)
    run(det, e[:, : 4 * DAY])
    early = float(np.median(det.snapshot()["lshare"][:60]))
    run(det, e[:, 4 * DAY :])
    assert abs(float(np.median(det.snapshot()["lshare"][:60])) - early) < 0.03


def test_rise_does_not_turn_every_evening_into_a_spike() -> None:
    e = clean()
    e[21, 5 * DAY :] *= 4.0  # a new heater: a sustained rise, not a spike every evening
    ev = run(MeterAnomalyDetector(), e)
    assert opened(ev, "rise", 21)
    assert len(opened(ev, "spike", 21)) <= 1


@pytest.mark.parametrize("ramp", [1, 32])
def test_collapse_of_an_industrial_customer_and_its_recovery(ramp: int) -> None:
    e = np.vstack([clean(n=40, day_sigma=0.1), clean_ci(n=8, seed=3)])
    group = np.array([0] * 40 + [2] * 8)
    m, onset, back = 43, 4 * DAY + 30, 9 * DAY + 30
    fade = np.clip(np.arange(back - onset) / ramp, 0.0, 1.0)
    e[m, onset:back] *= 1 - 0.96 * fade  # shutdown: down to 4% over ``ramp`` intervals
    ev = run(MeterAnomalyDetector(), e, group=group)
    got = opened(ev, "collapse", m)
    assert len(got) == 1 and 0.5 * DAY < got[0] - onset < 2 * DAY
    cleared = [t for t, x in ev if x.type == "collapse" and x.meter == m and not x.firing]
    assert cleared and back < cleared[0] < back + DAY
    assert [x for _, x in ev if x.type == "collapse" and x.meter != m] == []
    first = next(x for t, x in ev if x.type == "collapse" and x.firing)
    assert first.score > 0.8 and first.evidence["ratio"] < 0.2


def test_collapse_only_for_its_groups_and_not_for_a_stopped_meter() -> None:
    e = np.vstack([clean(n=40, day_sigma=0.1), clean_ci(n=8, seed=3)])
    group = np.array([0] * 40 + [2] * 8)
    e[7, 4 * DAY :] *= 0.05  # a residential meter: a drop, not an arrears risk
    e[44, 4 * DAY : 8 * DAY] = 0.0  # stopped, then back: zero, never collapse
    ev = run(MeterAnomalyDetector(), e, group=group)
    assert opened(ev, "drop", 7) and not opened(ev, "collapse", 7)
    assert opened(ev, "zero", 44) == [4 * DAY + 3]
    assert not opened(ev, "collapse", 44)
    assert not [x for _, x in ev if x.type == "collapse"]
    off = run(MeterAnomalyDetector(collapse_groups=()), e, group=group)
    assert not [x for _, x in off if x.type == "collapse"]


def test_restore_refuses_incomplete_snapshot() -> None:
    snap = MeterAnomalyDetector().snapshot()
    del snap["lshare"]
    with pytest.raises(ValueError, match="lshare"):
        MeterAnomalyDetector().restore(snap)


def test_meter_stopped_from_the_start_resumes_without_a_spike_storm() -> None:
    e = clean()
    e[8, 2 : 3 * DAY] = 0.0  # stopped while the detector was still learning the meter
    ev = run(MeterAnomalyDetector(), e)
    assert len(opened(ev, "zero", 8)) == 1
    assert len(opened(ev, "spike", 8)) <= 2  # its mean was not taught that zero is normal
