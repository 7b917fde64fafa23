"""The evidence a suspect ranking is made of, as pure functions over an area's series
(:class:`models.suspects.SuspectRanker` keeps the series and calls them; the module docstring
of :mod:`models.suspects` says how they combine):

* :func:`drop_evidence`: a meter's deepest drop against its expected energy, over any span;
* :func:`loss_evidence` and :func:`evidence`: how much better the area's loss is explained with
  a meter's deficit in it, the strongest causes taken one at a time;
* :func:`attribute`: the joint attribution of the area's loss over every meter's deficit
  (non-negative least squares);
* :func:`combine`: the ranking score from these.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import nnls

F64 = npt.NDArray[np.float64]


def combine(
    step: F64, joint: F64, loss: F64 | None = None, *, alone: float = 10.0, confirm: float = 3.0
) -> F64:
    """The ranking score of a meter from its step score (a recent drop the loss confirms, one
    cause at a time), its joint evidence (its share of the area's loss over the horizon) and the
    step's loss evidence ``loss`` (None: not capped by it).

    Where the joint fit gives some meter at least ``alone`` (a third of the publishing bar),
    the score is the joint evidence plus the step score up to ``alone`` plus three times the
    joint evidence, and up to ``confirm`` times the step's loss evidence: in an area with several
    thieves an honest meter's dip rides on their loss in the single-cause test, while the joint
    fit gives it no share, and a noisy honest household's deep dips (holidays, evenings out) are
    drop evidence the loss does not confirm, which must not make it a suspect on its own. Where
    the joint fit gives none (a short history, a single fresh theft behind a coarse supply
    register, whose cumulative single-cause test sees it better), the step score as it is. A
    step the loss refutes (negative) counts only for a meter the joint fit gives no share: with
    several thieves the single-cause test refutes the biggest of them (issue #14: ranks 32 and
    33 of 33).

    >>> step, joint = np.array([100.0, 100.0, -40.0, 5.0]), np.array([0.0, 20.0, 0.0, 30.0])
    >>> combine(step, joint).tolist()
    [10.0, 90.0, -40.0, 35.0]
    >>> combine(step, joint, np.array([0.0, 20.0, -40.0, 1.0])).tolist()
    [0.0, 80.0, -40.0, 33.0]
    >>> combine(np.array([100.0, 50.0]), np.array([0.0, 2.0]), np.array([0.0, 0.0])).tolist()
    [100.0, 50.0]
    """
    if joint.size == 0 or float(joint.max()) < alone:
        return step
    refuted = np.where(joint > 0, 0.0, np.minimum(step, 0.0))  # one cause refuted, not a share
    cap = 3 * joint + alone
    if loss is not None:
        cap = np.minimum(cap, confirm * np.maximum(loss, 0.0))
    return joint + np.minimum(np.maximum(step, 0.0), cap) + refuted


def _residual_maker(supply: F64) -> F64:
    """Orthonormal basis of the cumulative [1, supply, supply^2] (what technical loss explains:
    a no-load part and one growing with the load squared)."""
    s = supply / np.mean(supply)
    z = np.cumsum(np.stack([np.ones_like(s), s, s * s], axis=1), axis=0)
    q, rr = np.linalg.qr(z)
    return np.asarray(q[:, np.abs(np.diag(rr)) > 1e-9 * np.abs(rr).max()])


def loss_evidence(loss: F64, deficit: F64, supply: F64, *, noise_floor: float = 0.001) -> tuple[F64, F64]:
    """How much better the area's loss is explained with each row of ``deficit`` in it.

    Model: ``loss = technical + deficit + noise`` with coefficient one (a meter that
    under-registers by x kWh raises the loss by x kWh). On the cumulative series, after removing
    what technical loss explains (``r``), returns the log-likelihood ratio against "not in the
    loss", ``(|r(L)|^2 - |r(L - D)|^2) / (2 sigma^2)``, and the share
    ``1 - |r(L - D)|^2 / |r(L)|^2``. Sigma, the noise of the cumulative loss, is estimated from
    its increments (robustly: a theft is a step, not noise), and is at least what the best
    meter leaves unexplained and ``noise_floor`` x the mean bin supply. A deficit that is not in
    the loss scores below zero.

    >>> t = np.arange(48.0)
    >>> supply = 100 + 20 * np.sin(t / 4)
    >>> theft = np.where(t >= 30, 3.0, 0.0)
    >>> loss = 1 + 0.0002 * supply**2 + theft + np.where(t % 2, 0.2, -0.2)  # register steps
    >>> llr, share = loss_evidence(loss, np.stack([theft, np.where(t % 7 == 0, 3.0, 0.0)]), supply)
    >>> (llr > 0).tolist(), share.round(2).tolist()
    ([True, False], [1.0, -0.06])
    """
    gain, total, sigma = _gains(loss, deficit, supply, noise_floor=noise_floor)
    share = gain / total if total > 0 else np.zeros(len(gain))
    return np.asarray(gain / (2 * sigma**2)), np.asarray(share)


def _gains(
    loss: F64, deficit: F64, supply: F64, *, noise_floor: float, sigma: float | None = None
) -> tuple[F64, float, float]:
    """``|r(L)|^2 - |r(L - D)|^2`` per row, ``|r(L)|^2`` and sigma (see :func:`loss_evidence`)."""
    q = _residual_maker(supply)

    def resid(y: F64) -> F64:
        c = np.cumsum(y, axis=-1)
        return np.asarray(c - (c @ q) @ q.T)

    x, d = resid(loss), resid(np.atleast_2d(deficit))
    total = float(x @ x)
    gain = 2 * (d @ x) - (d * d).sum(axis=1)
    if sigma is None:
        inc = np.diff(x)
        sigma = float(np.median(np.abs(inc - np.median(inc)))) / 0.6745 / np.sqrt(2)
        # What the best meter leaves unexplained is noise too (another cause, e.g. a customer
        # recorded elsewhere): else every meter that follows part of it gains.
        unexplained = (total - float(gain.max(initial=0.0))) / len(x)
        sigma = max(sigma, float(np.sqrt(max(unexplained, 0.0))), noise_floor * float(np.mean(supply)), 1e-12)
    return np.asarray(gain), total, sigma


@dataclass(frozen=True, slots=True)
class Evidence:
    """Per meter: ``score``, ``loss`` and ``drop`` log-likelihood ratios, ``share`` of the area's
    loss explained, and the drop's bins ``[lo, hi)`` (see :func:`evidence`)."""

    score: F64
    loss: F64
    share: F64
    drop: F64
    lo: npt.NDArray[np.int64]
    hi: npt.NDArray[np.int64]


def evidence(
    loss: F64,
    supply: F64,
    energy: F64,
    expected: F64,
    *,
    confirm: float = 3.0,
    day_sigma: float = 0.1,
    bins_per_day: int = 24,
    noise_floor: float = 0.001,
    max_causes: int = 3,
    min_score: float = 30.0,
) -> Evidence:
    """Score every meter of an area over its judged bins (the ranking of :class:`SuspectRanker`).

    ``score = drop + min(loss, confirm x drop)``. Then, up to ``max_causes`` times, the best
    meter not yet taken whose score reaches ``min_score`` with positive loss evidence is taken
    as a cause and its deficit removed from the loss: the others' loss evidence is re-judged
    against what is left, so an honest meter whose dip happens to run beside a thief's does not
    ride on the thief's loss.
    """
    deficit = np.nan_to_num(np.where(np.isnan(energy), 0.0, expected - energy))
    drop, lo, hi = drop_evidence(energy, expected, day_sigma=day_sigma, bins_per_day=bins_per_day)
    gain, total, sigma = _gains(loss, deficit, supply, noise_floor=noise_floor)
    taken = np.zeros(len(gain), dtype=bool)
    rest = loss
    while True:
        llr = gain / (2 * sigma**2)
        score = drop + np.minimum(llr, confirm * drop)
        pick = np.where(taken, -np.inf, np.where(llr > 0, score, -np.inf))
        j = int(np.argmax(pick)) if len(pick) else 0
        if taken.sum() >= max_causes or not len(pick) or pick[j] < min_score:
            break
        taken[j] = True
        rest = rest - deficit[j]
        again, _, _ = _gains(rest, deficit, supply, noise_floor=noise_floor, sigma=sigma)
        gain = np.where(taken, gain, again)
    share = gain / total if total > 0 else np.zeros(len(gain))
    return Evidence(score, llr, share, drop, lo, hi)


@dataclass(frozen=True, slots=True)
class Attribution:
    """The area's loss shared among its meters over the horizon (see :func:`attribute`).

    Per meter: ``stolen`` kWh attributed to it, ``llr`` how much worse the loss is explained
    without its share (log-likelihood ratio, the others' shares held), ``days`` with a share,
    and the first and last bin (index into the series; -1 for none) with one."""

    stolen: F64
    llr: F64
    days: npt.NDArray[np.int64]
    first: npt.NDArray[np.int64]
    last: npt.NDArray[np.int64]


def attribute(
    loss: F64,
    supply: F64,
    energy: F64,
    expected: F64,
    day: npt.NDArray[np.int64],
    *,
    ridge: float = 1.0,
    iters: int = 2,
    noise_floor: float = 0.001,
) -> Attribution:
    """Explain the area's loss by all its meters at once, day by day (non-negative least squares).

    ``loss = technical + sum over meters of stolen + noise``, judged bins only. Technical loss is
    ``[1, supply, supply^2]`` over the whole horizon (a no-load part and one growing with the
    load squared). A meter's stolen energy in a bin of day ``d`` is
    ``a[m, d] x reported + b[m, d] x expected-when-it-reads-zero`` with ``a, b >= 0``: a meter
    that registers a fraction of what flows (constant, per day, per interval) has its stolen
    energy proportional to what it reports, and a bypass that zeroes it takes what it would have
    used. The coefficients are fresh each day (intermittent thieves), found by NNLS per day on
    columns scaled to unit norm with a ridge of ``ridge`` x the loss noise (a day of 24 bins has
    fewer rows than an area has meters; the ridge and the sign keep the spurious shares small),
    alternating ``iters`` times with the technical fit. An honest meter's consumption cancels in
    the loss (the supply meter sees it too), so only the thieves' deficits are in what is fitted.

    >>> rng = np.random.default_rng(3)
    >>> t = np.arange(24 * 10)
    >>> real = rng.lognormal(-1, 0.6, (12, t.size)) * (1 + np.sin(2 * np.pi * t / 24) ** 2)
    >>> reported = real.copy()
    >>> reported[4, 100:] *= 0.5  # meter 4 reports half from bin 100
    >>> reported[9, t % 24 < 6] = 0.0  # meter 9 reads nothing six hours a day
    >>> supply = real.sum(axis=0) * 1.02
    >>> at = attribute(supply - reported.sum(axis=0), supply, reported, reported + 0.1, t // 24)
    >>> sorted(np.argsort(-at.llr)[:2].tolist()), int(at.first[4] // 24)
    ([4, 9], 4)
    """
    n, t_n = energy.shape
    out_first, out_last = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    if n == 0 or t_n < 3:
        return Attribution(np.zeros(n), np.zeros(n), np.zeros(n, np.int64), out_first, out_last)
    r = np.nan_to_num(energy)
    z = np.where(r <= 0, np.nan_to_num(expected), 0.0) * ~np.isnan(energy)
    f = np.stack([r, z])  # kinds x meters x bins
    n_k = len(f)
    s = supply / np.mean(supply)
    q, rr = np.linalg.qr(np.stack([np.ones_like(s), s, s * s], axis=1))
    q = q[:, np.abs(np.diag(rr)) > 1e-9 * np.abs(rr).max()]
    y = loss - q @ (q.T @ loss)
    sigma = max(float(np.median(np.abs(np.diff(y) - np.median(np.diff(y))))) / 0.6745 / np.sqrt(2), 1e-9)
    k = np.sqrt(ridge) * sigma
    days = [np.flatnonzero(day == d) for d in np.unique(day)]
    share = np.zeros((n, t_n))  # each meter's fitted stolen energy per bin
    for _ in range(max(iters, 1)):
        y = loss - share.sum(axis=0)
        y = loss - q @ (q.T @ y)  # the loss less its technical part, given the shares
        for rows in days:
            cols = f[:, :, rows].reshape(n_k * n, len(rows)).T  # bins x (kinds x meters)
            target = y[rows]
            norm = np.sqrt((cols * cols).sum(axis=0))
            use = np.flatnonzero(norm > 0)
            a = cols[:, use] / norm[use]
            lhs = np.vstack([a, k * np.eye(len(use))])
            sol, _ = nnls(lhs, np.concatenate([target, np.zeros(len(use))]), maxiter=50 * len(use) + 100)
            beta = np.zeros(n_k * n)
            beta[use] = sol / norm[use]
            share[:, rows] = np.einsum("km,kmt->mt", beta.reshape(n_k, n), f[:, :, rows])
    resid = y - share.sum(axis=0)
    gain = ((resid[None, :] + share) ** 2 - resid[None, :] ** 2).sum(axis=1)
    # What the fit leaves is noise too (register steps, technical loss off its model, causes no
    # meter explains), and so is a thousandth of the supply: judged against less, every meter
    # that follows a part of it would look certain.
    rms = float(np.sqrt(np.mean(resid**2)))
    sigma = max(sigma, rms, noise_floor * float(np.mean(supply)))
    on = share > 1e-9
    any_on = on.any(axis=1)
    first = np.where(any_on, on.argmax(axis=1), -1)
    last = np.where(any_on, t_n - 1 - on[:, ::-1].argmax(axis=1), -1)
    n_days = np.array([len(np.unique(day[on[m]])) for m in range(n)], dtype=np.int64)
    return Attribution(share.sum(axis=1), gain / (2 * sigma**2), n_days, first, last)


def drop_evidence(
    energy: F64,
    expected: F64,
    *,
    day_sigma: float = 0.1,
    bins_per_day: int = 24,
    floor: float = 0.05,
    min_len: int = 2,
    chunk: int = 32,
) -> tuple[F64, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each meter's deepest drop against its expected energy: log-likelihood ratio and bins.

    ``y = log((energy + c) / (expected + c))`` with ``c = floor`` x the meter's mean expected bin
    energy (a zero reads about log(0.05)); for every segment ``[lo, hi)`` of at least ``min_len``
    bins, ``z`` = (mean y outside - mean y inside) / its standard error, where the error adds
    bin noise (estimated from the meter's own increments, which a step does not inflate) and a
    day-to-day swing ``day_sigma`` per day a side spans (consumption that changes from one day
    to the next without touching the loss). Returns ``max(z, 0)^2 / 2`` and the segment.

    >>> expected = np.ones((2, 48))
    >>> energy = expected * np.where(np.arange(48) % 2, 1.1, 0.9)
    >>> energy[1, 30:] *= 0.5
    >>> llr, lo, hi = drop_evidence(energy, expected)
    >>> (llr > 10).tolist(), lo.tolist()[1], hi.tolist()[1]
    ([False, True], 30, 48)
    """
    n_m, n = energy.shape
    ok = ~(np.isnan(energy) | np.isnan(expected))
    with warnings.catch_warnings():  # a meter with no usable bin (just moved in): NaN, floored below
        warnings.simplefilter("ignore", RuntimeWarning)
        c = floor * np.nanmean(np.where(ok, expected, np.nan), axis=1, keepdims=True)
    c = np.where(np.isnan(c) | (c <= 0), 1e-3, c)
    y = np.where(ok, np.log((np.nan_to_num(energy) + c) / (np.nan_to_num(expected) + c)), 0.0)
    inc = np.diff(y, axis=1)
    sig = np.median(np.abs(inc - np.median(inc, axis=1, keepdims=True)), axis=1) / 0.6745 / np.sqrt(2)
    sig = np.maximum(sig, 1e-3)
    # Only the segments long enough on both sides, enumerated in row-major (lo, hi) order so
    # that ties resolve as over the full (n + 1) x (n + 1) grid (profiled: half the grid is
    # invalid, and this is the costliest step of ranking an area).
    a = np.arange(n + 1)
    n_in_all = (a[None, :] - a[:, None]).astype(np.float64)  # [lo, hi) at [lo, hi]
    valid = (n_in_all >= min_len) & (n - n_in_all >= min_len)
    seg_lo, seg_hi = np.nonzero(valid)
    llr, lo, hi = np.zeros(n_m), np.zeros(n_m, np.int64), np.zeros(n_m, np.int64)
    if seg_lo.size == 0:
        return llr, lo, hi
    n_in = n_in_all[seg_lo, seg_hi]
    n_out = n - n_in
    sides = 1 / np.maximum(1, np.ceil(n_in / bins_per_day)) + 1 / np.maximum(1, np.ceil(n_out / bins_per_day))
    days = day_sigma**2 * sides
    spread = 1 / n_in + 1 / n_out
    cs = np.concatenate([np.zeros((n_m, 1)), np.cumsum(y, axis=1)], axis=1)
    for k in range(0, n_m, chunk):  # bounded memory: (chunk, segments) at a time
        rows = slice(k, k + chunk)
        inside = cs[rows][:, seg_hi] - cs[rows][:, seg_lo]
        gap = (cs[rows, -1][:, None] - inside) / n_out - inside / n_in
        var = sig[rows, None] ** 2 * spread + days
        z = gap / np.sqrt(var)
        best = z.argmax(axis=1)
        llr[rows] = np.maximum(z[np.arange(len(z)), best], 0.0) ** 2 / 2
        lo[rows], hi[rows] = seg_lo[best], seg_hi[best]
    return llr, lo, hi


def nanmedian_columns(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``np.nanmedian(x, axis=0)`` without its masked-array path and warnings (profiled: 40% of
    ranking an area): NaN for a column with no value.

    >>> nanmedian_columns(np.array([[1.0, np.nan, 5.0], [3.0, np.nan, np.nan], [2.0, np.nan, 4.0]]))
    array([2. , nan, 4.5])
    >>> nanmedian_columns(np.zeros((0, 2)))
    array([nan, nan])
    """
    if x.shape[0] == 0:
        return np.full(x.shape[1], np.nan)
    s = np.sort(x, axis=0)  # NaN sorts last
    n = (~np.isnan(x)).sum(axis=0)
    cols = np.arange(x.shape[1])
    lo, hi = s[np.maximum(n - 1, 0) // 2, cols], s[n // 2, cols]  # the middle one or two
    return np.where(n > 0, (lo + hi) / 2, np.nan)
