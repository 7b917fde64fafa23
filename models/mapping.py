"""Find customers recorded under the wrong area: one area's loss negative, another's high, and
one meter's energy the difference.

A customer the archive puts in area B but fed from area A's transformer is billed in B's sales
and supplied through A's supply meter, so ``loss_B = technical_B - e_m`` and
``loss_A = technical_A + e_m``: B's loss mirrors A's along the meter's load curve. For every
meter ``m`` of a negative area B and every candidate area A, :class:`MappingErrorFinder` asks the
question :func:`models.suspect_evidence.loss_evidence` answers for thieves, with coefficient one on
both sides: does removing ``e_m`` from B's sales (``deficit = -e_m``) and adding it to A's
(``deficit = +e_m``) leave both losses looking technical? The meter and area with the most
evidence, if both shares explained reach ``min_share``, are reported.

It reads the bounded history a :class:`~models.suspects.SuspectRanker` keeps (fed one
area-interval at a time by the worker) and does no I/O. Cost of :meth:`MappingErrorFinder.find`:
per negative area, one vectorised pass over its meters per candidate area,
O(meters x candidates x history bins).

>>> rng = np.random.default_rng(1)
>>> ranker = SuspectRanker(interval_s=3600, history=48)
>>> a_ids, b_ids = [f"A{i}" for i in range(30)], [f"B{i}" for i in range(30)] + ["BIG"]
>>> a_mean, b_mean = rng.lognormal(0, 0.4, 30), rng.lognormal(0, 0.4, 30)
>>> for h in range(48):
...     day = 1 + 0.5 * np.sin(2 * np.pi * h / 24)
...     a, b = a_mean * day * rng.lognormal(0, 0.2, 30), b_mean * day * rng.lognormal(0, 0.2, 30)
...     big = 8.0 * (h % 24 >= 8) * (h % 24 < 18) * rng.lognormal(0, 0.1)  # a workshop, fed from A
...     ranker.observe("A", h * 3600, a_ids, a, round(1.03 * (a.sum() + big)))
...     ranker.observe("B", h * 3600, b_ids, np.append(b, big), round(1.03 * b.sum()))
>>> finder = MappingErrorFinder(ranker)
>>> [(e.meter, e.recorded_area, e.likely_area) for e in finder.find()]
[('BIG', 'B', 'A')]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from models.suspect_evidence import loss_evidence
from models.suspects import AreaSeries, SuspectRanker


@dataclass(frozen=True, slots=True)
class MappingError:
    """A meter whose energy explains a negative area's and a high area's loss together.

    ``score`` = the sum of the two log-likelihood ratios; ``share_recorded`` /
    ``share_likely`` the share of each area's loss it explains (the pair with the largest sum of
    shares is chosen); ``energy_kwh`` the meter's
    energy over the bins compared; loss rates are those of the two areas over the same bins.
    """

    meter: str
    recorded_area: str
    likely_area: str
    score: float
    share_recorded: float
    share_likely: float
    energy_kwh: float
    recorded_loss_rate: float
    likely_loss_rate: float
    bins: int


class MappingErrorFinder:
    """Mirrored loss pairs over a :class:`~models.suspects.SuspectRanker`'s history.

    Parameters
    ----------
    ranker
        Whose per-area history (meter energies, supply, loss) is read.
    lower
        Loss rate over the history below which an area counts as negative (when
        :meth:`find` is not told which areas are).
    min_share
        Share of each area's loss the meter must explain.
    min_bins
        Bins both areas must have judged in common.
    """

    def __init__(
        self, ranker: SuspectRanker, *, lower: float = -0.01, min_share: float = 0.5, min_bins: int = 24
    ) -> None:
        self.ranker, self.lower, self.min_share, self.min_bins = ranker, lower, min_share, min_bins

    def negative_areas(self) -> list[str]:
        """Areas whose loss rate over their judged history is below ``lower``."""
        out = []
        for area in self.ranker.areas:
            s = self.ranker.series(area)
            v = ~np.isnan(s.loss)
            if v.sum() >= self.min_bins and s.loss[v].sum() < self.lower * s.supply[v].sum():
                out.append(area)
        return out

    def find(
        self, negative: Iterable[str] | None = None, candidates: Iterable[str] | None = None
    ) -> list[MappingError]:
        """For each negative area (default :meth:`negative_areas`), its best mapping error
        against the candidate areas (default: every other area), best first."""
        series = {a: self.ranker.series(a) for a in self.ranker.areas}
        neg = self.negative_areas() if negative is None else [a for a in negative if a in series]
        cand = list(series) if candidates is None else [a for a in candidates if a in series]
        found = [e for b in neg if (e := self._best(series[b], b, cand, series)) is not None]
        return sorted(found, key=lambda e: -e.score)

    def _best(
        self, sb: AreaSeries, b: str, cand: list[str], series: dict[str, AreaSeries]
    ) -> MappingError | None:
        best: MappingError | None = None
        for a in cand:
            if a == b:
                continue
            sa = series[a]
            _, ib, ia = np.intersect1d(sb.bins, sa.bins, return_indices=True)
            ok = ~np.isnan(sb.loss[ib]) & ~np.isnan(sa.loss[ia])
            if ok.sum() < self.min_bins:
                continue
            ib, ia = ib[ok], ia[ok]
            # A meter missing a bin is taken at its expected energy (as the area's sales are).
            e = np.where(np.isnan(sb.energy[:, ib]), sb.expected[:, ib], sb.energy[:, ib])
            e = np.nan_to_num(e)
            llr_b, share_b = loss_evidence(sb.loss[ib], -e, sb.supply[ib])
            llr_a, share_a = loss_evidence(sa.loss[ia], e, sa.supply[ia])
            fit = (share_b >= self.min_share) & (share_a >= self.min_share)
            if not fit.any():
                continue
            # Chosen by the shares explained (scale-free: a quiet area's likelihood ratios are
            # larger for the same fit); reported with the likelihood ratios.
            both = np.where(fit, share_a + share_b, -np.inf)
            i = int(np.argmax(both))
            if best is None or both[i] > best.share_recorded + best.share_likely:
                best = MappingError(
                    meter=sb.meters[i],
                    recorded_area=b,
                    likely_area=a,
                    score=round(float(llr_a[i] + llr_b[i]), 4),
                    share_recorded=round(float(share_b[i]), 6),
                    share_likely=round(float(share_a[i]), 6),
                    energy_kwh=round(float(e[i].sum()), 4),
                    recorded_loss_rate=round(float(sb.loss[ib].sum() / sb.supply[ib].sum()), 6),
                    likely_loss_rate=round(float(sa.loss[ia].sum() / sa.supply[ia].sum()), 6),
                    bins=len(ib),
                )
        return best
