"""Each meter's lasting drop in its low hours, confirmed by a rise of the area's loss at the same
day: an order evidence for large areas with many thieves, where the joint fits name few of them.

Every theft model of the realistic simulator lowers the meter's *low* readings of the day for
the rest of the run (a fraction per interval, hours at a fraction or at zero, an amount taken
off), while an honest household's day-to-day swing moves mostly its peaks. Per meter and day:
the 10th percentile of ``log(reported / expected)`` over the day's bins; the evidence is the
largest drop of its mean at one split day (a two-sample t statistic, before against after).

Two confounders are handled apart:

* a household away (holidays, a vacancy) reads a near-constant base load: its day's spread of
  ``log(reported)`` (interquartile range) falls below half its usual one. Such days are left
  out: an away spell is not evidence either way;
* a drop the area's loss does not show: the daily loss (technical part ``[1, supply, supply^2]``
  regressed out) must step up at the meter's split day, from the week before it to the days
  after. The evidence is scaled by ``clip(t_loss / 2, 0, 1)``, ``t_loss`` the loss step's t
  statistic: a step of two standard errors counts in full, none or a fall counts nothing.

>>> rng = np.random.default_rng(3)
>>> days, n = 24, 40
>>> shape = 1 + np.sin(np.pi * (np.arange(24 * days) % 24) / 24) ** 2
>>> real = rng.lognormal(-1, 0.4, (n, 24 * days)) * shape
>>> reported = real.copy()
>>> reported[7, 24 * 10 :] *= rng.uniform(0.2, 0.8, 24 * (days - 10))   # meter 7: FDI from day 10
>>> supply = real.sum(axis=0) * 1.03
>>> mean = reported.mean(axis=1)[:, None]
>>> expected = np.median(reported / mean, axis=0) * mean
>>> ev = change_evidence(supply - reported.sum(axis=0), supply, reported, expected,
...                      np.arange(24 * days) // 24)
>>> int(np.argmax(ev))
7
"""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]

EPS_KWH = 0.02  # below a register's resolution: a zero reading is a finite, very low log


def daily_stats(energy: F64, expected: F64, day: npt.NDArray[np.int64]) -> tuple[F64, F64]:
    """Per meter and day (in order of the distinct ``day`` numbers): the 10th percentile of
    ``log(reported / expected)`` and the interquartile range of ``log(reported)`` over the day's
    bins (NaN where a day has no reading).

    >>> e = np.array([[1.0, 1.0, 0.5, 0.5]]); d = np.array([0, 0, 1, 1])
    >>> low, iqr = daily_stats(e, np.ones((1, 4)), d)
    >>> np.round(np.exp(low), 2).tolist(), iqr.tolist()
    ([[1.0, 0.51]], [[0.0, 0.0]])
    """
    ratio = _by_day(np.log((energy + EPS_KWH) / (np.nan_to_num(expected) + EPS_KWH)), day)
    level = _by_day(np.log(energy + EPS_KWH), day)
    low = _nanquantile_last(ratio, 0.10)
    iqr = _nanquantile_last(level, 0.75) - _nanquantile_last(level, 0.25)
    return low, iqr


def _by_day(x: F64, day: npt.NDArray[np.int64]) -> F64:
    """Rows x bins (bins in time order) -> rows x days x bins of the day, NaN-padded."""
    _, idx = np.unique(day, return_inverse=True)
    count = np.bincount(idx)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    grid = np.full((len(x), len(count), int(count.max(initial=1))), np.nan)
    grid[:, idx, np.arange(len(day)) - first[idx]] = x
    return grid


