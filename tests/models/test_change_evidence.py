"""The loss-confirmed drop of a meter's low readings: thieves of several models started weeks ago,
among honest households that go away (a base load) or move out (a lower level the supply sees
too), in one area whose loss carries the thieves."""

from __future__ import annotations

import warnings

import numpy as np

from models.change_evidence import (
    away_from_spread,
    change_evidence,
    daily_stats,
    follow_evidence,
    largest_drop,
    loss_step,
)

DAYS = 30


def area(seed: int, onsets: tuple[int, int] = (2, 13), moves: tuple[int, int] = (8, 20)) -> dict[str, object]:
    """150 households x 30 days (hourly): reported energy, an expected energy that follows the
    last week's mean (as the ranker's does), loss, supply (1 kWh register steps), and who is who.
    Thieves: a fresh fraction per hour, an amount taken off, hours at 30%; onsets spread over
    ``onsets`` (days). Honest: 12 away for a week at a near-constant base load, 6 new tenants at
    30-60% of the old level from a day in ``moves`` (their real consumption: the supply falls
    with them)."""
    rng = np.random.default_rng(seed)
    n, hours = 150, 24 * DAYS
    t = np.arange(hours)
    shape = 0.5 + 0.6 * np.exp(-(((t % 24) - 19.5) ** 2) / 5) + 0.35 * np.exp(-(((t % 24) - 7.5) ** 2) / 2)
    mean = rng.lognormal(np.log(0.6), 0.6, n)
    day = rng.lognormal(0, 0.3, (n, DAYS))[:, t // 24]
    real = mean[:, None] * shape * day * rng.lognormal(-0.05, 0.4, (n, hours))
    picked = rng.permutation(n)
    thieves, away, tenants = picked[:12].tolist(), picked[12:24].tolist(), picked[24:30].tolist()
    for m in away:
        start = 24 * int(rng.integers(5, 22))
        real[m, start : start + 168] = 0.15 * mean[m] * rng.lognormal(0, 0.03, 168)
    for m in tenants:
        real[m, 24 * int(rng.integers(moves[0], moves[1] + 1)) :] *= rng.uniform(0.3, 0.6)
    reported = real.copy()
    for k, m in enumerate(thieves):
        after = t >= 24 * (onsets[0] + k * (onsets[1] - onsets[0]) // (len(thieves) - 1))
        if k % 3 == 0:
            reported[m] = np.where(after, real[m] * rng.uniform(0.2, 0.8, hours), real[m])
        elif k % 3 == 1:
            reported[m] = np.where(after, np.maximum(real[m] - mean[m] * rng.uniform(0.2, 0.6), 0.0), real[m])
        else:
            steal = after & (rng.random((DAYS, 24)) < 0.5)[t // 24, t % 24]
            reported[m] = np.where(steal, 0.3 * real[m], real[m])
    load = real.sum(axis=0)
    flow = load + 0.01 * load.mean() + 0.02 * load**2 / load.mean()
    supply = np.diff(np.round(np.cumsum(np.concatenate([[1000.0], flow]))))  # 1 kWh register steps
    expected = reported[:, -168:].mean(axis=1)[:, None] * (shape / shape[-168:].mean())[None, :]
    return {
        "reported": reported,
        "expected": expected,
        "loss": supply - reported.sum(axis=0),
        "supply": supply,
        "day": t // 24,
        "thieves": thieves,
        "away": away,
        "tenants": tenants,
    }


def evidence(a: dict[str, object], **kw: object) -> np.ndarray:
    return change_evidence(a["loss"], a["supply"], a["reported"], a["expected"], a["day"], **kw)  # type: ignore[arg-type]


def test_thieves_rank_above_honest_households_away_or_moved_out() -> None:
    """Over four areas thieves rank above honest households in >= 80% of pairs (0.82-0.99; the
    shortfall fit alone: about 70% in its own test), and the 15 highest hold >= 8 of the 12
    thieves each time."""
    for seed in range(4):
        a = area(seed)
        ev = evidence(a)
        thieves = a["thieves"]
        honest = [m for m in range(len(ev)) if m not in thieves]  # type: ignore[operator]
        auc = float(np.mean(ev[thieves][:, None] > ev[honest][None, :]))
        assert auc >= 0.8, (seed, auc)
        assert len(set(np.argsort(-ev)[:15].tolist()) & set(thieves)) >= 8, seed  # type: ignore[arg-type]


def test_an_away_spell_at_a_base_load_is_left_out() -> None:
    """Households away for a week at a near-constant base load: their drop is deep, but their days
    away are not judged (the day's spread collapses), so they score below the median thief. With
    the mask off (``away=0``) they score higher."""
    for seed in range(3):
        a = area(seed)
        ev, unmasked = evidence(a), evidence(a, away=0.0)
        assert np.median(ev[a["away"]]) < np.median(ev[a["thieves"]]), seed
        assert np.mean(ev[a["away"]]) < np.mean(unmasked[a["away"]]), seed


def test_a_drop_the_loss_does_not_show_counts_little() -> None:
    """New tenants using 30-60% of the old level (days 14-22) after the thieves started (days
    2-5): a lasting drop of the low readings as deep as a thief's, but the supply fell with it,
    so the loss does not step up from the week before their day: the median tenant scores
    below the median thief (about half or less), while on the bare drop (no loss gate) it
    scores above."""
    for seed in range(4):
        a = area(seed, onsets=(2, 5), moves=(14, 22))
        ev = evidence(a)
        low, iqr = daily_stats(a["reported"], a["expected"], a["day"])  # type: ignore[arg-type]
        bare, _ = largest_drop(np.where(away_from_spread(iqr), np.nan, low))
        assert np.median(ev[a["tenants"]]) < 0.6 * np.median(ev[a["thieves"]]), seed
        assert np.median(bare[a["tenants"]]) > np.median(bare[a["thieves"]]), seed


def test_the_loss_gate_limit_onsets_spread_over_the_month() -> None:
    """The limit (docs/suspects.md): with onsets spread over the month the area's loss rises
    across every later day, so a new tenant's drop passes the gate and scores as a thief's."""
    a = area(0)
    ev = evidence(a)
    assert np.median(ev[a["tenants"]]) > 0.5 * np.median(ev[a["thieves"]])


def test_nothing_before_two_weeks() -> None:
    a = area(0)
    cut = np.asarray(a["day"]) < 10
    short = {k: (v[..., cut] if isinstance(v, np.ndarray) else v) for k, v in a.items()}
    assert not evidence(short).any()


def test_largest_drop_and_loss_step() -> None:
    x = np.array([[1.0, 1.1, 0.9, 1.0, 0.2, 0.3, 0.25, 0.2], [0.2, 0.3, 0.25, 0.2, 1.0, 1.1, 0.9, 1.0]])
    t, k = largest_drop(x)
    assert k[0] == 4 and t[0] > 10 and t[1] == 0  # a rise is no drop
    assert loss_step(x[1], np.array([4]))[0] > 10 and loss_step(x[0], np.array([4]))[0] < 0
    # A rise well before the split is not a step at it (the week before is the reference).
    ramp = np.concatenate([np.zeros(5), np.ones(15)])
    assert loss_step(ramp, np.array([15]))[0] == 0 and loss_step(ramp, np.array([5]), before=3)[0] > 10


def test_the_shortfall_fit_leaves_days_away_out() -> None:
    """:func:`models.deficit_fit.deficit_evidence` with the same away days left out: households
    away at a base load fall from above the thieves' mean to a tenth of it or less."""
    from models.deficit_fit import deficit_evidence

    for seed in range(3):
        a = area(seed)
        args = (a["loss"], a["supply"], a["reported"], a["expected"], a["day"])
        away = a["away"]
        # Against the level over the horizon the away households rank above the thieves' mean
        # unmasked; against the level before a drop (the default) the thieves' own rise (seed 2:
        # away 695, thieves 977 unmasked), and with either the mask takes the away ones down.
        for drop_t in (None, 4.0):
            masked = deficit_evidence(*args, drop_t=drop_t)  # type: ignore[arg-type]
            bare = deficit_evidence(*args, away=0.0, drop_t=drop_t)  # type: ignore[arg-type]
            if drop_t is None:
                assert np.mean(bare[away]) > np.mean(bare[a["thieves"]]) or seed == 1, seed
            assert np.mean(masked[away]) < 0.15 * np.mean(masked[a["thieves"]]), (seed, drop_t)


def test_daily_stats_match_numpy_nan_percentiles() -> None:
    """The one-sort quantiles equal numpy's NaN-aware ones, with missing bins, a meter missing a
    whole day and days of different lengths (bins not judged)."""
    rng = np.random.default_rng(0)
    e = rng.lognormal(-1, 0.5, (20, 240))
    e[rng.random(e.shape) < 0.1] = np.nan
    e[3, :24] = np.nan
    x = rng.lognormal(-1, 0.3, e.shape)
    keep = np.arange(240) % 7 != 3
    e, x, day = e[:, keep], x[:, keep], (np.arange(240) // 24)[keep]
    low, iqr = daily_stats(e, x, day)
    ratio, level = np.log((e + 0.02) / (x + 0.02)), np.log(e + 0.02)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for j, d in enumerate(np.unique(day)):
            c = day == d
            assert np.allclose(low[:, j], np.nanpercentile(ratio[:, c], 10, axis=1), equal_nan=True)
            q1, q3 = np.nanpercentile(level[:, c], [25, 75], axis=1)
            assert np.allclose(iqr[:, j], q3 - q1, equal_nan=True)


def intermittent_area(seed: int, n: int = 40, thieves: int = 4) -> dict[str, object]:
    """``n`` households x 30 days (hourly), as :func:`area`, with ``thieves`` stealing on random
    days (30-70% of them) **from the first day**: half by a fraction per day in [0.1, 0.7]
    (``theft_days``), half by a fresh fraction per hour in [0.2, 0.8] (``theft_mixed``); as many
    honest households away for a week at a base load."""
    rng = np.random.default_rng(seed)
    hours = 24 * DAYS
    t = np.arange(hours)
    shape = 0.5 + 0.6 * np.exp(-(((t % 24) - 19.5) ** 2) / 5) + 0.35 * np.exp(-(((t % 24) - 7.5) ** 2) / 2)
    mean = rng.lognormal(np.log(0.6), 0.6, n)
    day = rng.lognormal(0, 0.3, (n, DAYS))[:, t // 24]
    real = mean[:, None] * shape * day * rng.lognormal(-0.05, 0.4, (n, hours))
    picked = rng.permutation(n)
    stealing, away = picked[:thieves].tolist(), picked[thieves : 2 * thieves].tolist()
    for m in away:
        start = 24 * int(rng.integers(5, 22))
        real[m, start : start + 168] = 0.15 * mean[m] * rng.lognormal(0, 0.03, 168)
    reported = real.copy()
    for k, m in enumerate(stealing):
        steal = (rng.random(DAYS) < rng.uniform(0.3, 0.7))[t // 24]
        f = rng.uniform(0.1, 0.7, DAYS)[t // 24] if k % 2 else rng.uniform(0.2, 0.8, hours)
        reported[m] = np.where(steal, f * real[m], real[m])
    load = real.sum(axis=0)
    flow = load + 0.01 * load.mean() + 0.02 * load**2 / load.mean()
    supply = np.diff(np.round(np.cumsum(np.concatenate([[1000.0], flow]))))  # 1 kWh register steps
    expected = reported[:, -168:].mean(axis=1)[:, None] * (shape / shape[-168:].mean())[None, :]
    return {
        "reported": reported,
        "expected": expected,
        "loss": supply - reported.sum(axis=0),
        "supply": supply,
        "day": t // 24,
        "thieves": stealing,
        "away": away,
    }


def test_thieves_on_random_days_follow_the_loss() -> None:
    """Thieves on random days from the first day have no lasting drop for the change evidence
    to split at (thieves above honest households in 0.21-0.47 of pairs over six areas), but
    their low days are the area's lossy days: the follow evidence puts them above honest
    households in 0.47-0.94 of pairs (mean about 0.70), ahead of the change evidence in every
    area; households away score nothing (their days are left out)."""
    aucs = []
    for seed in range(6):
        a = intermittent_area(seed)
        args = (a["loss"], a["supply"], a["reported"], a["expected"], a["day"])
        thieves, away = np.asarray(a["thieves"]), np.asarray(a["away"])
        honest = np.setdiff1d(np.arange(len(np.asarray(a["reported"]))), thieves)
        follow, change = follow_evidence(*args), change_evidence(*args)  # type: ignore[arg-type]
        auc = float(np.mean(follow[thieves][:, None] > follow[honest][None, :]))
        assert auc > float(np.mean(change[thieves][:, None] > change[honest][None, :])) + 0.2, seed
        assert np.median(follow[away]) < 0.5 * np.median(follow[thieves]), seed
        aucs.append(auc)
    assert np.mean(aucs) >= 0.65, aucs


def test_follow_evidence_nothing_before_two_weeks_and_never_negative() -> None:
    a = intermittent_area(0)
    args = (a["loss"], a["supply"], a["reported"], a["expected"], a["day"])
    assert (follow_evidence(*args) >= 0).all()  # type: ignore[arg-type]
    cut = np.asarray(a["day"]) < 10
    short = [np.asarray(v)[..., cut] for v in args]
    assert not follow_evidence(*short).any()
