"""Interval energy: the one place that turns a meter's reported points into the energy of an
interval, for the line-loss windows (:mod:`models.lineloss`) and the detectors
(:mod:`models.detection`) alike.

A meter's points in a window are kept as columns per interval end: interval end ->
(register kWh, interval kWh), either of which may be missing (docs/domain.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# A meter's points in one window: interval-end epoch second -> (register kWh, interval kWh).
Point = tuple[float | None, float | None]
MeterPoints = Mapping[int, Point]

_NO_POINT: Point = (None, None)


def interval_energy(points: MeterPoints, end: int, prev_end: int) -> tuple[float, bool]:
    """(energy, register went backwards) of the interval ``(prev_end, end]``, before the
    multiplier; NaN when it cannot be known.

    The reported interval energy wins; else the register delta to the previous interval end.
    A register that went backwards (meter swap, reset, rollback) gives no energy rather than a
    huge negative one.

    >>> interval_energy({900: (10.0, None), 1800: (10.5, None)}, 1800, 900)
    (0.5, False)
    >>> interval_energy({900: (10.0, None), 1800: (2.0, None)}, 1800, 900)
    (nan, True)
    >>> interval_energy({1800: (None, 0.7)}, 1800, 900), interval_energy({}, 1800, 900)
    ((0.7, False), (nan, False))
    """
    register, energy = points.get(end, _NO_POINT)
    if energy is not None:
        return float(energy), False
    prev = points.get(prev_end)
    if register is None or prev is None or prev[0] is None:
        return math.nan, False
    delta = register - prev[0]
    if delta < 0:
        return math.nan, True
    return float(delta), False


def interval_energies(
    register: npt.NDArray[np.float64], prev_register: npt.NDArray[np.float64], energy: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """:func:`interval_energy` over columns of many meters and intervals, NaN for a missing
    value: the same rule, element by element, with the same float operations (so the same bits).

    >>> nan = np.nan
    >>> kwh, back = interval_energies(np.array([10.5, 2.0, nan, nan]), np.array([10.0, 10.0, 5.0, nan]),
    ...                               np.array([nan, nan, 0.7, nan]))
    >>> kwh.tolist(), back.tolist()
    ([0.5, nan, 0.7, nan], [False, True, False, False])
    """
    delta = register - prev_register
    reported = ~np.isnan(energy)
    backwards = ~reported & (delta < 0)
    kwh = np.where(reported, energy, np.where(delta >= 0, delta, np.nan))
    return kwh, backwards


@dataclass(frozen=True, slots=True)
class WindowColumns:
    """One area-window's points as columns, what the detectors read when it closes: row ``i``
    is meter ``meters[i]``; column 0 the window start (the register its first interval starts
    from), column ``c`` the ``c``-th interval end; NaN = not reported. The columnar engine
    hands its arrays over as they are; a window kept as dicts is converted by
    :meth:`from_points`."""

    meters: list[str]
    register: npt.NDArray[np.float64]
    energy: npt.NDArray[np.float64]

    @classmethod
    def from_points(
        cls, points: Mapping[str, MeterPoints], window_start: int, *, interval_s: int, intervals: int
    ) -> WindowColumns:
        """The columns of a window kept as meter -> interval end -> (register, energy); points
        off the window's grid are not read (the detectors never read them either)."""
        meters = list(points)
        register = np.full((len(meters), intervals + 1), np.nan)
        energy = np.full((len(meters), intervals + 1), np.nan)
        for row, meter_points in enumerate(points.values()):
            for end, (reg, kwh) in meter_points.items():
                col, off = divmod(end - window_start, interval_s)
                if off or not 0 <= col <= intervals:
                    continue
                if reg is not None:
                    register[row, col] = reg
                if kwh is not None:
                    energy[row, col] = kwh
        return cls(meters, register, energy)

    def rows(self, meter_ids: list[str]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(register, energy) with one row per meter of ``meter_ids`` in that order, NaN for
        a meter with no point in the window; copies."""
        where = {m: i for i, m in enumerate(self.meters)}
        rows = np.array([where.get(m, -1) for m in meter_ids], dtype=np.int64)
        register = np.full((len(rows), self.register.shape[1]), np.nan)
        energy = np.full((len(rows), self.energy.shape[1]), np.nan)
        have = rows >= 0
        register[have] = self.register[rows[have]]
        energy[have] = self.energy[rows[have]]
        return register, energy