def _nanquantile_last(x: F64, q: float) -> F64:
    """``np.nanpercentile(x, 100 q, axis=-1)`` (linear), by one sort: NaN sorts last. About 50x
    faster than numpy's NaN-aware percentile on a few hundred meters x 30 days."""
    s = np.sort(x, axis=-1)
    k = (~np.isnan(x)).sum(axis=-1)
    h = q * np.maximum(k - 1, 0)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
    a = np.take_along_axis(s, lo[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(s, hi[..., None], axis=-1)[..., 0]
    return np.where(k > 0, a + (h - lo) * (b - a), np.nan)


def away_from_spread(iqr: F64, away: float = 0.5) -> npt.NDArray[np.bool_]:
    """Days (meters x days, from :func:`daily_stats`) on which a meter reads a near-constant base
    load: the day's spread of ``log(reported)`` below ``away`` x its median over the days
    (a household away, a vacancy; the simulator's away spells keep the fridge, no activity).

    >>> away_from_spread(np.array([[1.0, 1.2, 0.9, 0.2]])).tolist()
    [[False, False, False, True]]
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a meter with no day at all
        usual = np.nanmedian(iqr, axis=1, keepdims=True)
    return np.asarray(iqr < away * usual)


def away_bins(
    energy: F64, expected: F64, day: npt.NDArray[np.int64], away: float = 0.5
) -> npt.NDArray[np.bool_]:
    """:func:`away_from_spread` spread over each day's bins (meters x bins)."""
    _, iqr = daily_stats(energy, expected, day)
    return away_from_spread(iqr, away)[:, np.searchsorted(np.unique(day), day)]


def largest_drop(x: F64, *, edge: int = 3) -> tuple[F64, npt.NDArray[np.int64]]:
    """Per row, the largest drop of the mean at one split (two-sample t statistic, pooled
    variance; at least ``edge`` columns before and ``edge - 1`` after) and the split's column.
    NaN is left out; a row without a drop gets 0 at column 0.

    >>> t, k = largest_drop(np.array([[1.0, 1.1, 0.9, 1.0, 0.2, 0.3, 0.25, 0.2]]))
    >>> round(float(t[0]), 1), int(k[0])
    (16.1, 4)
    """
    n, m = x.shape
    best = np.zeros(n)
    at = np.zeros(n, dtype=np.int64)
    ok = ~np.isnan(x)
    v = np.where(ok, x, 0.0)
    c, s, q = np.cumsum(ok, axis=1), np.cumsum(v, axis=1), np.cumsum(v * v, axis=1)
    for k in range(edge, m - edge + 1):
        na, nb = c[:, k - 1], c[:, -1] - c[:, k - 1]
        sa, sb = s[:, k - 1], s[:, -1] - s[:, k - 1]
        qa, qb = q[:, k - 1], q[:, -1] - q[:, k - 1]
        with np.errstate(all="ignore"):
            ma, mb = sa / na, sb / nb
            ss = (qa - na * ma * ma) + (qb - nb * mb * mb)
            sd = np.sqrt(np.maximum(ss, 0.0) / np.maximum(na + nb - 2, 1)) + 1e-9
            t = np.nan_to_num((ma - mb) / sd * np.sqrt(na * nb / np.maximum(na + nb, 1)))
        t = np.where((na >= 2) & (nb >= 2), t, 0.0)
        up = t > best
        best, at = np.where(up, t, best), np.where(up, k, at)
    return best, at


def change_evidence(
    loss: F64,
    supply: F64,
    energy: F64,
    expected: F64,
    day: npt.NDArray[np.int64],
    *,
    min_days: int = 14,
    away: float = 0.5,
) -> F64:
    """Per meter, the drop of its low readings (t statistic, away days left out) times how far
    the area's daily loss steps up at the same day (``clip(t_loss / 2, 0, 1)``); see the module
    docstring. ``loss``, ``supply``: judged bins; ``energy``, ``expected``: meters x those bins
    (NaN = missing); ``day``: each bin's day number. Zero while the bins span fewer than
    ``min_days`` days (as :func:`models.deficit_fit.deficit_evidence`: a fresh theft is the
    step evidence's, and the plain simulator's 10-day cities are left as they were)."""
    n = len(energy)
    days = np.unique(day)
    if n == 0 or len(days) < min_days:
        return np.zeros(n)
    low, resid = _daily_low_and_loss(loss, supply, energy, expected, day, days, away)
    drop, split = largest_drop(low)
    step = loss_step(resid, split)
    return drop * np.clip(step / 2.0, 0.0, 1.0)


def _daily_low_and_loss(
    loss: F64,
    supply: F64,
    energy: F64,
    expected: F64,
    day: npt.NDArray[np.int64],
    days: npt.NDArray[np.int64],
    away: float,
) -> tuple[F64, F64]:
    """Per meter and day its low readings (:func:`daily_stats`, days away NaN), and the area's
    daily mean loss with the technical part (``[1, supply, supply^2]`` of the daily mean
    supply) regressed out: what :func:`change_evidence` and :func:`follow_evidence` compare."""
    low, iqr = daily_stats(energy, expected, day)
    low = np.where(away_from_spread(iqr, away), np.nan, low)
    idx = np.searchsorted(days, day)
    cnt = np.bincount(idx, minlength=len(days)).astype(np.float64)
    daily_loss = np.bincount(idx, weights=loss, minlength=len(days)) / cnt
    s = np.bincount(idx, weights=supply, minlength=len(days)) / cnt
    s = s / s.mean()
    tech = np.stack([np.ones_like(s), s, s * s], axis=1)
    resid = daily_loss - tech @ np.linalg.lstsq(tech, daily_loss, rcond=None)[0]
    return low, resid


def loss_step(resid: F64, split: npt.NDArray[np.int64], *, before: int = 7) -> F64:
    """t statistic of the rise of ``resid`` (the area's daily loss) from the ``before`` days
    before each ``split`` to all the days from it (0 where either side has fewer than 2 days).
    A week before, not the whole start: in an area whose thieves started one after another the
    loss rises all month, and against the whole start any late split would show a rise.

    >>> r = np.array([0.0, 0.1, -0.1, 0.0, 1.0, 1.1, 0.9])
    >>> loss_step(r, np.array([4, 0])).round(1).tolist(), loss_step(r, np.array([4]), before=2).round(1)
    ([14.6, 0.0], array([12.6]))
    """
    d = len(resid)
    c1 = np.concatenate([[0.0], np.cumsum(resid)])
    c2 = np.concatenate([[0.0], np.cumsum(resid * resid)])
    k = np.clip(split, 0, d)
    j = np.maximum(k - before, 0)
    na, nb = (k - j).astype(np.float64), (d - k).astype(np.float64)
    sa, qa = c1[k] - c1[j], c2[k] - c2[j]
    sb, qb = c1[d] - c1[k], c2[d] - c2[k]
    with np.errstate(all="ignore"):
        ma, mb = sa / na, sb / nb
        ss = (qa - na * ma * ma) + (qb - nb * mb * mb)
        sd = np.sqrt(np.maximum(ss, 0.0) / np.maximum(na + nb - 2, 1)) + 1e-9
        t = (mb - ma) / sd * np.sqrt(na * nb / (na + nb))
    return np.where((na >= 2) & (nb >= 2), np.nan_to_num(t), 0.0)


def follow_evidence(
    loss: F64,
    supply: F64,
    energy: F64,
    expected: F64,
    day: npt.NDArray[np.int64],
    *,
    min_days: int = 14,
    away: float = 0.5,
) -> F64:
    """Per meter, how closely its low readings of the day follow the area's daily loss, down
    when the loss is up: the correlation over the days of ``-low`` (the 10th percentile of
    ``log(reported / expected)`` over the day's bins, days away left out, as in
    :func:`change_evidence`) with the area's daily loss (technical part ``[1, supply,
    supply^2]`` regressed out), times ``sqrt(days)`` (about a z-score), kept if positive.

    Why: a thief on random days (``theft_days``, ``theft_mixed``) has no lasting drop for
    :func:`change_evidence`'s split to find, but every day it steals its low readings fall
    and the area's loss rises by what it took; an honest household's day-to-day swing does not
    move the loss (the supply meter sees it too). A lasting drop follows the loss's step up too.
    One meter at a time, not jointly: the loss of several thieves whose onsets follow one
    another is a rising ramp, and taking the first meters' share out of it takes the others'
    steps with it (a greedy joint fit found fewer; docs/suspects.md). Zero while the bins span
    fewer than ``min_days`` days (as :func:`change_evidence`).

    >>> rng = np.random.default_rng(4)
    >>> days, n = 24, 40
    >>> shape = 1 + np.sin(np.pi * (np.arange(24 * days) % 24) / 24) ** 2
    >>> real = rng.lognormal(-1, 0.4, (n, 24 * days)) * shape * rng.lognormal(0, 0.3, (n, days)).repeat(24, 1)
    >>> reported = real.copy()
    >>> on = np.repeat(rng.random(days) < 0.5, 24)                  # meter 5 steals on random days
    >>> reported[5, on] *= 0.4
    >>> supply = real.sum(axis=0) * 1.03
    >>> mean = reported.mean(axis=1)[:, None]
    >>> expected = np.median(reported / mean, axis=0) * mean
    >>> ev = follow_evidence(supply - reported.sum(axis=0), supply, reported, expected,
    ...                      np.arange(24 * days) // 24)
    >>> int(np.argmax(ev)), bool(ev[5] > 3 * np.median(ev))
    (5, True)
    """
    n = len(energy)
    days = np.unique(day)
    if n == 0 or len(days) < min_days:
        return np.zeros(n)
    low, resid = _daily_low_and_loss(loss, supply, energy, expected, day, days, away)
    ok = ~np.isnan(low)
    k = ok.sum(axis=1)
    m = np.maximum(k, 1).astype(np.float64)
    x = np.where(ok, -low - np.where(ok, -low, 0.0).sum(axis=1, keepdims=True) / m[:, None], 0.0)
    y = np.where(ok, resid[None, :], 0.0)
    y = np.where(ok, y - y.sum(axis=1, keepdims=True) / m[:, None], 0.0)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    r = np.divide((x * y).sum(axis=1), den, out=np.zeros(n), where=den > 0)
    return np.where(k >= 8, np.maximum(r, 0.0) * np.sqrt(k), 0.0)
