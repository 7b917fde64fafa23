"""benchmarks/rank_realistic.py: the ranker fed directly ranks every theft area of a small city
exactly as the full benchmark's path through the worker's detection does, and its pairing and
recall helpers are right."""

from __future__ import annotations

import doctest
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import evaluate_realistic as full  # noqa: E402
import rank_realistic as fast  # noqa: E402


def test_doctests() -> None:
    assert doctest.testmod(fast).failed == 0


def test_the_ranking_is_the_full_benchmarks() -> None:
    checks = (2, 3)
    slow = full.run_city("mixed", 1, 3, 3.0, checks)
    quick = fast.run_city("mixed", 1, 3, 3.0, checks)
    assert slow["ranked"], "no theft area ranked"
    for day in map(str, checks):
        detection = slow["ranked"][day]["detection"]
        assert set(quick["ranked"][day]) == set(detection)
        for area, fig in detection.items():
            got = quick["ranked"][day][area]
            assert [tuple(t) for t in got["thieves"]] == [tuple(t) for t in fig["thieves"]], (day, area)
            assert got["auc"] == fig["auc"]
