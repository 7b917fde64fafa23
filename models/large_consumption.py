"""Large consumption of a customer class: a meter's energy over a local day or month above its
class's configured threshold (the "volume" part of the volume-price-fee watch).

Scores ``day`` and ``month``: the meter's energy so far in the current local day (month) over
its class's threshold; an event opens when that passes 1 and clears when the day (month) ends.
Information, not a page: a large residential bill is checked against the customer's contract,
not sent to an inspector at night (docs/detection.md, "Volume-price-fee watch").

State per meter: the day's and month's energy (float32), the local day and month they belong
to (uint16) and the open bits (uint8): 13 bytes, vectorised over dense meter indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from models.meter_state import bytes_per_meter, grow_columns, new_columns

TYPES = ("large_day", "large_month")
_DAY, _MONTH = np.uint8(1), np.uint8(2)

_STATE: dict[str, type[np.generic]] = {
    "lc_day_kwh": np.float32,  # energy in the local day ``lc_day``
    "lc_month_kwh": np.float32,  # energy in the local month ``lc_month``
    "lc_day": np.uint16,  # local day (days since 1970-01-01) the day's energy belongs to
    "lc_month": np.uint16,  # local month (months since 1970-01) the month's energy belongs to
    "lc_open": np.uint8,  # bit 1: day open, bit 2: month open
}


@dataclass(frozen=True, slots=True)
class LargeConsumptionEvent:
    """A day's or month's threshold passed (``firing``) or its period ended (clears)."""

    meter: int
    type: str
    score: float
    firing: bool
    evidence: dict[str, float]


def local_day_month(ts: int, utc_offset_s: int) -> tuple[int, int]:
    """(local day, local month) of the interval ending at ``ts``, counted from 1970-01.

    >>> local_day_month(86400, 0), local_day_month(86400, 8 * 3600)  # 1970-01-01 24:00 UTC
    ((0, 0), (1, 0))
    >>> local_day_month(31 * 86400 + 900, 0)  # the first interval of February
    (31, 1)
    """
    start = ts - 1 + utc_offset_s  # the interval's last second: it ends at ts
    d = datetime.fromtimestamp(start, UTC)
    return start // 86400, (d.year - 1970) * 12 + d.month - 1


class LargeConsumptionDetector:
    """Per-class daily and monthly energy thresholds, vectorised over dense meter indices.

    Parameters
    ----------
    thresholds
        Peer-group code -> (day kWh, month kWh); ``inf`` or a code not listed is not checked.
    utc_offset_s
        Local time = UTC + this: days and months end at local midnight.

    Examples
    --------
    >>> det = LargeConsumptionDetector({0: (30.0, 600.0)})
    >>> m, g = np.array([0, 1]), np.array([0, 0])
    >>> ev = [e for t in range(1, 25) for e in det.step(t * 900, m, np.array([1.0, 2.0]), g)]
    >>> [(e.meter, e.type, e.firing) for e in ev]  # 2 kWh x 16 intervals passes 30 kWh
    [(1, 'large_day', True)]
    >>> [(e.meter, e.type, e.firing) for e in det.step(86400 + 900, m, np.zeros(2), g)]
    [(1, 'large_day', False)]
    """

    def __init__(
        self,
        thresholds: Mapping[int, tuple[float, float]],
        *,
        utc_offset_s: int = 0,
        capacity: int = 1024,
    ) -> None:
        codes = max(thresholds, default=0) + 1
        self.day_kwh = np.full(max(codes, 4), np.inf)
        self.month_kwh = np.full(max(codes, 4), np.inf)
        for code, (day, month) in thresholds.items():
            self.day_kwh[code], self.month_kwh[code] = day, month
        self.utc_offset_s = utc_offset_s
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
    ) -> list[LargeConsumptionEvent]:
        """Add one interval (ending at ``ts``) of energy after the multiplier (NaN = missing)."""
        if len(meters) == 0:
            return []
        self._grow(int(meters.max()) + 1)
        a = self._a
        day, month = local_day_month(ts, self.utc_offset_s)
        g = np.minimum(group, len(self.day_kwh) - 1)
        out: list[LargeConsumptionEvent] = []
        kwh = np.where(np.isnan(energy), 0.0, np.maximum(energy, 0.0))
        for key, period, bit, limits, name in (
            ("lc_day", day, _DAY, self.day_kwh, "large_day"),
            ("lc_month", month, _MONTH, self.month_kwh, "large_month"),
        ):
            total = a[f"{key}_kwh"]
            new_period = a[key][meters] != period
            ended = meters[new_period & ((a["lc_open"][meters] & bit) != 0)]
            for m in ended:  # the period ended: its alert is done
                out.append(LargeConsumptionEvent(int(m), name, 0.0, False, {}))
            a["lc_open"][ended] &= ~bit
            total[meters[new_period]] = 0.0
            a[key][meters] = period
            total[meters] += kwh
            limit = limits[g]
            over = (total[meters] > limit) & ((a["lc_open"][meters] & bit) == 0)
            for i in np.flatnonzero(over):
                m = int(meters[i])
                a["lc_open"][m] |= bit
                evidence = {"observed_kwh": float(total[m]), "threshold_kwh": float(limit[i])}
                out.append(LargeConsumptionEvent(m, name, float(total[m] / limit[i]), True, evidence))
        return out
