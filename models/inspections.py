"""Inspection verdicts, and an online classifier that learns from them to re-rank suspects.

An inspector visits a suspect (a :class:`~models.suspects.Suspect`) and returns a verdict:
``theft``, ``meter_fault``, ``wiring`` (CT wiring, a customer fed from another transformer) or
``normal``. A visit that finds anything is worth it, so the classifier learns
P(verdict != normal) from the suspect's evidence as it was ranked (the worker keeps the
published suspect and pairs it with the verdict when it arrives, days later): river's
``StandardScaler | LogisticRegression``, one ``learn_one`` per verdict, so it follows the
verdicts as they come. Until it has seen ``min_verdicts`` verdicts
:meth:`SuspectClassifier.rerank` keeps the ranker's order. State is small (one weight per
feature) and its snapshot is JSON.

Prequential (test-then-train) evaluation: rank with the model as it is, visit the top k, score
:func:`precision_at_k` on their verdicts, then learn them.

>>> from models.suspects import Suspect
>>> def suspect(meter, score, drop):
...     return Suspect("A1", meter, 0, score, score - drop, drop, 0.5, 0.3, 10.0, 20.0, 0.5, 0.0,
...                    0, 86400, 0.06, 0.02)
>>> clf = SuspectClassifier(min_verdicts=4)
>>> for _ in range(30):  # big drops that the loss does not show turn out normal
...     clf.learn(suspect("x", 50.0, 45.0), Verdict.NORMAL)
...     clf.learn(suspect("y", 30.0, 5.0), Verdict.THEFT)
>>> [s.meter for s in clf.rerank([suspect("honest", 50.0, 45.0), suspect("thief", 30.0, 5.0)])]
['thief', 'honest']
>>> same = SuspectClassifier.restore(clf.snapshot())
>>> same.probability(suspect("q", 40.0, 20.0)) == clf.probability(suspect("q", 40.0, 20.0))
True
>>> precision_at_k([Verdict.THEFT, Verdict.NORMAL, Verdict.METER_FAULT, Verdict.NORMAL], 4)
0.5
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import Any

from river import linear_model, optim, preprocessing, utils

from models.suspects import Suspect


class Verdict(StrEnum):
    THEFT = "theft"
    METER_FAULT = "meter_fault"
    WIRING = "wiring"
    NORMAL = "normal"


@dataclass(frozen=True, slots=True)
class Inspection:
    """One inspections record: what the inspector found at a meter on a date."""

    meter: str
    date: date
    verdict: Verdict
    recovered_kwh: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "date": self.date.isoformat(),
            "verdict": self.verdict.value,
            "recovered_kwh": self.recovered_kwh,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Inspection:
        """Parse a record (raises ValueError / KeyError on a bad one).

        >>> r = Inspection.from_dict({"meter": "M1", "date": "2026-01-05", "verdict": "theft"})
        >>> r.verdict, r.date.isoformat(), r.recovered_kwh, Inspection.from_dict(r.to_dict()) == r
        (<Verdict.THEFT: 'theft'>, '2026-01-05', None, True)
        """
        kwh = d.get("recovered_kwh")
        return cls(
            str(d["meter"]),
            date.fromisoformat(d["date"]),
            Verdict(d["verdict"]),
            None if kwh is None else float(kwh),
        )


def _slog(x: float) -> float:
    """Signed log: likelihood ratios run from -1e4 to 1e4."""
    return math.copysign(math.log1p(abs(x)), x)


def features(s: Suspect) -> dict[str, float]:
    """What the classifier sees of a suspect (all scale-free or logged)."""
    return {
        "score": _slog(s.score),
        "loss_evidence": _slog(s.loss_evidence),
        "drop_evidence": _slog(s.drop_evidence),
        "share": max(s.share_of_area_loss_explained, -5.0),
        "correlation": s.correlation,
        "relative_drop": s.relative_drop,
        "zero_share": s.zero_share,
        "expected_kwh": math.log1p(max(s.expected_kwh, 0.0)),
        "drop_hours": math.log1p(max(s.drop_end - s.drop_start, 0) / 3600),
        "area_loss_rate": s.area_loss_rate,
        "area_loss_rate_change": s.area_loss_rate_change,
    }


class SuspectClassifier:
    """Online P(the visit finds something) over suspect features, learned from verdicts.

    Parameters
    ----------
    lr
        SGD learning rate of the logistic regression.
    min_verdicts
        Verdicts before :meth:`rerank` trusts the model.
    """

    def __init__(self, *, lr: float = 0.01, min_verdicts: int = 10) -> None:
        self.lr, self.min_verdicts = lr, min_verdicts
        self.model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(lr))
        self.found = 0  # verdicts that found something
        self.normal = 0

    @property
    def ready(self) -> bool:
        """Enough verdicts to rank by (of either kind: visits that all came back normal are
        what moves the next visits elsewhere)."""
        return self.found + self.normal >= self.min_verdicts

    def learn(self, suspect: Suspect, verdict: Verdict) -> None:
        """Learn one verdict on a suspect as it was ranked (test first, then learn)."""
        hit = verdict != Verdict.NORMAL
        self.model.learn_one(features(suspect), hit)
        self.found += hit
        self.normal += not hit

    def probability(self, suspect: Suspect) -> float:
        """P(verdict != normal); 0.5 before any verdict."""
        return float(self.model.predict_proba_one(features(suspect)).get(True, 0.5))

    def rerank(self, suspects: Sequence[Suspect], *, learn_scale: bool = True) -> list[Suspect]:
        """Suspects by probability (ties and an unready model: by score), ranks renumbered.

        With ``learn_scale`` the suspects also update the feature scaling (no verdict needed):
        scaled on the visited few alone, the bulk of the candidates would sit far outside and
        their scores swing on every early verdict."""
        if learn_scale:
            scaler = self.model["StandardScaler"]
            for s in suspects:
                scaler.learn_one(features(s))
        if self.ready:
            key = [(-self.probability(s), -s.score) for s in suspects]
        else:
            key = [(0.0, -s.score) for s in suspects]
        order = sorted(range(len(suspects)), key=key.__getitem__)
        return [dataclasses.replace(suspects[i], rank=k + 1) for k, i in enumerate(order)]

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: scaler statistics, weights, intercept, optimizer step, counts."""
        scaler, logit = self.model["StandardScaler"], self.model["LogisticRegression"]
        return {
            "v": 1,
            "lr": self.lr,
            "min_verdicts": self.min_verdicts,
            "found": self.found,
            "normal": self.normal,
            "counts": dict(scaler.counts),
            "means": dict(scaler.means),
            "vars": dict(scaler.vars),
            "weights": logit.weights,
            "intercept": logit.intercept,
            "n_iterations": logit.optimizer.n_iterations,
        }

    @classmethod
    def restore(cls, d: dict[str, Any]) -> SuspectClassifier:
        """Rebuild from :meth:`snapshot` (it predicts and goes on learning exactly the same)."""
        if d.get("v") != 1:
            raise ValueError(f"unknown snapshot version {d.get('v')!r}")
        clf = cls(lr=float(d["lr"]), min_verdicts=int(d["min_verdicts"]))
        clf.found, clf.normal = int(d["found"]), int(d["normal"])
        scaler, logit = clf.model["StandardScaler"], clf.model["LogisticRegression"]
        scaler.counts.update({k: int(v) for k, v in d["counts"].items()})
        scaler.means.update({k: float(v) for k, v in d["means"].items()})
        scaler.vars.update({k: float(v) for k, v in d["vars"].items()})
        logit._weights = utils.VectorDict({k: float(v) for k, v in d["weights"].items()})
        logit.intercept = float(d["intercept"])
        logit.optimizer.n_iterations = int(d["n_iterations"])
        return clf


def precision_at_k(verdicts: Sequence[Verdict], k: int) -> float:
    """Share of the first ``k`` verdicts (in rank order) that found something."""
    top = list(verdicts)[:k]
    return sum(v != Verdict.NORMAL for v in top) / len(top) if top else 0.0
