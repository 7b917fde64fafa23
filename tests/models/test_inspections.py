"""Inspection records, the verdict classifier's state, and the feedback loop: on a seeded pool
where the ranker's score favours a confounder, test-then-train precision@10 rises."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pytest

from models.inspections import Inspection, SuspectClassifier, Verdict, features, precision_at_k
from models.suspects import Suspect

DAY = 86400


def suspect(meter: str, rng: np.random.Generator, kind: str) -> Suspect:
    """A candidate as the ranker would publish it. ``thief``: a partial drop the loss shows;
    ``vacant``: a meter gone to zero (a house left empty) behind a supply meter too coarse to
    refute it, so its drop evidence, and score, run higher than a thief's; ``quiet``: noise."""
    if kind == "thief":
        drop, loss = rng.uniform(10, 40), rng.uniform(20, 80)
        rel, zero, share, hours = rng.uniform(0.3, 0.8), 0.0, rng.uniform(0.5, 0.95), rng.uniform(8, 60)
    elif kind == "vacant":
        drop, loss = rng.uniform(60, 150), rng.uniform(-5, 15)
        rel, zero, share, hours = 1.0, 1.0, rng.uniform(-0.2, 0.15), rng.uniform(20, 70)
    else:
        drop, loss = rng.uniform(0, 8), rng.uniform(-30, 10)
        rel, zero, share, hours = rng.uniform(0, 0.3), 0.0, rng.uniform(-0.5, 0.2), rng.uniform(2, 30)
    score = drop + min(loss, 3 * drop)
    expected = rng.lognormal(np.log(10), 0.8)
    return Suspect(
        area=f"A{rng.integers(50)}",
        meter=meter,
        rank=0,
        score=score,
        loss_evidence=loss,
        drop_evidence=drop,
        share_of_area_loss_explained=share,
        correlation=rng.uniform(-0.2, 0.6),
        deficit_kwh=rel * expected,
        expected_kwh=expected,
        relative_drop=rel,
        zero_share=zero,
        drop_start=0,
        drop_end=int(hours * 3600),
        area_loss_rate=rng.uniform(0.02, 0.12),
        area_loss_rate_change=rng.uniform(-0.01, 0.05),
    )


def pool(day: int, rng: np.random.Generator) -> tuple[list[Suspect], dict[str, Verdict]]:
    """A day's candidates: 15 thieves, 20 vacant homes, 165 quiet meters (fresh ids daily)."""
    out, truth = [], {}
    for kind, n, verdict in (
        ("thief", 15, Verdict.THEFT),
        ("vacant", 20, Verdict.NORMAL),
        ("quiet", 165, Verdict.NORMAL),
    ):
        for i in range(n):
            meter = f"{kind}-{day}-{i}"
            out.append(suspect(meter, rng, kind))
            truth[meter] = verdict
    order = rng.permutation(len(out))
    return [out[i] for i in order], truth


def run_loop(days: int, *, learn: bool, seed: int = 0) -> list[float]:
    """Each day: rank (test), visit the top 10, score precision@10 on their verdicts, learn."""
    rng = np.random.default_rng(seed)
    clf = SuspectClassifier()
    curve = []
    for day in range(days):
        candidates, truth = pool(day, rng)
        ranked = clf.rerank(candidates) if learn else sorted(candidates, key=lambda s: -s.score)
        visits = ranked[:10]
        verdicts = [truth[s.meter] for s in visits]
        curve.append(precision_at_k(verdicts, 10))
        if learn:
            for s, v in zip(visits, verdicts, strict=True):
                clf.learn(s, v)
    return curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_feedback_loop_raises_precision_at_10(seed: int) -> None:
    learned = run_loop(12, learn=True, seed=seed)
    score_only = run_loop(12, learn=False, seed=seed)
    assert learned[0] == score_only[0] <= 0.3  # before any verdict: the ranker's order
    assert np.mean(learned[-4:]) >= 0.8  # after ~80 verdicts the vacant homes are known
    assert np.mean(learned[-4:]) >= np.mean(learned[:2]) + 0.5
    assert np.mean(score_only[-4:]) <= 0.3  # without verdicts nothing changes


def test_unready_model_keeps_the_ranker_order_and_renumbers() -> None:
    rng = np.random.default_rng(5)
    candidates = [suspect(f"M{i}", rng, kind) for i, kind in enumerate(["quiet", "thief", "vacant", "quiet"])]
    clf = SuspectClassifier(min_verdicts=3)
    clf.learn(candidates[1], Verdict.THEFT)
    ranked = clf.rerank(candidates)
    assert [s.meter for s in ranked] == [s.meter for s in sorted(candidates, key=lambda s: -s.score)]
    assert [s.rank for s in ranked] == [1, 2, 3, 4]
    assert not clf.ready and clf.found == 1 and clf.normal == 0


def test_snapshot_is_json_and_restores_exactly() -> None:
    rng = np.random.default_rng(7)
    clf = SuspectClassifier()
    for day in range(3):
        candidates, truth = pool(day, rng)
        for s in clf.rerank(candidates)[:10]:
            clf.learn(s, truth[s.meter])
    copy = SuspectClassifier.restore(json.loads(json.dumps(clf.snapshot())))
    probe, truth = pool(9, rng)
    assert [clf.probability(s) for s in probe] == [copy.probability(s) for s in probe]
    for s in probe[:20]:  # and both go on learning the same way
        clf.learn(s, truth[s.meter])
        copy.learn(s, truth[s.meter])
    assert [clf.probability(s) for s in probe] == [copy.probability(s) for s in probe]
    assert clf.snapshot() == copy.snapshot()
    with pytest.raises(ValueError):
        SuspectClassifier.restore({"v": 2})


def test_inspection_records() -> None:
    rec = Inspection("M1", date(2026, 1, 5), Verdict.THEFT, 120.5)
    assert Inspection.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    assert (
        Inspection.from_dict({"meter": "M2", "date": "2026-01-06", "verdict": "normal"}).recovered_kwh is None
    )
    with pytest.raises(ValueError):
        Inspection.from_dict({"meter": "M1", "date": "2026-01-05", "verdict": "stolen"})
    with pytest.raises(KeyError):
        Inspection.from_dict({"meter": "M1", "verdict": "theft"})


def test_features_and_precision() -> None:
    rng = np.random.default_rng(1)
    x = features(suspect("M", rng, "vacant"))
    assert all(np.isfinite(v) for v in x.values()) and x["zero_share"] == 1.0
    assert precision_at_k([], 10) == 0.0
    assert precision_at_k([Verdict.WIRING, Verdict.NORMAL], 10) == 0.5  # of the visits made
    assert precision_at_k([Verdict.METER_FAULT] * 3 + [Verdict.NORMAL] * 7, 3) == 1.0
