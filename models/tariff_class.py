"""Tariff execution: a meter billed in one class whose load shape and level are another's (the
"price" part of the volume-price-fee watch), e.g. a shop billed at the residential tariff.

Scores each meter of the checked classes (residential by default) on two learned figures: the
*weekday-daytime ratio*, its mean energy in weekday business hours (Monday-Friday 09-18 local)
over its mean energy at all other times, and its *daytime level*, the mean power in those hours.
A home uses most in the evening and at weekends (ratio about 0.5-1.5); a shop or office uses most
on weekday days and little at night (ratio 2.5 and more) at a level few homes reach. The event
opens when both pass their bars; score = the smaller of the two margins (ratio / ratio bar,
level / level bar), so the surest cases rank first. Information: an inspector checks the
contract, nothing is paged.

State per meter: the two EW means (float32), their counts (uint16), the open flag (uint8):
13 bytes, vectorised over dense meter indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.meter_state import bytes_per_meter, grow_columns, new_columns

_STATE: dict[str, type[np.generic]] = {
    "tc_day": np.float32,  # EW mean interval energy, weekday business hours
    "tc_rest": np.float32,  # EW mean interval energy, all other intervals
    "tc_n_day": np.uint16,  # intervals learned into tc_day (saturates)
    "tc_n_rest": np.uint16,  # intervals learned into tc_rest (saturates)
    "tc_open": np.uint8,  # 1 while the mismatch is open
}


@dataclass(frozen=True, slots=True)
class TariffClassEvent:
    """A class mismatch opening (``firing``) or clearing on one meter."""

    meter: int
    type: str
    score: float
    firing: bool
    evidence: dict[str, float]


def business_hours(ts: int, interval_s: int, utc_offset_s: int, *, start_h: int = 9, end_h: int = 18) -> bool:
    """Whether the interval ending at ``ts`` lies in weekday business hours, local time (its
    midpoint decides).

    >>> monday_noon = 4 * 86400 + 12 * 3600  # 1970-01-05 was a Monday
    >>> business_hours(monday_noon, 900, 0), business_hours(monday_noon + 5 * 86400, 900, 0)
    (True, False)
    >>> business_hours(monday_noon, 900, 8 * 3600)  # 20:00 in UTC+8
    False
    """
    mid = ts - interval_s // 2 + utc_offset_s
    weekday = (mid // 86400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    return weekday < 5 and start_h * 3600 <= mid % 86400 < end_h * 3600


class TariffClassDetector:
    """Residential meters with a commercial weekday-daytime load shape and level.

    Parameters
    ----------
    classes
        Peer-group codes checked (0: residential).
    ratio, level_kw
        Bars on the weekday-daytime ratio and the daytime mean power (kW).
    clear
        The event clears when either figure falls below ``clear`` x its bar (hysteresis).
    min_day, min_rest
        Intervals learned in business hours and outside them before a meter is judged
        (defaults: five weekdays' business hours, about four days of the rest).
    alpha
        Weight of a new interval in the EW means (about two weeks of business hours); a
        running mean while the meter is young.

    Examples
    --------
    >>> det = TariffClassDetector(min_day=8, min_rest=8)
    >>> m, g = np.array([0, 1]), np.array([0, 0])
    >>> def day(t0):  # meter 0 a home (evening use), meter 1 a shop (weekday daytime use)
    ...     out = []
    ...     for t in range(t0 + 900, t0 + 86400 + 1, 900):
    ...         h = (t - 450) % 86400 / 3600
    ...         e = np.array([0.8 if 18 <= h < 23 else 0.2, 2.0 if 9 <= h < 18 else 0.2])
    ...         out += det.step(t, m, e, g)
    ...     return out
    >>> [(e.meter, e.type, round(e.score, 2)) for e in day(4 * 86400)]  # a Monday
    [(1, 'tariff_mismatch', 5.0)]
    """

    def __init__(
        self,
        *,
        classes: Sequence[int] = (0,),
        ratio: float = 2.0,
        level_kw: float = 1.0,
        clear: float = 0.8,
        min_day: int = 5 * 36,
        min_rest: int = 400,
        alpha: float = 1 / 360,
        interval_s: int = 900,
        utc_offset_s: int = 0,
        capacity: int = 1024,
    ) -> None:
        self.classes = np.array(sorted(classes), dtype=np.int64)
        self.ratio, self.level_kw, self.clear = ratio, level_kw, clear
        self.min_day, self.min_rest, self.alpha = min_day, min_rest, alpha
        self.interval_s, self.utc_offset_s = interval_s, utc_offset_s
        self._a = new_columns(_STATE, capacity)

    @staticmethod
    def state_bytes_per_meter() -> int:
        return bytes_per_meter(_STATE)

    def _grow(self, size: int) -> None:
        grow_columns(self._a, size)

    def step(
        self,
        ts: int,
        meters: npt.NDArray[np.integer],
        energy: npt.NDArray[np.floating],
        group: npt.NDArray[np.integer],
    ) -> list[TariffClassEvent]:
        """Learn one interval (ending at ``ts``) of energy after the multiplier (NaN = missing)
        of the checked classes' meters, and judge the ones that have learned enough."""
        checked = np.isin(group, self.classes) & ~np.isnan(energy)
        m = meters[checked]
        if len(m) == 0:
            return []
        self._grow(int(m.max()) + 1)
        a = self._a
        e = np.maximum(energy[checked], 0.0).astype(np.float32)
        daytime = business_hours(ts, self.interval_s, self.utc_offset_s)
        mean, n = (a["tc_day"], a["tc_n_day"]) if daytime else (a["tc_rest"], a["tc_n_rest"])
        w = np.maximum(np.float32(self.alpha), 1 / (n[m].astype(np.float32) + 1))
        mean[m] += w * (e - mean[m])
        n[m] = np.minimum(n[m].astype(np.int64) + 1, np.iinfo(np.uint16).max)
        if not daytime:
            return []  # the daytime figures change only in business hours: judge them there
        judged = (a["tc_n_day"][m] >= self.min_day) & (a["tc_n_rest"][m] >= self.min_rest)
        day, rest = a["tc_day"][m].astype(np.float64), a["tc_rest"][m].astype(np.float64)
        ratio = day / np.maximum(rest, 1e-6)
        level = day * 3600 / self.interval_s
        margin = np.minimum(ratio / self.ratio, level / self.level_kw)
        is_open = a["tc_open"][m] != 0
        out: list[TariffClassEvent] = []
        for i in np.flatnonzero(judged & ~is_open & (margin >= 1)):
            a["tc_open"][m[i]] = 1
            evidence = {
                "weekday_daytime_ratio": float(ratio[i]),
                "daytime_kw": float(level[i]),
                "expected_kwh": float(rest[i]),
                "observed_kwh": float(day[i]),
            }
            out.append(TariffClassEvent(int(m[i]), "tariff_mismatch", float(margin[i]), True, evidence))
        for i in np.flatnonzero(is_open & (margin < self.clear)):
            a["tc_open"][m[i]] = 0
            out.append(TariffClassEvent(int(m[i]), "tariff_mismatch", float(margin[i]), False, {}))
        return out
