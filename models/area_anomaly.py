"""Per-area detectors on the line-loss series: a jump while still inside the bounds, persistent
high or negative loss, and collection outages (which are data problems, never theft).

Areas number in the tens of thousands, so one small object per area (river's ``PageHinkley``
and ``EWMean``) is affordable here, unlike per meter.

What it scores (event ``score``; higher = more anomalous):

* ``loss_jump``: river ``PageHinkley`` (mode ``up``) on the interval loss rate, opened only when
  the smoothed loss rate is above its slow baseline by more than ``ph_delta`` (so the score, the
  jump of the smoothed rate over the baseline, is always positive). Clears when the smoothed loss
  rate is back within ``ph_delta`` of the baseline it jumped from.
* ``high_loss`` / ``negative_loss``: the smoothed (about daily) loss rate beyond the area's upper
  or lower bound; score = distance beyond the bound. Clears with a hysteresis of ``margin``.
* ``collection_outage``: completeness below ``min_completeness`` for ``outage_run``
  intervals in a row (one incomplete interval is usually a batch arriving after its window
  closed); incomplete intervals are never learned (an outage must not look like a loss).
  Score = 1 - completeness.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from river import drift, stats

TYPES = ("loss_jump", "high_loss", "negative_loss", "collection_outage")


@dataclass(frozen=True, slots=True)
class AreaEvent:
    """A condition opening (``firing``) or clearing on one area."""

    area: str
    type: str
    score: float
    firing: bool
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass
class _AreaState:
    fast: Any  # river EWMean: the smoothed loss rate judged against the bounds
    slow: Any  # river EWMean: baseline the jump is measured from
    ph: Any  # river PageHinkley
    n: int = 0
    short: int = 0  # consecutive intervals below the completeness bar
    open: dict[str, float] = field(default_factory=dict)  # type -> reference value when opened
    pending: int = 0  # intervals left for the smoothed rate to confirm a drift PageHinkley saw


class AreaAnomalyDetector:
    """Loss-rate and completeness detectors, one small state per area.

    Parameters
    ----------
    fast, slow
        Fading factors (river ``EWMean``) of the smoothed and the baseline loss rate.
    warmup
        Judged intervals before anything but outages can fire.
    ph_threshold, ph_delta
        river ``PageHinkley`` threshold and magnitude tolerance (loss-rate units).
    margin
        Hysteresis: high / negative loss clear ``margin`` inside the bound.
    min_completeness, outage_run
        A collection outage is ``outage_run`` intervals in a row below ``min_completeness``.
    confirm
        Intervals after a PageHinkley drift within which the smoothed rate must rise
        ``ph_delta`` above its baseline for ``loss_jump`` to open.

    Examples
    --------
    >>> det = AreaAnomalyDetector(warmup=4)
    >>> for _ in range(200):
    ...     _ = det.step("A1", loss_rate=0.04, completeness=1.0, lower=-0.01, upper=0.07)
    >>> events = []
    >>> for _ in range(200):
    ...     events += det.step("A1", loss_rate=0.12, completeness=1.0, lower=-0.01, upper=0.07)
    >>> [(e.type, e.firing) for e in events]
    [('loss_jump', True), ('high_loss', True)]
    >>> det.step("A1", loss_rate=None, completeness=0.3, lower=-0.01, upper=0.07)
    []
    >>> det.step("A1", loss_rate=None, completeness=0.3, lower=-0.01, upper=0.07)[0].type
    'collection_outage'
    """

    def __init__(
        self,
        *,
        fast: float = 0.02,
        slow: float = 0.003,
        warmup: int = 96,
        ph_threshold: float = 1.0,
        ph_delta: float = 0.01,
        margin: float = 0.005,
        min_completeness: float = 0.9,
        outage_run: int = 2,
        confirm: int = 96,
    ) -> None:
        self.fast, self.slow, self.warmup = fast, slow, warmup
        self.ph_threshold, self.ph_delta = ph_threshold, ph_delta
        self.margin, self.min_completeness = margin, min_completeness
        self.outage_run, self.confirm = outage_run, confirm
        self.areas: dict[str, _AreaState] = {}

    def _new(self) -> _AreaState:
        ph = drift.PageHinkley(
            min_instances=self.warmup, delta=self.ph_delta, threshold=self.ph_threshold, mode="up"
        )
        return _AreaState(stats.EWMean(self.fast), stats.EWMean(self.slow), ph)

    def step(
        self, area: str, *, loss_rate: float | None, completeness: float, lower: float, upper: float
    ) -> list[AreaEvent]:
        """Learn one interval of one area; ``loss_rate`` is None when it could not be judged."""
        s = self.areas.get(area)
        if s is None:
            s = self.areas[area] = self._new()
        out: list[AreaEvent] = []

        def flip(kind: str, now: bool, score: float, ref: float, **ev: float) -> None:
            if now == (kind in s.open):
                return
            if now:
                s.open[kind] = ref
            else:
                del s.open[kind]
            out.append(AreaEvent(area, kind, round(score, 6), now, {k: round(v, 6) for k, v in ev.items()}))

        incomplete = completeness < self.min_completeness
        s.short = s.short + 1 if incomplete else 0
        # One incomplete interval is a late batch as often as not (it is corrected within the
        # lateness); an outage is a run of them.
        outage = s.short >= self.outage_run or (incomplete and "collection_outage" in s.open)
        flip("collection_outage", outage, 1 - completeness, 0.0, completeness=completeness)
        if incomplete or loss_rate is None:
            return out  # never learn or judge an incomplete interval
        s.n += 1
        s.fast.update(loss_rate)
        if "loss_jump" not in s.open:
            s.slow.update(loss_rate)
        s.ph.update(loss_rate)
        smooth, base = float(s.fast.get()), float(s.slow.get())
        if s.n < self.warmup:
            return out
        # PageHinkley reacts to the raw rates; a drift it saw opens a jump only once the smoothed
        # rate stands above its baseline by more than the clearing margin (within ``confirm``
        # intervals), so a jump neither opens below the baseline (a negative score) nor resolves
        # on the next interval (flapping).
        if s.ph.drift_detected:
            s.pending = self.confirm
        pending = getattr(s, "pending", 0)  # a state pickled before the field: none pending
        s.pending = max(pending - 1, 0)
        if pending and "loss_jump" not in s.open and smooth > base + self.ph_delta:
            s.pending = 0
            flip("loss_jump", True, smooth - base, base, loss_rate=smooth, baseline=base)
        elif "loss_jump" in s.open:
            ref = s.open["loss_jump"]
            jump_ref = max(smooth - ref, 0.0)
            if smooth <= ref + self.ph_delta:
                flip("loss_jump", False, jump_ref, ref, loss_rate=smooth, baseline=ref)
        high = smooth > (upper - self.margin if "high_loss" in s.open else upper)
        flip("high_loss", high, smooth - upper, upper, loss_rate=smooth, upper=upper)
        neg = smooth < (lower + self.margin if "negative_loss" in s.open else lower)
        flip("negative_loss", neg, lower - smooth, lower, loss_rate=smooth, lower=lower)
        return out

    def snapshot(self) -> dict[str, _AreaState]:
        """A copy of every area's state (picklable river objects)."""
        return copy.deepcopy(self.areas)

    def restore(self, snapshot: dict[str, _AreaState]) -> None:
        self.areas = copy.deepcopy(snapshot)
