"""Per-area detectors: a loss jump inside the bounds, persistent high / negative loss, outages."""

from __future__ import annotations

import pickle
import sys

import numpy as np
from river import drift, stats

from models.area_anomaly import AreaAnomalyDetector, AreaEvent

DAY = 96
URBAN = {"lower": -0.01, "upper": 0.07}


def noisy_loss(days: int = 14, mean: float = 0.04, sd: float = 0.02, seed: int = 0) -> np.ndarray:
    return np.asarray(np.random.default_rng(seed).normal(mean, sd, days * DAY))


def feed(
    det: AreaAnomalyDetector, loss: np.ndarray, *, completeness: np.ndarray | None = None
) -> list[tuple[int, AreaEvent]]:
    out = []
    for t, x in enumerate(loss):
        c = 1.0 if completeness is None else float(completeness[t])
        rate = None if np.isnan(x) else float(x)
        out += [(t, e) for e in det.step("A1", loss_rate=rate, completeness=c, **URBAN)]
    return out


def test_clean_noisy_loss_raises_nothing() -> None:
    for seed in range(3):
        assert feed(AreaAnomalyDetector(), noisy_loss(seed=seed)) == []


def test_jump_inside_the_bounds_is_caught_and_clears() -> None:
    loss = noisy_loss()
    loss[5 * DAY : 8 * DAY] += 0.025  # 4% -> 6.5%: still qualified, but someone started stealing
    ev = feed(AreaAnomalyDetector(), loss)
    opened = [t for t, e in ev if e.type == "loss_jump" and e.firing]
    assert len(opened) == 1 and 5 * DAY < opened[0] < 6 * DAY
    assert not any(e.type == "high_loss" for _, e in ev)
    cleared = [t for t, e in ev if e.type == "loss_jump" and not e.firing]
    assert cleared and 8 * DAY < cleared[0] < 10 * DAY


def test_persistent_high_and_negative_loss() -> None:
    loss = noisy_loss()
    loss[4 * DAY : 7 * DAY] = np.random.default_rng(1).normal(0.15, 0.03, 3 * DAY)
    loss[9 * DAY :] = np.random.default_rng(2).normal(-0.05, 0.03, 5 * DAY)
    ev = feed(AreaAnomalyDetector(), loss)
    kinds = [(e.type, e.firing) for _, e in ev if e.type != "loss_jump"]
    assert kinds == [("high_loss", True), ("high_loss", False), ("negative_loss", True)]
    first_high = next(t for t, e in ev if e.type == "high_loss")
    assert first_high - 4 * DAY < DAY // 4


def test_single_bad_interval_does_not_page() -> None:
    loss = noisy_loss()
    loss[6 * DAY] = 0.9  # one outlier (13% of real series are outliers)
    assert feed(AreaAnomalyDetector(), loss) == []


def test_collection_outage_is_flagged_and_never_learned_as_loss() -> None:
    loss = noisy_loss()
    comp = np.ones(len(loss))
    comp[5 * DAY : 5 * DAY + 24] = 0.2
    loss[5 * DAY : 5 * DAY + 24] = np.nan
    comp[3 * DAY] = 0.5  # one late batch: not an outage
    loss[3 * DAY] = np.nan
    ev = feed(AreaAnomalyDetector(), loss, completeness=comp)
    assert [(t, e.type, e.firing) for t, e in ev] == [
        (5 * DAY + 1, "collection_outage", True),  # the second incomplete interval in a row
        (5 * DAY + 24, "collection_outage", False),
    ]


def test_snapshot_restore_gives_identical_events() -> None:
    loss = noisy_loss()
    loss[9 * DAY :] += 0.06
    det = AreaAnomalyDetector()
    feed(det, loss[: 7 * DAY])
    other = AreaAnomalyDetector()
    other.restore(pickle.loads(pickle.dumps(det.snapshot())))
    a, b = feed(det, loss[7 * DAY :]), feed(other, loss[7 * DAY :])
    assert a == b and any(e.type == "high_loss" for _, e in a)


def test_river_objects_are_too_big_for_per_meter_state() -> None:
    mean, var = stats.EWMean(0.02), stats.EWVar(0.02)
    mean.update(1.0)
    var.update(1.0)
    objs: list[object] = [mean, var, drift.PageHinkley()]
    pickled = sum(len(pickle.dumps(o)) for o in objs)
    shallow = sum(sys.getsizeof(o) + sys.getsizeof(vars(o)) for o in objs)
    assert min(pickled, shallow) > 64 * 4  # vs <= 64 bytes a meter in numpy arrays


def test_loss_jump_opens_only_above_its_baseline_and_does_not_flap() -> None:
    """A burst of loss the smoothed rate has not followed yet, or a fall, opens no jump; a real
    rise opens one with a positive score that stays open while the loss stays up."""
    det = AreaAnomalyDetector(warmup=4)
    rng = np.random.default_rng(0)
    events = []

    def step(rate: float) -> list:
        return det.step("A1", loss_rate=rate + rng.normal(0, 0.02), completeness=1.0, lower=-0.5, upper=0.5)

    for _ in range(400):
        events += step(0.04)
    for _ in range(40):  # the loss falls: nothing to report as a jump
        events += step(-0.02)
    assert not [e for e in events if e.type == "loss_jump"]
    for _ in range(300):
        events += step(0.12)
    jumps = [e for e in events if e.type == "loss_jump"]
    assert jumps and jumps[0].firing and jumps[0].score > 0
    assert all(e.score > 0 for e in jumps if e.firing)
    assert len(jumps) == 1  # opened once, not opened and resolved again
