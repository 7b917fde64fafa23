"""Whether an area's loss shows a meter's missing energy: the last two days of the area's interval
loss and supply, to gate zero runs by the energy balance (docs/detection.md, "Drops and the
energy balance").

A meter that stops registering what flows through it (a stopped meter, a bypass) raises the
area's loss by what it would have used, at once; a home that really uses nothing (away, vacant)
lowers the supply as much as its sales and leaves the loss where it was. :meth:`LossHistory.shows`
asks which of the two a zero run looks like: the loss summed over the run against what the
area's loss usually is over as many intervals at the same supply (a line ``loss = c0 + c1 x
supply`` fitted to the run-long sums before it, so the daily load shape and the technical loss
cancel), against the spread of those sums (the supply register's step and the area's own noise).
Sums over the run, because a register's rounding telescopes: the error of a sum is that of its
two end reads.

Per area two float32 rings of ``intervals`` (192: two days of 15-minute intervals), 1,536 bytes,
and the count of intervals fed.

>>> h = LossHistory()
>>> for t in range(120):
...     supply = 30.0 + 10.0 * (t % 96 > 48)      # a day and a night level
...     h.observe("A1", 0.03 * supply + 0.2, supply)
>>> h.shows("A1", run=4, expected_kwh=4.0)        # nothing changed: the loss does not show it
False
>>> for t in range(4):
...     h.observe("A1", 0.03 * 40.0 + 0.2 + 1.0, 40.0)  # 1 kWh an interval no longer billed
>>> h.shows("A1", run=4, expected_kwh=4.0), h.state_bytes_per_area()
(True, 1536)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclass(slots=True)
class _Ring:
    loss: F32
    supply: F32
    fed: int = 0


class LossHistory:
    """Per area, the last ``intervals`` interval losses and supplies (kWh; NaN = not judged).

    ``shows(area, run, expected_kwh)``: the loss over the last ``run`` intervals stands above its
    usual value at that supply by at least ``tolerance`` x ``expected_kwh`` (what the meter would
    have used) and by ``z`` times the spread of such sums. False when fewer than ``min_sums``
    earlier run-long sums were judged.
    """

    def __init__(
        self, intervals: int = 192, *, tolerance: float = 0.5, z: float = 3.0, min_sums: int = 16
    ) -> None:
        self.intervals, self.tolerance, self.z, self.min_sums = intervals, tolerance, z, min_sums
        self.areas: dict[str, _Ring] = {}

    def state_bytes_per_area(self) -> int:
        """Bytes of the two rings of an area (the count fed adds a Python int)."""
        return 2 * self.intervals * np.dtype(np.float32).itemsize

    def observe(self, area: str, loss_kwh: float, supply_kwh: float) -> None:
        """One interval of the area, in time order (NaN loss = not judged)."""
        ring = self.areas.get(area)
        if ring is None:
            ring = self.areas[area] = _Ring(
                np.full(self.intervals, np.nan, np.float32), np.full(self.intervals, np.nan, np.float32)
            )
        i = ring.fed % self.intervals
        ring.loss[i], ring.supply[i] = loss_kwh, supply_kwh
        ring.fed += 1

    def series(self, area: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(loss, supply) of the area in time order, oldest first."""
        ring = self.areas.get(area)
        if ring is None:
            return np.empty(0), np.empty(0)
        n = min(ring.fed, self.intervals)
        order = (np.arange(ring.fed - n, ring.fed)) % self.intervals
        return ring.loss[order].astype(np.float64), ring.supply[order].astype(np.float64)

    def shows(self, area: str, run: int, expected_kwh: float) -> bool:
        """Whether the area's loss over the last ``run`` intervals rose by about ``expected_kwh``."""
        loss, supply = self.series(area)
        k = int(run)
        if k < 1 or not expected_kwh > 0 or len(loss) < k + self.min_sums:
            return False
        # Run-long sums; NaN when any interval inside was not judged.
        lk = np.convolve(loss, np.ones(k), mode="valid")
        sk = np.convolve(supply, np.ones(k), mode="valid")
        now_l, now_s = lk[-1], sk[-1]
        past_l, past_s = lk[: len(lk) - k], sk[: len(sk) - k]  # sums that end before the run
        ok = ~(np.isnan(past_l) | np.isnan(past_s))
        if np.isnan(now_l) or np.isnan(now_s) or ok.sum() < self.min_sums:
            return False
        x = np.column_stack([np.ones(int(ok.sum())), past_s[ok]])
        coef, *_ = np.linalg.lstsq(x, past_l[ok], rcond=None)
        resid = past_l[ok] - x @ coef
        spread = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
        rise = float(now_l - (coef[0] + coef[1] * now_s))
        return rise >= self.tolerance * expected_kwh and rise >= self.z * spread

    def snapshot_area(self, area: str) -> dict[str, npt.NDArray[np.generic]]:
        """Copies of one area's rings (KeyError if the area was never observed)."""
        ring = self.areas[area]
        return {"loss": ring.loss.copy(), "supply": ring.supply.copy(), "fed": np.array([ring.fed], np.int64)}

    def restore_area(self, area: str, d: dict[str, npt.NDArray[np.generic]]) -> None:
        """Load one area saved by :meth:`snapshot_area`; another length starts it afresh."""
        if d["loss"].shape != (self.intervals,) or d["supply"].shape != (self.intervals,):
            self.areas.pop(area, None)
            return
        self.areas[area] = _Ring(
            np.asarray(d["loss"], np.float32).copy(),
            np.asarray(d["supply"], np.float32).copy(),
            int(d["fed"][0]),
        )
