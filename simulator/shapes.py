"""Daily and weekly load shapes of the customer classes, as multiples of a meter's mean power.

Each shape averages 1 over a week, so a meter's ``mean_kw`` is its mean power and the energy
of an interval is ``mean_kw x shape x hours``. Shapes are smooth functions of the local hour
and weekday; the interval's midpoint decides both.

>>> t = np.array([12 * 3600, 3 * 3600]) + 4 * 86400   # 1970-01-05 is a Monday
>>> s = class_shapes(t, interval_s=900)
>>> s.shape, bool(s[COMMERCIAL, 0] > s[COMMERCIAL, 1])   # shops open at noon, closed at 3 am
((3, 2), True)
"""

from __future__ import annotations

import numpy as np

CLASSES = ("residential", "commercial", "industrial")
RESIDENTIAL, COMMERCIAL, INDUSTRIAL = 0, 1, 2


def _bump(h: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.asarray(np.exp(-((h - centre) ** 2) / width))


def _open(h: np.ndarray, start: float, end: float, steep: float) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-(h - start) * steep)) / (1.0 + np.exp(-(end - h) * steep)))


def _raw(hour: np.ndarray, weekday: np.ndarray) -> np.ndarray:
    sat, sun = weekday == 5, weekday == 6
    weekend = sat | sun
    # Residential: night trough, morning bump (later at weekends), evening peak.
    res = np.where(
        weekend,
        0.40 + 0.45 * _bump(hour, 10.0, 8.0) + 0.70 * _bump(hour, 19.5, 6.0),
        0.35 + 0.30 * _bump(hour, 7.5, 3.0) + 0.75 * _bump(hour, 19.5, 5.0),
    )
    # Commercial: open 08-21, less on Saturday, little on Sunday.
    day = _open(hour, 8.0, 21.0, 2.0)
    com = 0.15 + 0.85 * day * np.where(sat, 0.8, np.where(sun, 0.5, 1.0))
    # Industrial: two shifts 06-22 on weekdays, a half Saturday, a quiet Sunday.
    shifts = _open(hour, 6.0, 22.0, 3.0)
    ind = 0.35 + 0.65 * shifts * np.where(sat, 0.6, np.where(sun, 0.15, 1.0))
    return np.stack([res, com, ind])


def _week_means() -> np.ndarray:
    t = np.arange(7 * 96) * 900 + 450  # quarter-hour midpoints of a Monday-to-Sunday week
    hour = (t % 86400) / 3600.0
    weekday = t // 86400
    return np.asarray(_raw(hour, weekday).mean(axis=1))


_MEANS = _week_means()


def class_shapes(ends: np.ndarray, *, interval_s: int, utc_offset_h: float = 0.0) -> np.ndarray:
    """Shape of each class (rows, in CLASSES order) for intervals ending at epoch seconds
    ``ends``; local time is UTC + ``utc_offset_h``."""
    mid = np.asarray(ends, dtype=np.int64) - interval_s // 2 + int(utc_offset_h * 3600)
    hour = (mid % 86400) / 3600.0
    weekday = (mid // 86400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return np.asarray(_raw(hour, weekday) / _MEANS[:, None])
