"""Pure helpers of benchmarks/latency.py: pacing, percentiles, and which input record closes a
window (no broker)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "latency.py"
_spec = importlib.util.spec_from_file_location("gw_bench_latency", _PATH)
assert _spec is not None and _spec.loader is not None
lat = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = lat
_spec.loader.exec_module(lat)


def test_pacing_is_steady_in_readings() -> None:
    due = lat.pacing_schedule([100, 1, 100, 1, 100], 20_000)
    assert due == pytest.approx([0.0, 0.005, 0.00505, 0.01005, 0.0101])
    assert lat.pacing_schedule([], 1.0) == []


def test_percentile_nearest_rank() -> None:
    xs = list(range(1, 101))
    assert lat.percentile(xs, 50) == 50
    assert lat.percentile(xs, 99) == 99
    assert lat.percentile(xs, 100) == 100
    assert lat.percentile([7.0], 99) == 7.0


def _index() -> object:
    idx = lat.InputIndex(("r", "s"))
    # partition 0: readings at event times 900, 1800, 2700 produced at 10, 20, 30 ms;
    # supply at 900, 1800, 2700 produced at 11, 25, 31 ms
    for ts, ct in ((900, 10), (1800, 20), (2700, 30)):
        idx.add("r", 0, ts, ct)
    for ts, ct in ((900, 11), (1800, 25), (2700, 31)):
        idx.add("s", 0, ts, ct)
    return idx


def test_close_is_the_later_source_reaching_the_point() -> None:
    idx = _index()
    assert idx.close_ms(0, 1800) == 25  # readings got there at 20, supply only at 25
    assert idx.close_ms(0, 1000) == 25  # first records at or past 1000 are the 1800 ones
    assert idx.close_ms(0, 2701) is None  # never reached: closed by the idle timer
    assert idx.close_ms(1, 900) is None  # nothing on that partition


def test_event_time_must_not_go_back() -> None:
    idx = lat.InputIndex(("r",))
    idx.add("r", 0, 1800, 1)
    with pytest.raises(ValueError):
        idx.add("r", 0, 900, 2)


def test_window_latencies_first_revision_only() -> None:
    idx = _index()
    results = [
        ("A", 0, 0, 40),  # window [0, 900): closes at 1800 -> record at 25 ms: 15 ms
        ("A", 0, 1, 90),  # a correction: not counted
        ("A", 900, 0, 50),  # closes at 2700 -> 31 ms: 19 ms
        ("A", 1800, 0, 60),  # closes at 3600: never reached (idle-closed)
    ]
    got, idle = lat.window_latencies(results, {"A": 0}, idx, window_s=900, close_delay_s=900)
    assert got == [(0, 15.0), (900, 19.0)]
    assert idle == 1


def test_alert_latency_uses_the_window_of_its_interval() -> None:
    idx = _index()
    alert = {"entity_kind": "meter", "entity_id": "m1", "evidence": {}, "at": "1970-01-01T00:15:00Z"}
    # at = 900 -> window [0, 900) -> closes at 1800 (25 ms); alert stamped at 100 ms
    got, skipped = lat.alert_latencies(
        [(alert, 100), ({**alert, "entity_id": "unknown"}, 100)],
        {"m1": "A"},
        {"A": 0},
        idx,
        interval_s=900,
        window_s=900,
        close_delay_s=900,
    )
    assert got == [75.0]
    assert skipped == 1


def test_first_seen_reaches_skipped_values() -> None:
    samples = [(1.0, 0.0), (2.0, 1800.0), (3.0, 1800.0), (4.0, 2700.0)]
    assert lat.first_seen(samples, [900, 1800, 2700, 3600]) == {900: 2.0, 1800: 2.0, 2700: 4.0}
