"""Event-time window arithmetic on integer epoch seconds.

A reading's timestamp is the *end* of its metering interval, so the interval (end - d, end]
belongs to the window holding its start. A register value read at a window boundary closes the
last interval of one window and opens the next, so it belongs to both.

>>> window_of(900, interval_s=900, window_s=3600)     # interval 00:00-00:15 -> window 00:00
0
>>> window_of(3600, interval_s=900, window_s=3600)    # interval 00:45-01:00 -> window 00:00
0
>>> windows_touched(3600, interval_s=900, window_s=3600)
[0, 3600]
>>> windows_touched(2700, interval_s=900, window_s=3600)
[0]
"""

from __future__ import annotations


def window_of(interval_end: int, *, interval_s: int, window_s: int) -> int:
    """Start of the window that the interval ending at ``interval_end`` falls in."""
    return ((interval_end - interval_s) // window_s) * window_s


def windows_touched(ts: int, *, interval_s: int, window_s: int) -> list[int]:
    """Windows whose energy needs a register read at ``ts``: its own, and the next if on a
    boundary (where the read is that window's starting register)."""
    own = window_of(ts, interval_s=interval_s, window_s=window_s)
    return [own, ts] if ts % window_s == 0 else [own]


def interval_ends(window_start: int, *, interval_s: int, window_s: int) -> range:
    """Interval-end timestamps of a window: (start, start + window] in steps of interval.

    >>> list(interval_ends(0, interval_s=900, window_s=3600))
    [900, 1800, 2700, 3600]
    """
    return range(window_start + interval_s, window_start + window_s + 1, interval_s)


def snap(ts: float, *, interval_s: int, tolerance_s: int) -> int | None:
    """Snap a meter timestamp to the interval grid if within tolerance (meter clocks drift by
    seconds); None when it is too far off the grid to say which interval it closes.

    >>> snap(905.0, interval_s=900, tolerance_s=60), snap(1000.0, interval_s=900, tolerance_s=60)
    (900, None)
    """
    nearest = round(ts / interval_s) * interval_s
    return int(nearest) if abs(ts - nearest) <= tolerance_s else None
