"""benchmarks/evaluate_realistic.py: its figures are computed right on constructed cases (an
oracle ranking scores AUC 1 and meets the ranking bars, a reversed one 0), and its quick mode
runs end to end through the worker's detection path."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import evaluate_realistic as ev  # noqa: E402

THIEVES = {"t1": "theft_fdi", "t2": "theft_days", "t3": "theft_mixed", "t4": "theft_fdi", "t5": "theft_days"}
HONEST = [f"h{i:02d}" for i in range(28)]


def test_auc_oracle_reversed_and_ties() -> None:
    oracle = [*THIEVES, *HONEST]
    assert ev.auc(oracle, set(THIEVES), set(HONEST)) == 1.0
    assert ev.auc(oracle[::-1], set(THIEVES), set(HONEST)) == 0.0
    assert ev.auc([], set(THIEVES), set(HONEST)) == 0.5  # nothing ranked: all tie
    half = [HONEST[0], "t1", HONEST[1], "t2"]  # t1 above 27 of 28, t2 above 26, others tie at the bottom
    expected = (27 + 26 + 3 * 26 * 0.5 + 3 * 2 * 0.0) / (5 * 28)
    assert ev.auc(half, set(THIEVES), set(HONEST)) == pytest.approx(expected)
    assert ev.auc(oracle, set(), set(HONEST)) is None


def test_area_figures_ranks_and_counts() -> None:
    order = ["t1", "h00", "t2", "h01", "h02", "t3", *HONEST[3:], "t4"]  # t5 left out
    fig = ev.area_figures(order, THIEVES, set(HONEST))
    assert fig["thieves"] == [  # in meter order t1..t5
        ("theft_fdi", 1),
        ("theft_days", 3),
        ("theft_mixed", 6),
        ("theft_fdi", 32),
        ("theft_days", None),
    ]
    assert fig["top5"] == 2 and fig["top10"] == 3 and fig["n"] == 5


def test_correlation_baseline_finds_a_thief_on_random_days() -> None:
    rng = np.random.default_rng(4)
    real = rng.lognormal(2.0, 0.4, (33, 30))
    shown = real.copy()
    days = rng.random(30) < 0.5
    shown[7, days] *= rng.uniform(0.2, 0.6, days.sum())
    supply = real.sum(axis=0) * 1.03
    order = ev.correlation_order(shown, supply, [f"m{i}" for i in range(33)])
    assert order[0] == "m7"


def test_area_days_with_suspects() -> None:
    day = ev.DAY
    spans = [("A", 10, 20), ("A", day + 5, 3 * day), ("B", 0, 5), ("C", 0, day)]
    assert ev.area_days_with_suspects(spans, ["A", "B"], 0, 4) == (4, 8)  # A days 0-2, B day 0


def _run(kind: str, ranking: str) -> dict[str, Any]:
    """A constructed city: two areas of 33 meters, 5 thieves each, ranked by an oracle (thieves
    first), a reversed oracle or nothing; alerts counted per kind."""
    ranked: dict[str, Any] = {"detection": {}, "baseline": {}}
    for area in ("A0", "A1"):
        thieves = {f"{area}{m}": t for m, t in THIEVES.items()}
        honest = {f"{area}{m}" for m in HONEST}
        oracle = [*thieves, *sorted(honest)]
        order = oracle if ranking == "oracle" else oracle[::-1]
        ranked["detection"][area] = ev.area_figures(order, thieves, honest)
        ranked["baseline"][area] = ev.area_figures(oracle[3:] + oracle[:3], thieves, honest)
    return {
        "kind": kind,
        "seed": 1,
        "areas": 3,
        "theft_areas": 2,
        "meters": 99,
        "thieves": 10,
        "labels_by_type": {},
        "stolen_share_median": 0.5,
        "seconds": 0.0,
        "days": 30.0,
        "honest_meter_days": 89 * 30.0,
        "alerts": {"paged": 2, "paged:meter_consumption_drop": 2, "info": 5, "suspect": 1},
        "theft_free_area_days": 30,
        "theft_free_area_days_with_suspect": 1,
        "ranked": {"30": ranked},
        "state_bytes_per_meter": 200,
    }


def test_figures_oracle_meets_ranking_bars_reversed_misses() -> None:
    out = ev.figures([_run("mixed", "oracle"), _run("case", "oracle")], (30,))
    case = out["case"]["by_day"]["30"]
    assert case["detection"]["auc"] == 1.0
    assert case["detection"]["mean_thieves_in_top5"] == 5.0
    assert case["detection"]["hit_rate"]["all"] == {"thieves": 10, "top3": 0.6, "top5": 1.0, "top10": 1.0}
    assert case["baseline"]["mean_thieves_in_top5"] == 2.0  # three thieves rotated to the end
    assert out["mixed"]["by_day"]["30"]["detection"]["top10_recall"] == 1.0
    bars = out["bars"]
    for name in ("case_mean_thieves_in_top5", "case_auc", "case_top5_vs_baseline", "mixed_top10_recall"):
        assert bars[name]["met"], name
    assert bars["case_top5_vs_baseline"]["measured"] == 2.5
    # 4 paged alerts over 2 x 89 x 30 honest meter-days
    assert out["honest"]["alerts"]["paged_per_1000_meter_days"] == pytest.approx(1000 * 4 / 5340, abs=1e-3)
    assert out["honest"]["alerts"]["information_per_1000_meter_days"] == pytest.approx(
        1000 * 10 / 5340, abs=1e-3
    )
    assert bars["honest_paged_meter_alerts_per_1000_meter_days"] == {
        "measured": 0.749,
        "target": "<= 1.0",
        "met": True,
    }
    assert out["honest"]["theft_free_area_days_without_honest_suspect"] == pytest.approx(1 - 1 / 30, abs=1e-4)
    assert bars["theft_free_area_days_without_honest_suspect"]["met"]

    rev = ev.figures([_run("mixed", "reversed"), _run("case", "reversed")], (30,))
    assert rev["case"]["by_day"]["30"]["detection"]["auc"] == 0.0
    assert rev["case"]["by_day"]["30"]["detection"]["mean_thieves_in_top5"] == 0.0
    assert not rev["bars"]["case_auc"]["met"] and not rev["bars"]["case_top5_vs_baseline"]["met"]


def test_quick_mode_end_to_end(tmp_path: Path) -> None:
    out = ev.main(["--quick", "--out", str(tmp_path / "realistic.json")])
    saved = json.loads((tmp_path / "realistic.json").read_text())
    assert (tmp_path / "realistic.md").read_text().startswith("# Realistic households")
    assert saved["bars"].keys() == ev.BARS.keys() == out["bars"].keys()
    assert saved["check_days"] == [3]
    for name in ("case", "mixed"):
        city = saved[name]["cities"][0]
        assert city["thieves"] >= 1 and city["meters"] > city["thieves"]
        for who in ("detection", "baseline"):
            fig = saved[name]["by_day"]["3"][who]
            assert 0.0 <= fig["auc"] <= 1.0
            for rates in fig["hit_rate"].values():
                assert 0.0 <= rates["top3"] <= rates["top5"] <= rates["top10"] <= 1.0
    assert saved["case"]["cities"][0]["meters"] == 66 and saved["case"]["cities"][0]["thieves"] == 10
    honest = saved["honest"]
    meter_days = sum(c["meters"] - c["thieves"] for n in ("case", "mixed") for c in saved[n]["cities"]) * 3
    assert honest["alerts"]["honest_meter_days"] == meter_days
    assert honest["theft_free_area_days"] % 3 == 0


def test_top10_of_an_area_with_more_than_ten_thieves_is_bounded_per_thief_not_per_area() -> None:
    """15 thieves ranked first in a 40-meter area and 5 in another: the per-thief top-10 rate is
    (10 + 5) / 20, which ``top10_ceiling`` states, while the per-area recall reaches 1.0."""
    honest = {f"h{i:02d}" for i in range(25)}
    many = {f"t{i:02d}": "theft_cap" for i in range(15)}
    few = {f"u{i}": "theft_fdi" for i in range(5)}
    ranked = {
        "detection": {
            "A0": ev.area_figures([*many, *sorted(honest)], many, honest),
            "A1": ev.area_figures([*few, *sorted(honest)], few, honest),
        }
    }
    fig = ev.ranking_figures([{"ranked": {"30": ranked}}], "detection", "30")
    assert fig["hit_rate"]["all"]["top10"] == 0.75
    assert fig["top10_ceiling"] == 0.75
    assert fig["top10_recall"] == 1.0
