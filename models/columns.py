"""Interval energy: the one place that turns a meter's reported points into the energy of an
interval, for the line-loss windows (:mod:`models.lineloss`) and the detectors
(:mod:`models.detection`) alike.

A meter's points in a window are kept as columns per interval end: interval end ->
(register kWh, interval kWh), either of which may be missing (docs/domain.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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
