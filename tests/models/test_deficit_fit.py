"""The shortfall fit over the horizon: thieves of several models (a fraction per hour, a constant
amount taken off, hours at a fraction), started weeks ago, among honest households with holidays,
in one area whose loss carries them all."""

from __future__ import annotations

import numpy as np

from models.deficit_fit import deficit_evidence, horizon_level


def area(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int], list[int]]:
    """150 households over 30 days (hourly): reported energy, an expected energy that follows the
    last week's mean (as the ranker's does), the loss, the supply, the thieves and the households
    away for a week (their consumption drops, not in the loss)."""
    rng = np.random.default_rng(seed)
    n, hours = 150, 24 * 30
    t = np.arange(hours)
    shape = 0.5 + 0.6 * np.exp(-(((t % 24) - 19.5) ** 2) / 5) + 0.35 * np.exp(-(((t % 24) - 7.5) ** 2) / 2)
    mean = rng.lognormal(np.log(0.6), 0.6, n)
    day = rng.lognormal(0, 0.3, (n, 30))[:, t // 24]
    real = mean[:, None] * shape * day * rng.lognormal(-0.05, 0.4, (n, hours))
    reported = real.copy()
    picked = rng.permutation(n)
    thieves, away = sorted(picked[:12].tolist()), sorted(picked[12:24].tolist())
    for k, m in enumerate(thieves):
        after = t >= 24 * (2 + k)  # onsets from day 2 to day 13
        if k % 3 == 0:  # a fresh fraction per hour (false data injection)
            reported[m] = np.where(after, real[m] * rng.uniform(0.2, 0.8, hours), real[m])
        elif k % 3 == 1:
            cut = mean[m] * rng.uniform(0.2, 0.6)
            reported[m] = np.where(after, np.maximum(real[m] - cut, 0.0), real[m])
        else:
            hours_on = rng.random((30, 24)) < 0.5
            steal = after & hours_on[t // 24, t % 24]
            reported[m] = np.where(steal, 0.3 * real[m], real[m])
    for m in away:  # a week away: really uses a tenth (the supply sees it too)
        start = 24 * int(rng.integers(5, 22))
        real[m, start : start + 168] *= 0.1
        reported[m, start : start + 168] *= 0.1
    load = real.sum(axis=0)
    supply = load + 0.01 * load.mean() + 0.02 * load**2 / load.mean()
    register = np.round(np.cumsum(np.concatenate([[1000.0], supply])) / 1.0)  # 1 kWh register steps
    supply = np.diff(register)
    recent = reported[:, -168:].mean(axis=1)  # the week's mean: already after every onset
    expected = recent[:, None] * (shape / shape[-168:].mean())[None, :]
    return reported, expected, supply - reported.sum(axis=0), supply, thieves, away


def test_thieves_rank_above_honest_households_by_the_shortfall_fit() -> None:
    """Not a separator on its own (the ranker adds it to the score at a tenth): thieves above
    honest households in about 70% of pairs over four areas (chance: 50%), and the 15 highest
    (10% of the area) hold 4 or more of the 12 thieves on average (chance: 1.2). Households away
    for a week confound it (they rank about as high as the thieves; docs/suspects.md)."""
    aucs, found = [], []
    for seed in range(4):
        reported, expected, loss, supply, thieves, _ = area(seed)
        ev = deficit_evidence(loss, supply, reported, expected, np.arange(loss.size) // 24)
        honest = [m for m in range(len(ev)) if m not in thieves]
        aucs.append(float(np.mean(ev[thieves][:, None] > ev[honest][None, :])))
        found.append(len(set(np.argsort(-ev)[:15].tolist()) & set(thieves)))
    assert np.mean(aucs) >= 0.65, aucs
    assert np.mean(found) >= 4, found


def test_the_level_over_the_horizon_includes_the_weeks_before_a_theft() -> None:
    e = np.ones((2, 30 * 24))
    e[0, 10 * 24 :] = 0.4  # stealing 60% since day 10
    expected = np.where(np.arange(2)[:, None] == 0, 0.4, 1.0) * np.ones_like(e)  # a recent mean
    level = horizon_level(e, expected)
    assert level[0, 0] > 0.55 and abs(level[1, 0] - 1.0) < 1e-9
    e[1, 5] = np.nan
    assert np.isnan(horizon_level(e, expected)[1, 5])


def test_no_shortfall_evidence_before_two_weeks_of_history() -> None:
    reported, expected, loss, supply, _, _ = area(0)
    day = np.arange(loss.size) // 24
    short = day < 13
    ev = deficit_evidence(loss[short], supply[short], reported[:, short], expected[:, short], day[short])
    assert not ev.any()
    assert deficit_evidence(loss, supply, reported, expected, day).max() > 0


def test_an_early_theft_is_judged_against_the_level_before_its_drop() -> None:
    """A thief stealing 40% from day 4 of 30: over the horizon its level is mostly the theft's
    own, so the shortfall against it fades (issue #14: thieves found at day 14 lost at day 30);
    against its level before the drop it keeps its shortfall. Over six areas of 40 households
    (a day-to-day swing of 25%, hourly noise of 40%) the evidence is at least 1.25x that against
    the horizon's level in each (measured 1.3-11x) and the thief never ranks lower."""
    days = 30
    t = np.arange(24 * days)
    shape = 1 + np.sin(2 * np.pi * t / 24) ** 2
    ranks = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        mean = rng.lognormal(-1, 0.4, 40)
        swing = rng.lognormal(0, 0.25, (40, days))[:, t // 24]
        real = mean[:, None] * shape * swing * rng.lognormal(0, 0.4, (40, t.size))
        reported = real.copy()
        reported[3, t >= 24 * 4] *= 0.6
        supply = np.round(real.sum(axis=0) * 1.02 + 0.3, 0)  # 1 kWh register steps
        expected = reported[:, -168:].mean(axis=1)[:, None] * shape / shape.mean()  # a recent mean
        args = (supply - reported.sum(axis=0), supply, reported, expected, t // 24)
        before, horizon = deficit_evidence(*args), deficit_evidence(*args, drop_t=None)
        assert before[3] >= 1.25 * horizon[3], (seed, before[3], horizon[3])
        ranks.append((int((before > before[3]).sum()), int((horizon > horizon[3]).sum())))
    assert all(b <= h for b, h in ranks) and sum(b for b, _ in ranks) < sum(h for _, h in ranks), ranks
