"""Unit tests for models/windows.py: event-time window arithmetic on epoch seconds."""

from __future__ import annotations

import pytest

from models.windows import interval_ends, snap, window_of, windows_touched

T0 = 1767225600  # 2026-01-01T00:00Z, a multiple of 86400
DAY = 86400
HOUR = 3600
QH = 900


@pytest.mark.parametrize(
    ("interval_end", "expected"),
    [
        (T0 + QH, T0),  # first interval of the hour: (00:00, 00:15]
        (T0 + 2 * QH, T0),
        (T0 + HOUR, T0),  # last interval of the hour: (00:45, 01:00] still belongs to 00:00
        (T0 + HOUR + QH, T0 + HOUR),  # (01:00, 01:15] is the next hour's
    ],
)
def test_window_of_hourly(interval_end: int, expected: int) -> None:
    assert window_of(interval_end, interval_s=QH, window_s=HOUR) == expected


def test_window_of_daily_boundaries() -> None:
    # 00:15 is the day's first interval end, 24:00 its last (96 intervals of 15 minutes).
    assert window_of(T0 + QH, interval_s=QH, window_s=DAY) == T0
    assert window_of(T0 + DAY, interval_s=QH, window_s=DAY) == T0
    assert window_of(T0 + DAY + QH, interval_s=QH, window_s=DAY) == T0 + DAY
    # Hourly load curve judged on daily windows.
    assert window_of(T0 + DAY, interval_s=HOUR, window_s=DAY) == T0
    assert window_of(T0 + HOUR, interval_s=HOUR, window_s=DAY) == T0


def test_window_of_window_equal_to_interval() -> None:
    # Each interval is its own window: the one ending at e starts at e - interval.
    for e in range(T0 + QH, T0 + 10 * QH, QH):
        assert window_of(e, interval_s=QH, window_s=QH) == e - QH


def test_window_of_negative_times_floor_not_truncate() -> None:
    # Floor division: the interval (-900, 0] belongs to the window [-3600, 0), not to [0, 3600).
    assert window_of(0, interval_s=QH, window_s=HOUR) == -HOUR
    assert window_of(-QH, interval_s=QH, window_s=HOUR) == -HOUR
    assert window_of(-HOUR, interval_s=QH, window_s=HOUR) == -2 * HOUR
    assert window_of(-HOUR + QH, interval_s=QH, window_s=HOUR) == -HOUR


def test_every_interval_end_of_a_window_maps_back_to_it() -> None:
    for window_s in (QH, HOUR, DAY):
        for start in (T0, T0 + window_s, -window_s, 0):
            ends = interval_ends(start, interval_s=QH, window_s=window_s)
            assert all(window_of(e, interval_s=QH, window_s=window_s) == start for e in ends)
            # ... and the neighbours just outside do not.
            assert window_of(start, interval_s=QH, window_s=window_s) == start - window_s
            assert window_of(start + window_s + QH, interval_s=QH, window_s=window_s) == start + window_s


def test_windows_touched_boundary_read_belongs_to_both() -> None:
    # A register read at 01:00 closes the 00:00 hour and is the 01:00 hour's opening register.
    assert windows_touched(T0 + HOUR, interval_s=QH, window_s=HOUR) == [T0, T0 + HOUR]
    assert windows_touched(T0, interval_s=QH, window_s=HOUR) == [T0 - HOUR, T0]
    assert windows_touched(T0 + DAY, interval_s=QH, window_s=DAY) == [T0, T0 + DAY]


def test_windows_touched_inside_window_is_single() -> None:
    for k in (1, 2, 3):
        assert windows_touched(T0 + k * QH, interval_s=QH, window_s=HOUR) == [T0]
    assert windows_touched(T0 + 12 * HOUR, interval_s=QH, window_s=DAY) == [T0]


def test_windows_touched_when_window_equals_interval() -> None:
    # Every read is on a boundary: it ends one interval and starts the next.
    assert windows_touched(T0 + QH, interval_s=QH, window_s=QH) == [T0, T0 + QH]


def test_windows_touched_negative_boundary() -> None:
    assert windows_touched(-HOUR, interval_s=QH, window_s=HOUR) == [-2 * HOUR, -HOUR]
    assert windows_touched(-QH, interval_s=QH, window_s=HOUR) == [-HOUR]


def test_interval_ends_hourly_and_daily() -> None:
    assert list(interval_ends(T0, interval_s=QH, window_s=HOUR)) == [T0 + QH * k for k in range(1, 5)]
    daily = interval_ends(T0, interval_s=QH, window_s=DAY)
    assert len(daily) == 96
    assert daily[0] == T0 + QH and daily[-1] == T0 + DAY
    assert T0 not in daily  # the start is the previous window's last end
    hourly_curve = interval_ends(T0, interval_s=HOUR, window_s=DAY)
    assert len(hourly_curve) == 24 and hourly_curve[-1] == T0 + DAY


def test_interval_ends_single_interval_window() -> None:
    assert list(interval_ends(T0, interval_s=QH, window_s=QH)) == [T0 + QH]


def test_interval_ends_negative_start() -> None:
    assert list(interval_ends(-HOUR, interval_s=QH, window_s=HOUR)) == [-2700, -1800, -900, 0]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (900.0, 900),  # on the grid
        (905.0, 900),  # meter clock 5 s fast
        (895.0, 900),  # 5 s slow
        (960.0, 900),  # exactly at the tolerance: still snapped
        (840.0, 900),
        (961.0, None),  # just beyond
        (839.0, None),
        (1000.0, None),
        (T0 + 3 * QH + 30.5, T0 + 3 * QH),  # fractional seconds
        (-895.0, -900),  # before the epoch
        (-1000.0, None),
        (10.0, 0),
    ],
)
def test_snap(ts: float, expected: int | None) -> None:
    got = snap(ts, interval_s=QH, tolerance_s=60)
    assert got == expected
    if got is not None:
        assert isinstance(got, int)


def test_snap_zero_tolerance_accepts_only_exact_grid() -> None:
    assert snap(1800.0, interval_s=QH, tolerance_s=0) == 1800
    assert snap(1800.5, interval_s=QH, tolerance_s=0) is None
    assert snap(1799.0, interval_s=QH, tolerance_s=0) is None
