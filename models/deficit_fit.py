"""Explain an area's loss over the whole horizon by every meter's shortfall against its own level
before it changed (one non-negative coefficient per meter, on cumulative series).

Every theft model of the realistic simulator (a fraction per interval or per day, hours at a
fraction or at zero, a cap, a constant amount taken off) shows as the meter reading *below* what
it would use: ``shortfall = max(level_before x peers' level - reported, 0)``, where
``level_before`` is the meter's mean energy relative to its peers over the days before its
deepest daily drop (the EW mean the step evidence uses has already followed a theft that started
weeks ago, and then an old thief reads as honest). The loss carries the thieves' shortfalls and
none of the honest ones (an honest meter's consumption cancels in supply - sales), so all meters
are fitted at once:

    cumsum(loss) = cumsum([1, supply, supply^2]) c + sum over meters m of  a_m x cumsum(shortfall_m) + noise,

``a >= 0`` (NNLS). Cumulative because the supply register's steps (up to 6 kWh an hour in a large
area) telescope: the error of a sum of bins is that of its two end reads. Per meter, the evidence
is how much worse the cumulative loss is explained without its share (the others held), over
``2 sigma^2 x (1 + rho) / (1 - rho)``, sigma the fit's residual rms and rho its lag-1
autocorrelation (the cumulative residual is not independent from bin to bin).

>>> rng = np.random.default_rng(5)
>>> t = np.arange(24 * 20)
>>> level = 1 + np.sin(2 * np.pi * t / 24) ** 2
>>> real = rng.lognormal(-1, 0.5, (30, t.size)) * level
>>> reported = real.copy()
>>> reported[4, 24 * 8 :] = np.minimum(reported[4, 24 * 8 :], 0.2)   # meter 4 capped from day 8
>>> reported[11, 24 * 5 :] *= 0.6                                     # meter 11 at 60% from day 5
>>> supply = np.round(real.sum(axis=0) * 1.02 + 0.3, 1)
>>> expected = reported.mean(axis=1)[:, None] * level
>>> ev = deficit_evidence(supply - reported.sum(axis=0), supply, reported, expected, t // 24)
>>> np.argsort(-ev)[:3].tolist()      # meter 11 third, behind honest meter 6 by a hair (16.5, 18.0)
[4, 6, 11]
>>> ev = deficit_evidence(supply - reported.sum(axis=0), supply, reported, expected, t // 24, drop_t=None)
>>> np.argsort(-ev)[:3].tolist()      # against the level over the horizon alone (29.1, 16.4)
[4, 11, 6]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls

from models.change_evidence import away_bins, largest_drop

F64 = npt.NDArray[np.float64]


def horizon_level(energy: F64, expected: F64) -> F64:
    """Each meter's expected energy at its mean level over the horizon: the expected energy
    times the mean of reported / expected over the bins that have both (NaN where either is
    missing). The expected energy follows the meter's recent mean (about a week), which has
    already followed a theft that started weeks ago; over the horizon the meter's level
    includes the weeks before.

    >>> e = np.ones((1, 4)); e[0, 2:] = 0.5
    >>> horizon_level(e, np.full((1, 4), 0.5)).tolist()
    [[0.75, 0.75, 0.75, 0.75]]
    """
    ok = ~(np.isnan(energy) | np.isnan(expected)) & (np.nan_to_num(expected) > 0)
    ratio = np.where(ok, np.nan_to_num(energy) / np.where(ok, expected, 1.0), 0.0)
    count = ok.sum(axis=1)
    factor = np.divide(ratio.sum(axis=1), count, out=np.ones(len(energy)), where=count > 0)
    return np.where(np.isnan(energy), np.nan, expected * factor[:, None])


def level_before_drop(energy: F64, expected: F64, day: npt.NDArray[np.int64], *, min_t: float = 4.0) -> F64:
    """Each meter's expected energy at its level before its largest lasting drop: the expected
    energy times the mean of reported / expected over the days before the split day of the
    largest drop of its daily ``log(reported / expected)`` (summed over the day's bins; a
    two-sample t statistic, :func:`models.change_evidence.largest_drop`), where that drop's t
    reaches ``min_t``; else its level over the horizon (:func:`horizon_level`). NaN where either
    is missing.

    Why: over the horizon, a theft that started early is most of the meter's history, so the
    horizon's level sinks towards what the thief reports and the shortfall against it fades as
    the theft grows old. Before the drop, the meter's level is the one it had before stealing.

    >>> e = np.ones((2, 30 * 24)); e[0, 6 * 24 :] = 0.4   # meter 0 steals 60% from day 6
    >>> e[:, ::2] *= 1.1                                    # and both wobble
    >>> x = np.full(e.shape, 0.5)
    >>> before, horizon = level_before_drop(e, x, np.arange(30 * 24) // 24), horizon_level(e, x)
    >>> [round(float(v), 3) for v in (before[0, -1], horizon[0, -1], before[1, -1])]
    [1.05, 0.546, 1.05]
    """
    ok = ~(np.isnan(energy) | np.isnan(expected)) & (np.nan_to_num(expected) > 0)
    ratio = np.where(ok, np.nan_to_num(energy) / np.where(ok, expected, 1.0), 0.0)
    _, idx = np.unique(day, return_inverse=True)
    onehot = (idx[:, None] == np.arange(int(idx.max(initial=-1)) + 1)[None, :]).astype(np.float64)
    num = np.where(ok, np.nan_to_num(energy), 0.0) @ onehot
    den = np.where(ok, np.nan_to_num(expected), 0.0) @ onehot
    with np.errstate(divide="ignore", invalid="ignore"):
        daily = np.where(den > 0, np.log((num + 1e-3) / (den + 1e-3)), np.nan)
    t, split = largest_drop(daily)
    count = ok.sum(axis=1)
    horizon = np.divide(ratio.sum(axis=1), count, out=np.ones(len(energy)), where=count > 0)
    before = ok & (idx[None, :] < split[:, None])
    n_before = before.sum(axis=1)
    level = np.divide(
        np.where(before, ratio, 0.0).sum(axis=1), n_before, out=horizon.copy(), where=n_before > 0
    )
    factor = np.where((t >= min_t) & (n_before > 0), level, horizon)
    return np.where(np.isnan(energy), np.nan, expected * factor[:, None])


def deficit_evidence(
    loss: F64,
    supply: F64,
    energy: F64,
    expected: F64,
    day: npt.NDArray[np.int64],
    *,
    min_days: int = 14,
    away: float = 0.5,
    drop_t: float | None = 4.0,
) -> F64:
    """Per meter, the log-likelihood ratio of its shortfall's share of the area's loss over the
    horizon (see the module docstring). ``loss`` and ``supply``: judged bins only; ``energy``
    and ``expected``: meters x those bins (NaN = missing); ``day``: each bin's day number.

    Zero for every meter while the bins span fewer than ``min_days`` days: the level over the
    horizon is a level before a theft only once the horizon holds weeks before it, and a fresh
    theft is the step evidence's (on the plain simulator's 10-day cities the fit put honest
    meters ahead of fresh thieves: top 3 two days after onset 0.973 -> 0.878).

    A meter's days at a near-constant base load (:func:`models.change_evidence.away_bins`, its
    day's spread below ``away`` x its usual one; 0 = off) are left out, as missing: a household
    away is no shortfall, and before this away households filled the top of large areas.

    A meter whose daily level dropped for good (t of at least ``drop_t``) is judged against its
    level before the drop, the others against their level over the horizon
    (:func:`level_before_drop`; None: the horizon's level for every meter)."""
    n, t_n = energy.shape
    if n == 0 or t_n < 3 or len(np.unique(day)) < min_days:
        return np.zeros(n)
    if away > 0:
        energy = np.where(away_bins(energy, expected, day, away), np.nan, energy)
    if drop_t is None:
        level = horizon_level(energy, expected)
    else:
        level = level_before_drop(energy, expected, day, min_t=drop_t)
    short = np.where(np.isnan(level), 0.0, np.maximum(np.nan_to_num(level) - np.nan_to_num(energy), 0.0))
    x = np.cumsum(short, axis=1)
    s = supply / np.mean(supply)
    tech = np.cumsum(np.stack([np.ones_like(s), s, s * s]), axis=1)
    q, rr = np.linalg.qr(tech.T)
    q = q[:, np.abs(np.diag(rr)) > 1e-9 * np.abs(rr).max()]
    cum = np.cumsum(loss)
    y = cum - q @ (q.T @ cum)
    x = x - (x @ q) @ q.T
    norm = np.sqrt((x * x).sum(axis=1))
    use = np.flatnonzero(norm > 1e-9)
    out = np.zeros(n)
    if use.size == 0:
        return out
    a = (x[use] / norm[use, None]).T
    beta, _ = nnls(a, y, maxiter=20 * len(use) + 100)
    fit = a * beta[None, :]
    resid = y - fit.sum(axis=1)
    gain = ((resid[:, None] + fit) ** 2 - resid[:, None] ** 2).sum(axis=0)
    rho = float(np.clip((resid[1:] @ resid[:-1]) / max(float(resid @ resid), 1e-12), 0.0, 0.999))
    sigma2 = max(float(np.mean(resid**2)), 1e-12) * (1 + rho) / (1 - rho)
    out[use] = gain / (2 * sigma2)
    return out
