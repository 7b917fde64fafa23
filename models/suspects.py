"""Rank the customer meters of an area by how likely their drop is what raised the area's loss.

Fed one area-interval at a time, in event-time order per area (the worker calls
:meth:`SuspectRanker.observe` when an area's window closes): the window start, the archive's
customer meter ids of the area, their interval energies after the multiplier (NaN = missing),
the supply energy, and optionally a peer group per meter (customer class, a small int, read
when the area's meter list is new or changes). Each interval once: intervals of a bin already
closed are ignored, and the engine drops duplicates before this. Intervals are summed
into bins (an hour by default); the last ``history`` bins (72) are kept per meter as float16,
with the meter's mean bin energy (EW, about a week): 156 bytes a meter. ``observe`` is a few
vector operations over the area's meters; :meth:`SuspectRanker.rank` (on demand, for a lossy
area) costs O(meters x history^2), about 15 ms for 170 meters.

A meter's **expected** energy in a bin is its mean bin energy times its peers' level in that bin
(median over its group of energy / own mean), so the load shape and the weather cancel. Its
**deficit** is expected - reported; the area's **loss** is supply - sales (a missing meter
counted at its expected energy). Two pieces of evidence, both log-likelihood ratios (they, the
joint attribution and the combined score are pure functions in :mod:`models.suspect_evidence`;
this module keeps each area's history and calls them):

* ``drop_evidence`` (:func:`drop_evidence`): the meter's deepest drop against its expected
  energy, over any span of the history, against its own noise and a day-to-day swing.
* ``loss_evidence`` (:func:`loss_evidence`): how much better the area's loss is explained with
  the meter's deficit in it at coefficient one (x kWh not registered = x kWh more loss), on the
  cumulative series after removing what technical loss explains. Cumulative, because the supply
  meter's register resolution (0.01 x a CT of up to 600) is the largest noise of an area's loss
  and telescopes: the error of a sum of intervals is that of its two end reads.

``score = drop_evidence + min(loss_evidence, confirm x drop_evidence)``: loss evidence confirms
a drop (or, negative, refutes one: an honest meter whose consumption dipped does not show in the
loss); alone it is not evidence, since a big meter's small wobble in kWh can follow a small
thief's loss. The strongest causes are then taken one at a time and removed from the loss, and
the other meters' loss evidence is judged on what is left (:func:`evidence`), so a dip that runs
beside a thief's deficit does not ride on it. High = a drop that the loss shows. A theft needs
its onset inside the history: a deficit constant over the whole history looks like technical
loss.

>>> rng = np.random.default_rng(0)
>>> ranker = SuspectRanker(interval_s=3600, history=48)
>>> meters = [f"M{i}" for i in range(40)]
>>> mean = rng.lognormal(0.0, 0.5, 40)
>>> for h in range(48):
...     shape = 1 + 0.5 * np.sin(2 * np.pi * h / 24)
...     real = mean * shape * rng.lognormal(-0.02, 0.2, 40)
...     reported = real.copy()
...     if h >= 30:
...         reported[7] *= 0.4  # M7 starts stealing 60% at hour 30
...     supply = round(real.sum() * 1.03 + 0.5, 0)  # technical loss, 1 kWh register steps
...     ranker.observe("A1", h * 3600, meters, reported, supply)
>>> top = ranker.rank("A1", top=3)
>>> top[0].meter, top[0].rank, top[0].share_of_area_loss_explained > 0.5
('M7', 1, True)
>>> ranker.state_bytes_per_meter()
156
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.change_evidence import change_evidence, follow_evidence
from models.deficit_fit import deficit_evidence
from models.suspect_evidence import (
    Attribution,
    attribute,
    combine,
    evidence,
    nanmedian_columns,
)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Suspect:
    """One ranked meter of an area, with the evidence an inspector is sent with.

    ``score`` = ``drop_evidence + min(loss_evidence, confirm x drop_evidence)`` (log-likelihood
    ratios, see the module docstring). ``drop_start`` / ``drop_end`` (epoch s) bound the meter's
    deepest drop in the history; ``deficit_kwh``, ``expected_kwh``, ``relative_drop`` (deficit /
    expected) and ``zero_share`` (bins reading zero) are over that drop.
    ``share_of_area_loss_explained`` = ``1 - |r(L - D)|^2 / |r(L)|^2``; ``correlation`` is
    Pearson's between the meter's bin deficits and the area's bin losses; ``area_loss_rate`` is
    the area's over the last ``recent`` bins and ``area_loss_rate_change`` its change against the
    bins before. ``deficit_evidence`` is the shortfall fit's ratio over the horizon
    (:func:`models.deficit_fit.deficit_evidence`) and ``change_evidence`` the loss-confirmed drop
    of its low readings (:func:`models.change_evidence.change_evidence`), ``follow_evidence``
    how closely its low readings of the day fall when the area's daily loss rises
    (:func:`models.change_evidence.follow_evidence`, about a z-score): they order the ranking,
    they are not in ``score``.
    """

    area: str
    meter: str
    rank: int
    score: float
    loss_evidence: float
    drop_evidence: float
    share_of_area_loss_explained: float
    correlation: float
    deficit_kwh: float
    expected_kwh: float
    relative_drop: float
    zero_share: float
    drop_start: int
    drop_end: int
    area_loss_rate: float
    area_loss_rate_change: float
    joint_evidence: float = 0.0
    stolen_kwh: float = 0.0
    theft_days: int = 0
    theft_start: int = 0
    theft_end: int = 0
    deficit_evidence: float = 0.0
    change_evidence: float = 0.0
    follow_evidence: float = 0.0


@dataclass(frozen=True, slots=True)
class AreaSeries:
    """An area's history in time order: ``bins`` (absolute bin numbers, start // bin_s),
    ``energy`` and ``expected`` (meters x bins, kWh, NaN = missing), ``supply`` and ``loss``
    (NaN = not judged: supply missing or too many meters missing)."""

    meters: list[str]
    bins: npt.NDArray[np.int64]
    energy: F64
    expected: F64
    supply: F64
    loss: F64


# A bin's energy is kept as one byte: 0 = zero, 255 = missing, else a log code over
# [1e-4, 1e4) kWh (steps of 7.6%, so at most 3.7% off; the area's sales are kept exactly, so the
# loss is exact and only the regressors carry this rounding, far below a household's own noise).
_LOG_LO, _LOG_STEP, _MISSING = float(np.log(1e-4)), float(np.log(1e8) / 253), 255


def encode(e: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Bin energies (kWh, NaN = missing) as one-byte codes (see :func:`decode`)."""
    x = np.asarray(e, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = 1 + np.clip(np.round((np.log(x) - _LOG_LO) / _LOG_STEP), 0, 253)
    return np.where(np.isnan(x), _MISSING, np.where(x > 0, c, 0)).astype(np.uint8)


def decode(c: npt.NDArray[np.uint8]) -> F64:
    """Energies of one-byte codes: within 3.7% of what was encoded (0 and NaN exact).

    >>> decode(encode([0.0, 0.0123, 1.5, 2345.0, np.nan])).round(4).tolist()
    [0.0, 0.0122, 1.4925, 2331.2504, nan]
    """
    x = np.exp(_LOG_LO + (c.astype(np.float64) - 1) * _LOG_STEP)
    return np.where(c == _MISSING, np.nan, np.where(c == 0, 0.0, x))


class _Area:
    """Ring buffers of one area: column ``bin % history`` holds that bin."""

    def __init__(self, meters: list[str], groups: npt.NDArray[np.int8], history: int, window: int) -> None:
        n = len(meters)
        self.meters, self.group = meters, groups
        self.energy = np.full((n, history), _MISSING, dtype=np.uint8)  # the horizon, one byte a bin
        self.recent = np.full((n, window), np.nan, dtype=np.float16)  # the last bins, finer
        self.mean = np.zeros(n, dtype=np.float32)  # EW mean bin energy
        self.n = np.zeros(n, dtype=np.uint16)  # bins learned (saturates)
        self.acc = np.zeros(n, dtype=np.float32)  # current bin: energy so far
        self.cnt = np.zeros(n, dtype=np.uint8)  # current bin: valid intervals so far
        self.supply = np.full(history, np.nan, dtype=np.float32)
        self.sales = np.full(history, np.nan, dtype=np.float32)  # reported, missing meters as 0
        self.bins = np.full(history, -1, dtype=np.int64)
        self.open_bin, self.fed, self.s_acc, self.s_cnt = -1, 0, 0.0, 0
        # Ring slots (see RING_SLOT_BINS) written since they were last taken: all, when new.
        self.dirty: set[str] = set(ring_slot_names(history, window))

    def slots_with_data(self) -> set[str]:
        """The ring slots holding a closed bin: the others are empty and need no saving."""
        cols = np.flatnonzero(self.bins >= 0)
        return {f"h{c}" for c in np.unique(cols // RING_SLOT_BINS)} | {
            f"w{c}" for c in np.unique(self.bins[cols] % self.recent.shape[1] // RING_SLOT_BINS)
        }


# Columns of one ring slot: a day of hourly bins. The rings are saved slot by slot, only the
# slots written since the last save (SuspectRanker.take_ring_slots), so a save of an area with a
# month of evidence writes its last day, not the month.
RING_SLOT_BINS = 24
# Ring arrays by their ring: "h" the horizon (``history`` columns), "w" the finer recent bins.
_RINGS = {"h": ("energy", "supply", "sales", "bins"), "w": ("recent",)}


def _slot_columns(name: str) -> slice:
    """The ring columns of a slot (``h3``: the horizon's columns 72-95)."""
    k = int(name[1:])
    return slice(k * RING_SLOT_BINS, (k + 1) * RING_SLOT_BINS)


def ring_slot_names(history: int, window: int) -> list[str]:
    """The slots of an area's rings: ``h0``.. over the horizon, ``w0``.. over the recent bins.

    >>> ring_slot_names(72, 30)
    ['h0', 'h1', 'h2', 'w0', 'w1']
    """
    slots = -(-history // RING_SLOT_BINS), -(-window // RING_SLOT_BINS)
    return [f"{ring}{k}" for ring, n in zip(_RINGS, slots, strict=True) for k in range(n)]


class SuspectRanker:
    """Bounded per-area history of meter and supply energies, and the suspect ranking.

    Parameters
    ----------
    interval_s, bin_s
        Length of an observed interval and of a bin (a multiple of it).
    history
        Bins kept per meter (72 hours by default: an onset up to two days back still has a
        day before it).
    alpha
        Weight of a new bin in a meter's mean bin energy (about a week of hours).
    min_peers
        Reporting meters a group needs for its own level; smaller groups use the area's.
    max_missing
        Share of meters that may miss a bin before the area's loss of that bin is not judged.
    recent
        Bins the area's recent loss rate is taken over (a day).
    day_sigma, noise_floor
        See :func:`drop_evidence` and :func:`~models.suspect_evidence.loss_evidence`.
    confirm
        Loss evidence counts up to this multiple of the drop evidence (see the module docstring).
    ridge, refit
        See :func:`attribute`; the joint attribution is refitted every ``refit`` bins, on bin
        numbers that are multiples of it (:meth:`attribution`).
    deficit_weight
        Weight of the shortfall evidence (:func:`models.deficit_fit.deficit_evidence`) in the
        ranking's order (not in the score); 0 ranks by the score alone.
    change_weight
        Weight of the loss-confirmed drop of a meter's low readings
        (:func:`models.change_evidence.change_evidence`) in the ranking's order (not in the
        score); 0 leaves it out.
    follow_weight
        Weight of how closely a meter's low readings of the day follow the area's daily loss
        (:func:`models.change_evidence.follow_evidence`) in the ranking's order (not in the
        score), counted above ``follow_floor`` (about a z-score: an honest household's reaches 1
        by chance about one time in six); 0 leaves it out.
    follow_gate
        Share of the shortfall and change evidence a meter keeps in the order when its low readings
        do not follow the area's loss at all (follow evidence 0); the share rises linearly to 1 at
        a follow evidence of 2. 1 turns the gate off.
    """

    def __init__(
        self,
        *,
        interval_s: int = 900,
        bin_s: int = 3600,
        history: int = 720,
        window: int = 72,
        alpha: float = 1 / 168,
        min_peers: int = 5,
        max_missing: float = 0.1,
        recent: int = 24,
        day_sigma: float = 0.1,
        noise_floor: float = 0.001,
        confirm: float = 3.0,
        ridge: float = 1.0,
        refit: int = 6,
        deficit_weight: float = 0.1,
        change_weight: float = 15.0,
        follow_weight: float = 45.0,
        follow_floor: float = 1.0,
        follow_gate: float = 0.5,
    ) -> None:
        if bin_s % interval_s:
            raise ValueError("bin_s must be a multiple of interval_s")
        self.interval_s, self.bin_s, self.history = interval_s, bin_s, history
        self.per_bin = bin_s // interval_s
        self.alpha, self.min_peers, self.max_missing = alpha, min_peers, max_missing
        self.recent, self.day_sigma, self.noise_floor = recent, day_sigma, noise_floor
        self.confirm, self.window, self.ridge, self.refit = confirm, min(window, history), ridge, refit
        self.areas: dict[str, _Area] = {}
        self.deficit_weight, self.change_weight = deficit_weight, change_weight
        self.follow_weight, self.follow_floor, self.follow_gate = follow_weight, follow_floor, follow_gate
        # area -> (its state object, the open bin then, judged bins, attribution, deficit,
        # change and follow evidence): the last fit
        self._fits: dict[str, tuple[_Area, int, npt.NDArray[np.int64], Attribution, F64, F64, F64]] = {}

    def state_bytes_per_meter(self) -> int:
        """Bytes kept per meter: the one-byte ring plus mean, count and the open bin (the area's
        supply, sales and bin numbers, 16 bytes a bin, come on top per area)."""
        return self.history + 2 * self.window + 4 + 2 + 4 + 1 + 1  # energy, recent, mean, n, acc, cnt, group

    def state_bytes_per_area(self) -> int:
        """Bytes kept per area besides its meters: supply and sales (float32) and bin numbers."""
        return 16 * self.history

    # ---- feeding ------------------------------------------------------------------------------

    def observe(
        self,
        area: str,
        start: int,
        meters: Sequence[str],
        energy_kwh: npt.ArrayLike,
        supply_kwh: float,
        group: npt.ArrayLike | None = None,
    ) -> None:
        """Add one interval of one area (window ``start``, epoch seconds). A bin is closed when
        all its intervals arrived or a later bin starts; an interval of a closed bin is ignored."""
        st = self.areas.get(area)
        if st is None or st.meters != list(meters):
            st = self._remap(area, list(meters), group)
        b = start // self.bin_s
        if b < st.open_bin:
            return
        if b > st.open_bin:
            if st.open_bin >= 0:
                self._close(st)
            st.open_bin = b
        e = np.asarray(energy_kwh, dtype=np.float64)
        ok = ~np.isnan(e)
        st.acc += np.where(ok, e, 0.0).astype(np.float32)
        st.cnt += ok.astype(np.uint8)
        if not np.isnan(supply_kwh):
            st.s_acc += float(supply_kwh)
            st.s_cnt += 1
        st.fed += 1
        if st.fed >= self.per_bin:
            self._close(st)

    def _remap(self, area: str, meters: list[str], group: npt.ArrayLike | None) -> _Area:
        """A new area, or its archive changed: keep the state of meters it still holds."""
        g = np.zeros(len(meters), np.int8) if group is None else np.asarray(group).astype(np.int8)
        new = _Area(meters, g, self.history, self.window)
        old = self.areas.get(area)
        if old is not None:
            pos = {m: i for i, m in enumerate(old.meters)}
            src = np.array([pos.get(m, -1) for m in meters], dtype=np.int64)
            has = src >= 0
            for name in ("energy", "recent", "mean", "n", "acc", "cnt"):
                getattr(new, name)[has] = getattr(old, name)[src[has]]
            new.supply, new.sales, new.bins = old.supply, old.sales, old.bins
            new.open_bin, new.fed, new.s_acc, new.s_cnt = old.open_bin, old.fed, old.s_acc, old.s_cnt
        self.areas[area] = new
        return new

    def _close(self, st: _Area) -> None:
        col = st.open_bin % self.history
        full = self.per_bin
        e = np.where(st.cnt >= full, st.acc.astype(np.float64), np.nan)
        mean = st.mean.astype(np.float64)
        learn = ~np.isnan(e)
        a = np.where(learn, np.maximum(self.alpha, 1.0 / (st.n + 1.0)), 0.0)
        st.mean = (mean + a * (np.nan_to_num(e) - mean)).astype(np.float32)
        st.n = np.minimum(st.n + learn, np.iinfo(np.uint16).max).astype(np.uint16)
        st.energy[:, col] = encode(e)
        st.recent[:, st.open_bin % self.window] = e
        st.sales[col] = np.nansum(e) if len(e) else 0.0
        st.supply[col] = st.s_acc if st.s_cnt >= full else np.nan
        st.bins[col] = st.open_bin
        st.dirty.update((f"h{col // RING_SLOT_BINS}", f"w{st.open_bin % self.window // RING_SLOT_BINS}"))
        st.acc[:] = 0
        st.cnt[:] = 0
        st.open_bin, st.fed, st.s_acc, st.s_cnt = st.open_bin + 1, 0, 0.0, 0

    # ---- reading -------------------------------------------------------------------------------

    def series(self, area: str, bins: int | None = None) -> AreaSeries:
        """The area's closed bins in time order (see :class:`AreaSeries`): the last ``bins`` of
        them (None: the last ``window``, the span the step evidence and the mapping finder
        judge; 0: the whole horizon)."""
        st = self.areas[area]
        order = np.argsort(st.bins)
        order = order[st.bins[order] >= 0]
        keep = self.window if bins is None else bins
        if keep:
            order = order[-keep:]
        energy = decode(st.energy[:, order])
        fine = order[-self.window :]  # the last bins from the finer ring
        energy[:, len(order) - len(fine) :] = st.recent[:, st.bins[fine] % self.window]
        mean = st.mean.astype(np.float64)
        # Peers' level in each bin relative to today's means (so expected and level agree even
        # while a young meter's mean moves): median of energy / own mean over the group.
        ratio = energy / np.where(mean > 0, mean, np.nan)[:, None]
        level = np.full(energy.shape, np.nan)
        overall = nanmedian_columns(ratio)
        for g in np.unique(st.group):
            peers = st.group == g
            enough = (~np.isnan(ratio[peers])).sum(axis=0) >= self.min_peers
            level[peers] = np.where(enough, nanmedian_columns(ratio[peers]), overall)
        expected = mean[:, None] * level
        missing = np.isnan(energy)
        # Sales as reported (kept exactly, not from the one-byte codes) plus a missing meter at
        # its expected energy.
        sales = st.sales[order].astype(np.float64) + np.where(missing, expected, 0.0).sum(axis=0)
        judged = missing.mean(axis=0) <= self.max_missing if len(st.meters) else np.zeros(len(order), bool)
        supply = st.supply[order].astype(np.float64)
        loss = np.where(judged & ~np.isnan(sales), supply - sales, np.nan)
        return AreaSeries(list(st.meters), st.bins[order], energy, expected, supply, loss)

    def attribution(self, area: str) -> tuple[npt.NDArray[np.int64], Attribution, F64, F64, F64]:
        """The judged bins of the area's horizon, the joint attribution of its loss over them
        (day by day, :func:`attribute`), each meter's shortfall evidence over the whole of them
        (:func:`models.deficit_fit.deficit_evidence`) and its loss-confirmed drop of the low
        readings (:func:`models.change_evidence.change_evidence`) and how closely those follow the
        area's daily loss (:func:`models.change_evidence.follow_evidence`).

        Refitted every ``refit`` bins, on a schedule fixed by the bin numbers, not by when it was
        last asked: the fit of bin ``f`` (a multiple of ``refit``) uses the bins before ``f``
        that every open bin from ``f`` to ``f + refit - 1`` still holds in its ring. So a worker
        restored from a snapshot (whose cache is empty) ranks exactly as one that never stopped.
        Only the result is cached."""
        st = self.areas[area]
        fit_bin = st.open_bin - st.open_bin % self.refit
        cached = self._fits.get(area)
        if cached is not None and cached[0] is st and cached[1] == fit_bin:
            return cached[2], cached[3], cached[4], cached[5], cached[6]
        s = self.series(area, bins=0)
        v = ~np.isnan(s.loss) & (s.bins < fit_bin) & (s.bins >= fit_bin - self.history + self.refit)
        at = attribute(
            s.loss[v],
            s.supply[v],
            s.energy[:, v],
            np.nan_to_num(s.expected[:, v]),
            s.bins[v] // max(1, 86400 // self.bin_s),
            ridge=self.ridge,
            noise_floor=self.noise_floor,
        )
        day = s.bins[v] // max(1, 86400 // self.bin_s)
        short = deficit_evidence(s.loss[v], s.supply[v], s.energy[:, v], s.expected[:, v], day)
        change = change_evidence(s.loss[v], s.supply[v], s.energy[:, v], s.expected[:, v], day)
        follow = follow_evidence(s.loss[v], s.supply[v], s.energy[:, v], s.expected[:, v], day)
        self._fits[area] = (st, fit_bin, s.bins[v], at, short, change, follow)
        return s.bins[v], at, short, change, follow

    def order_priority(self, score: F64, short: F64, change: F64, follow: F64) -> F64:
        """The ranking's order (highest first) from each meter's ``score``, shortfall, change and
        follow evidence (:meth:`attribution`); the score alone is what the worker publishes on.

        * ``score``: log-likelihood ratios of a drop the loss confirms;
        * ``+ deficit_weight x short``: the shortfall fit over the horizon orders the many meters
          that score little in a large area with many thieves (docs/suspects.md, "Shortfall over
          the horizon"). Its ratios run to thousands (the cumulative residual is not white
          noise), so it orders, it does not publish;
        * ``+ change_weight x change``: the loss-confirmed drop of the meter's low readings (a t
          statistic, about 2-80; "Low readings that dropped");
        * both times a gate, ``follow_gate`` for a meter whose low readings do not follow the
          area's daily loss at all (follow evidence 0) up to 1 at a follow evidence of 2: in an
          area whose loss rises all month both pass an honest drop (a new tenant, a household away
          the spread misses) that the day-by-day loss does not follow;
        * ``+ follow_weight x max(follow - follow_floor, 0)``: how far the meter's low readings of
          the day fall when the area's daily loss rises (about a z-score, 0-6), above chance: a
          thief on random days has no lasting drop, but its low days are the area's lossy days
          ("Low readings that follow the loss").

        >>> r = SuspectRanker()
        >>> score, short, change = np.zeros(2), np.zeros(2), np.array([6.0, 3.0])
        >>> r.order_priority(score, short, change, np.array([0.0, 2.0])).round(1).tolist()  # tenant, thief
        [45.0, 90.0]
        """
        gate = self.follow_gate + (1.0 - self.follow_gate) * np.minimum(follow / 2.0, 1.0)
        follows = np.maximum(follow - self.follow_floor, 0.0)
        return np.asarray(
            score
            + gate * (self.deficit_weight * short + self.change_weight * change)
            + self.follow_weight * follows,
            dtype=np.float64,
        )

    def rank(self, area: str, *, top: int | None = 10, min_bins: int = 12) -> list[Suspect]:
        """The area's meters, most likely cause of its loss first (``top`` of them; None = all).
        Empty until ``min_bins`` bins were judged in the last ``window``."""
        judged_bins, at, short, low_drop, follow = self.attribution(area)
        s = self.series(area)
        v = ~np.isnan(s.loss)
        if v.sum() < min_bins:
            return []
        loss, supply, bins = s.loss[v], s.supply[v], s.bins[v]
        energy, expected = s.energy[:, v], s.expected[:, v]
        ev = evidence(
            loss,
            supply,
            energy,
            expected,
            confirm=self.confirm,
            day_sigma=self.day_sigma,
            bins_per_day=86400 // self.bin_s,
            noise_floor=self.noise_floor,
        )
        score, llr_loss, share, llr_drop, lo, hi = ev.score, ev.loss, ev.share, ev.drop, ev.lo, ev.hi
        score = combine(score, at.llr, llr_loss, confirm=self.confirm)
        # A missing bin, or one without a peer level, gives no evidence either way.
        deficit = np.nan_to_num(np.where(np.isnan(energy), 0.0, expected - energy))
        dl, dd = loss - loss.mean(), deficit - deficit.mean(axis=1, keepdims=True)
        norm = np.sqrt((dd * dd).sum(axis=1) * (dl @ dl))
        corr = np.divide(dd @ dl, norm, out=np.zeros(len(dd)), where=norm > 0)
        inside = (np.arange(len(loss))[None, :] >= lo[:, None]) & (
            np.arange(len(loss))[None, :] < hi[:, None]
        )
        exp_d = np.where(inside, np.nan_to_num(expected), 0.0).sum(axis=1)
        def_d = np.where(inside, deficit, 0.0).sum(axis=1)
        zero = np.where(inside, np.nan_to_num(energy, nan=1.0) <= 0, False).sum(axis=1) / np.maximum(
            hi - lo, 1
        )
        r = min(self.recent, len(loss) - 1)
        rate = float(loss[-r:].sum() / supply[-r:].sum())
        change = rate - float(loss[:-r].sum() / supply[:-r].sum())

        def when(i: int) -> int:
            return int(judged_bins[i]) * self.bin_s if i >= 0 else 0

        priority = self.order_priority(score, short, low_drop, follow)
        order = np.argsort(-priority, kind="stable")[: None if top is None else top]
        return [
            Suspect(
                area=area,
                meter=s.meters[i],
                rank=k + 1,
                score=round(float(score[i]), 4),
                loss_evidence=round(float(llr_loss[i]), 4),
                drop_evidence=round(float(llr_drop[i]), 4),
                share_of_area_loss_explained=round(float(share[i]), 6),
                correlation=round(float(corr[i]), 6),
                deficit_kwh=round(float(def_d[i]), 4),
                expected_kwh=round(float(exp_d[i]), 4),
                relative_drop=round(float(def_d[i] / exp_d[i]), 6) if exp_d[i] > 0 else 0.0,
                zero_share=round(float(zero[i]), 6),
                drop_start=int(bins[lo[i]]) * self.bin_s,
                drop_end=int(bins[hi[i] - 1] + 1) * self.bin_s,
                area_loss_rate=round(rate, 6),
                area_loss_rate_change=round(change, 6),
                joint_evidence=round(float(at.llr[i]), 4),
                stolen_kwh=round(float(at.stolen[i]), 4),
                theft_days=int(at.days[i]),
                theft_start=when(int(at.first[i])),
                theft_end=when(int(at.last[i])) + (self.bin_s if at.last[i] >= 0 else 0),
                deficit_evidence=round(float(short[i]), 4),
                change_evidence=round(float(low_drop[i]), 4),
                follow_evidence=round(float(follow[i]), 4),
            )
            for k, i in enumerate(order)
        ]

    # ---- state ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, npt.NDArray[np.generic]]]:
        """Copies of every area's arrays (``np.savez``-able per area)."""
        return {area: self.snapshot_area(area) for area in self.areas}

    def snapshot_area(self, area: str, *, rings: bool = True) -> dict[str, npt.NDArray[np.generic]]:
        """Copies of one area's arrays (KeyError if the area was never observed); without the
        ring arrays when ``rings`` is False (they are saved by :meth:`take_ring_slots`)."""
        st = self.areas[area]
        skip = () if rings else tuple(k for names in _RINGS.values() for k in names)
        d = {
            k: np.array(v, copy=True)
            for k, v in vars(st).items()
            if isinstance(v, np.ndarray) and k not in skip
        }
        d["meters"] = np.array(st.meters, dtype=str)
        d["scalars"] = np.array([st.open_bin, st.fed, st.s_acc, st.s_cnt], dtype=np.float64)
        if not rings:
            # the slots the rings are read back from; any other saved slot is stale or empty
            d["ring_slots"] = np.array(sorted(st.slots_with_data()), dtype=str)
        return d

    def ring_slot_names(self) -> list[str]:
        return ring_slot_names(self.history, self.window)

    def take_ring_slots(self, area: str) -> dict[str, dict[str, npt.NDArray[np.generic]]]:
        """The ring slots of an area written since they were last taken, each as copies of its
        columns of the ring arrays; they count as saved after."""
        st = self.areas[area]
        names = sorted(st.slots_with_data() & st.dirty)
        st.dirty.clear()
        return {
            name: {k: np.array(getattr(st, k)[..., _slot_columns(name)], copy=True) for k in _RINGS[name[0]]}
            for name in names
        }

    def restore(self, snapshot: dict[str, dict[str, npt.NDArray[np.generic]]]) -> None:
        """Load state saved by :meth:`snapshot` (parameters come from the constructor)."""
        self.areas = {}
        for area, d in snapshot.items():
            self.restore_area(area, d)

    def restore_area(
        self,
        area: str,
        d: dict[str, npt.NDArray[np.generic]],
        slots: dict[str, dict[str, npt.NDArray[np.generic]]] | None = None,
    ) -> None:
        """Load one area saved by :meth:`snapshot_area`, with the ring slots saved by
        :meth:`take_ring_slots` when it was taken without its rings (a slot not given stays
        empty: its bins count as missing)."""
        st = _Area([str(m) for m in d["meters"]], np.asarray(d["group"], np.int8), self.history, self.window)
        self.areas[area] = st  # until loaded: another layout or horizon starts the area afresh
        d = dict(d)
        if "energy" not in d and "mean" in d:
            listed = {str(n) for n in d.pop("ring_slots", ())}
            for name, got in (slots or {}).items():
                if name not in listed:
                    continue  # written by an earlier state of the area, not this one's
                cols = _slot_columns(name)
                for key in _RINGS.get(name[0], ()):
                    ring = getattr(st, key)
                    if key not in got or got[key].shape != ring[..., cols].shape:
                        self.areas[area] = _Area(list(st.meters), st.group, self.history, self.window)
                        return
                    ring[..., cols] = got[key]
            d.update({k: getattr(st, k) for names in _RINGS.values() for k in names})
            st.dirty.clear()  # the slots as saved; a full snapshot (an earlier version) has none
        if d["energy"].dtype != np.uint8 or d["energy"].shape[1:] != (self.history,) or "recent" not in d:
            return
        for k, v in d.items():
            if k not in ("meters", "scalars"):
                setattr(st, k, np.array(v, dtype=getattr(st, k).dtype, copy=True))
        ob, fed, s_acc, s_cnt = (float(x) for x in d["scalars"])
        st.open_bin, st.fed, st.s_acc, st.s_cnt = int(ob), int(fed), s_acc, int(s_cnt)
