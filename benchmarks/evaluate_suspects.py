"""Score the suspect ranking, the mapping-error finder and the inspection feedback loop on a
simulated city (no Kafka) and write benchmarks/results/suspects.json.

    python benchmarks/evaluate_suspects.py          # about 3 minutes, see below
    python benchmarks/evaluate_suspects.py --seeds 7 --scenario-seeds 7 --meters 5000

Two parts: the plain simulator (3 cities of 10,000 meters x 10 days, seeds 21-23) and the
innocent-drops scenario (6 cities of 10,000 meters x 16 days, seeds 21-26).

Every interval of every area goes through :class:`~models.suspects.SuspectRanker` and
:class:`~models.area_anomaly.AreaAnomalyDetector` as the worker would feed them (interval
energies from register deltas x the archive's multiplier, NaN for gaps, register rollbacks and
data a concentrator held back). Then:

* **top 3**: every hour, each area holding a theft or stopped meter that started in the last two
  days is ranked; a label is hit when its meter is in its area's top 3 at the ranking two days
  after its start (labels starting in the first day, the ranker's warm-up, or less than two days
  before the end are not scored). Also reported: at one day, at any hourly ranking within two
  days, and together with the area detector having flagged the area (the worker ranks areas in
  high_loss or with a loss jump).
* **mapping errors**: once a day :class:`~models.mapping.MappingErrorFinder` looks at the areas
  whose loss over the history is negative; a ``wrong_mapping`` label is hit when its meter is
  named with its archive area as recorded and its real area as likely at the check two days
  into the run (every daily check is reported too, with the wrong namings).
* **inspections**: once a day (from day 2) every area's top 5 suspects form the candidates.
  The verdict is ``theft`` when a theft label of the meter overlaps the ranker's history (72 h
  before the visit), ``meter_fault`` / ``wiring`` likewise for the other meter labels
  (``wiring``: wrong mapping or multiplier), else ``normal``. Prequential, test then train: a
  team ranks the candidates with its classifier as it is; ``precision_at_10`` (and ``_20``) is
  the share of the top 10 (20) of that ranking whose verdict is a finding (the simulator knows
  every candidate's), ``visit_precision`` that of the 10 it visits (its top 10 not visited in
  the last week); then it learns the visits' verdicts. A second team ranks by the score alone
  (no learning) over the same candidates, as the baseline; a third by the score alone over the
  candidates outside negative-loss areas (those are the mapping finder's: there the suspects
  explain a mirror image), the policy docs/suspects.md recommends. On the plain simulator the
  score alone already puts findings in the top 10: no headroom for learning
  (``plain_simulator_precision_at_10_by_verdict_count``).
* **innocent drops** (:func:`run_scenario`, ``precision_at_10_by_verdict_count``): what real
  cities have and the simulator lacks, honest customers whose consumption drops (vacancies,
  holidays, a shop closed for renovation), which the score cannot tell from a theft. A clean
  simulated city gets a steady flow of thefts (:func:`add_thefts`, the simulator's h1-h4) and of
  innocent drops (:func:`plan_innocent`, applied to the registers by :class:`InnocentDrops`:
  the real consumption drops, so the supply drops too and the loss does not rise). The utility
  inspects by score from day 2; from day 7 (the pool then holds the drops a city with a past
  would) two teams go on over the same ranking (every area's top 5 it has not inspected yet), each
  visiting its best 10 a day, a meter once: one learning from its verdicts with a new
  classifier (prequential: visit, score, then learn), one by the score alone, the control.
  Reported: precision@10 of each block of 10 verdicts, mean over the cities.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.evaluate import observed_chunks  # noqa: E402
from models.area_anomaly import AreaAnomalyDetector  # noqa: E402
from models.inspections import SuspectClassifier, Verdict, precision_at_k  # noqa: E402
from models.mapping import MappingErrorFinder  # noqa: E402
from models.suspects import Suspect, SuspectRanker  # noqa: E402
from simulator.anomalies import G_RANGE, RUN_MAX, RUN_MIN, THEFTS, Anomaly, AnomalySpec  # noqa: E402
from simulator.shapes import COMMERCIAL, RESIDENTIAL  # noqa: E402
from simulator.synth import Chunk, Sim, SimSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DAY, HOUR = 86400, 3600
RANKED = (*THEFTS, "stopped")  # meter labels whose top-3 figure is reported
LOSS_THEFTS = ("theft_h1", "theft_h2", "theft_h3", "theft_h4")  # thefts that move the loss
FAULTS = ("stopped", "spike", "flat_line", "rollback", "meter_swap")
WIRING = ("wrong_mapping", "wrong_multiplier")
BARS = {
    "top3_hit_rate (h1-h4, 2 days after onset)": ">= 0.90",
    "mapping_error_hit_rate": ">= 0.90",
    "precision_at_10": "rises as verdicts arrive (precision_at_10_by_verdict_count: innocent-drops scenario)",
}


def labels_t0(spec: SimSpec) -> str:
    return spec.start.isoformat().replace("+00:00", "Z")


def _ts(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def counts_for(areas: int) -> dict[str, int]:
    """One anomaly per area while areas last (the simulator then piles the rest into one area):
    mostly loss-moving thefts, a few of everything an inspector may find."""
    per = max(1, areas // 60)
    return {
        "theft_h1": 9 * per,
        "theft_h2": 9 * per,
        "theft_h3": 9 * per,
        "theft_h4": 9 * per,
        "theft_h5": 1 * per,
        "theft_h6": 1 * per,
        "stopped": 4 * per,
        "wrong_mapping": 5 * per,
        "spike": 1 * per,
        "meter_swap": 1 * per,
    }


def verdict(labels: list[dict[str, Any]], at: int, *, window_s: int = 3 * DAY) -> Verdict:
    """What an inspector finds at ``at`` on a meter carrying these labels: a label counts when
    it overlaps the ranker's history (``window_s``), the evidence the suspect was ranked on
    (a bypass removed yesterday still leaves its traces and a back-bill)."""
    found = [lab for lab in labels if _ts(lab["start"]) < at and _ts(lab["end"]) > at - window_s]
    types = {lab["type"] for lab in found}
    if types & set(THEFTS):
        return Verdict.THEFT
    if types & set(FAULTS):
        return Verdict.METER_FAULT
    if types & set(WIRING):
        return Verdict.WIRING
    return Verdict.NORMAL


class Inspectors:
    """One inspection team: each day ranks the candidates (by its classifier, or by score when
    not learning), visits the top ``k`` not visited within ``cooldown_s`` and, when learning,
    learns their verdicts after scoring them (test, then train)."""

    def __init__(self, *, k: int, learn: bool, cooldown_s: int = 7 * DAY) -> None:
        self.k, self.learning, self.cooldown_s = k, learn, cooldown_s
        self.clf = SuspectClassifier()
        self.visited: dict[str, int] = {}
        self.curve: list[dict[str, Any]] = []

    def day(
        self, at: int, candidates: list[Suspect], truth: dict[str, list[dict[str, Any]]]
    ) -> list[tuple[Suspect, Verdict]]:
        """One day's ranking, visits and learning; returns the visits with their verdicts."""
        ranked = self.clf.rerank(candidates) if self.learning else sorted(candidates, key=lambda s: -s.score)
        # The ranking's quality: precision@k of the whole list as ranked (the simulator knows
        # every candidate's verdict), before learning today's verdicts.
        listed = [verdict(truth.get(s.meter, []), at) for s in ranked[: 2 * self.k]]
        visits = [s for s in ranked if at - self.visited.get(s.meter, -(10**12)) > self.cooldown_s][: self.k]
        verdicts = [verdict(truth.get(s.meter, []), at) for s in visits]
        self.curve.append(
            {
                "day": datetime.fromtimestamp(at, UTC).date().isoformat(),
                "verdicts_before": self.clf.found + self.clf.normal,
                "precision_at_10": precision_at_k(listed, self.k),
                "precision_at_20": precision_at_k(listed, 2 * self.k),
                "visit_precision": precision_at_k(verdicts, self.k),
                "visit_thefts": sum(v == Verdict.THEFT for v in verdicts),
                "model_ready": self.clf.ready,
            }
        )
        for s, v in zip(visits, verdicts, strict=True):
            self.visited[s.meter] = at
            if self.learning:
                self.clf.learn(s, v)
        return list(zip(visits, verdicts, strict=True))


def interval_energies(
    sim: Sim, drops: InnocentDrops | None = None
) -> Iterator[tuple[Chunk, np.ndarray, np.ndarray]]:
    """Each day of the city with its interval energies as the worker gets them
    (:func:`evaluation.evaluate.observed_chunks`); ``drops`` rewrites the registers first (the
    innocent-drops scenario)."""
    for chunk, energy, supply, _back in observed_chunks(sim, drops.apply if drops is not None else None):
        yield chunk, energy, supply


def run(spec: SimSpec, *, visits: int = 10, progress: bool = True) -> dict[str, Any]:
    sim = Sim.build(spec)
    grid = sim.grid
    n_areas = len(grid.area_ids)
    by_area = [np.flatnonzero(grid.archive_area == a) for a in range(n_areas)]
    ids = [[grid.meter_ids[i] for i in idx] for idx in by_area]
    groups = [grid.customer_class[idx] for idx in by_area]
    area_of = {grid.meter_ids[i]: grid.area_ids[int(grid.archive_area[i])] for i in range(grid.meters)}
    labels = sim.labels()
    truth: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lab in labels:
        if lab["role"] == "customer":
            truth[lab["entity"]].append(lab)
    end_ts = spec.t0 + spec.steps * spec.interval_s
    scored = [
        lab
        for lab in labels
        if lab["type"] in RANKED and spec.t0 + DAY <= _ts(lab["start"]) <= end_ts - 2 * DAY
    ]
    mappings = [lab for lab in labels if lab["type"] == "wrong_mapping"]

    ranker = SuspectRanker(interval_s=spec.interval_s)
    area_det = AreaAnomalyDetector()
    finder = MappingErrorFinder(ranker)
    teams = {
        "learning": Inspectors(k=visits, learn=True),
        "score_only": Inspectors(k=visits, learn=False),
        "score_only_outside_negative": Inspectors(k=visits, learn=False),
    }
    ranks: dict[str, list[tuple[int, int]]] = defaultdict(list)  # meter -> (seconds since start, rank)
    flagged: dict[str, list[int]] = defaultdict(list)  # area -> times a loss condition opened
    checks: list[tuple[int, list[tuple[str, str, str]]]] = []  # daily (time, named mapping errors)
    honest_top: list[float] = []  # area-day outside negative areas: best score without a label
    thief_1d: dict[str, list[float]] = defaultdict(list)  # a day after the start (at a day end)
    timing = {"observe_s": 0.0, "observe_calls": 0, "rank_s": 0.0, "rank_calls": 0, "find_s": 0.0}
    started = time.perf_counter()
    for chunk, energy, supply in interval_energies(sim):
        steps = energy.shape[1]
        for j in range(steps):
            end = int(chunk.times[j + 1])
            t = time.perf_counter()
            for a in range(n_areas):
                ranker.observe(
                    grid.area_ids[a],
                    end - spec.interval_s,
                    ids[a],
                    energy[by_area[a], j],
                    float(supply[a, j]),
                    groups[a],
                )
            timing["observe_s"] += time.perf_counter() - t
            timing["observe_calls"] += n_areas
            for a in range(n_areas):
                e = energy[by_area[a], j]
                ok = ~np.isnan(e)
                s = float(supply[a, j])
                rate = (s - float(e[ok].sum())) / s if ok.mean() >= 0.98 and s > 0 else None
                upper = 0.07 if int(grid.area_class[a]) == 0 else 0.10
                for ev in area_det.step(
                    grid.area_ids[a], loss_rate=rate, completeness=float(ok.mean()), lower=-0.01, upper=upper
                ):
                    if ev.firing and ev.type in ("loss_jump", "high_loss"):
                        flagged[grid.area_ids[a]].append(end)
            if end % HOUR:
                continue
            live = [lab for lab in scored if _ts(lab["start"]) < end <= _ts(lab["start"]) + 2 * DAY]
            for area in sorted({area_of[lab["entity"]] for lab in live}):
                t = time.perf_counter()
                pos = {s.meter: s.rank for s in ranker.rank(area, top=None)}
                timing["rank_s"] += time.perf_counter() - t
                timing["rank_calls"] += 1
                for lab in live:
                    if area_of[lab["entity"]] == area:
                        ranks[lab["entity"]].append((end - _ts(lab["start"]), pos.get(lab["entity"], 10**6)))
            if end % DAY or end < spec.t0 + DAY:
                continue
            t = time.perf_counter()
            checks.append((end, [(e.meter, e.recorded_area, e.likely_area) for e in finder.find()]))
            timing["find_s"] += time.perf_counter() - t
            if end < spec.t0 + 2 * DAY:
                continue
            # Negative-loss areas are the mapping finder's: their suspects explain a mirror image.
            negative = set(finder.negative_areas())
            candidates = []
            for area in grid.area_ids:
                top = ranker.rank(area, top=5)
                candidates += top
                honest = [x.score for x in top if x.meter not in truth]
                if honest and area not in negative:
                    honest_top.append(honest[0])
            outside = [x for x in candidates if x.area not in negative]
            for lab in scored:  # the thief's score a day after its start (for a publish threshold)
                if end - DAY < _ts(lab["start"]) + DAY <= end:
                    sus = {x.meter: x.score for x in ranker.rank(area_of[lab["entity"]], top=None)}
                    thief_1d[lab["type"]].append(sus.get(lab["entity"], 0.0))
            for name, team in teams.items():
                team.day(end, outside if name.endswith("outside_negative") else candidates, truth)
        if progress:
            print(
                f"day {chunk.c0 * spec.interval_s // DAY + 1}: {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )
    elapsed = time.perf_counter() - started
    return {
        "spec": {
            "seed": spec.seed,
            "meters": grid.meters,
            "areas": n_areas,
            "days": spec.days,
            "interval_s": spec.interval_s,
            "anomalies": dict(spec.anomalies.counts),
        },
        "t0": labels_t0(spec),
        "seconds": round(elapsed, 1),
        "rows": top3_rows(scored, ranks, flagged, area_of),
        "mapping_truth": [
            (lab["entity"], lab["parameters"]["archive_area"], lab["parameters"]["actual_area"])
            for lab in mappings
        ],
        "checks": checks,
        "honest_top": honest_top,
        "thief_1d": thief_1d,
        "curves": {name: team.curve for name, team in teams.items()},
        "cost": {
            "state_bytes_per_meter": ranker.state_bytes_per_meter(),
            "observe_us_per_area_interval": round(
                1e6 * timing["observe_s"] / max(timing["observe_calls"], 1), 1
            ),
            "rank_ms_per_area": round(1e3 * timing["rank_s"] / max(timing["rank_calls"], 1), 2),
            "mean_meters_per_area": round(grid.meters / n_areas, 1),
            "mapping_find_ms_per_city_check": round(1e3 * timing["find_s"] / max(len(checks), 1), 1),
            "classifier_snapshot_bytes": len(json.dumps(teams["learning"].clf.snapshot())),
        },
    }


def top3_rows(
    scored: list[dict[str, Any]],
    ranks: dict[str, list[tuple[int, int]]],
    flagged: dict[str, list[int]],
    area_of: dict[str, str],
) -> list[dict[str, Any]]:
    rows = []
    for lab in scored:
        r = ranks.get(lab["entity"], [])
        # hourly rankings: the first at or after one day, the last within two (> 2 days - 1 h)
        at1 = next((x for d, x in r if d >= DAY), None)
        at2 = r[-1][1] if r and r[-1][0] > 2 * DAY - HOUR else None
        first = next((d for d, x in r if x <= 3), None)
        start = _ts(lab["start"])
        flag = any(start < f <= start + 2 * DAY for f in flagged.get(area_of[lab["entity"]], []))
        rows.append(
            {
                "meter": lab["entity"],
                "type": lab["type"],
                "share": lab["parameters"].get("share"),
                "rank_1d": at1,
                "rank_2d": at2,
                "hours_to_top3": None if first is None else first / HOUR,
                "area_flagged_2d": flag,
            }
        )
    return rows


def top3(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def rate(sel: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(sel)
        if not n:
            return {"scored": 0}
        firsts = [r["hours_to_top3"] for r in sel if r["hours_to_top3"] is not None]
        in3 = [r["rank_2d"] is not None and r["rank_2d"] <= 3 for r in sel]
        return {
            "scored": n,
            "top3_at_2d": round(sum(in3) / n, 4),
            "top3_at_1d": round(sum(r["rank_1d"] is not None and r["rank_1d"] <= 3 for r in sel) / n, 4),
            "top3_within_2d": round(len(firsts) / n, 4),
            "median_hours_to_top3": statistics.median(firsts) if firsts else None,
            "area_flagged_within_2d": round(sum(r["area_flagged_2d"] for r in sel) / n, 4),
            "flagged_and_top3_at_2d": round(
                sum(r["area_flagged_2d"] and x for r, x in zip(sel, in3, strict=True)) / n, 4
            ),
        }

    loss = [r for r in rows if r["type"] in LOSS_THEFTS]
    return {
        "top3_hit_rate": rate(loss).get("top3_at_2d"),
        "top3": {"h1-h4": rate(loss), **{t: rate([r for r in rows if r["type"] == t]) for t in RANKED}},
        "top3_misses": [r for r in loss if not (r["rank_2d"] or 10**6) <= 3],
    }


def mapping_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Hit: (meter, archive area, real area) named at the check two days into the run; also
    per daily check: cases named right, cases whose meter is named, and wrong namings."""
    hits = injected = 0
    right, meter, wrong, examples = [], [], [], []
    for run in runs:
        truth = {tuple(t) for t in run["mapping_truth"]}
        meters = {m for m, _, _ in truth}
        injected += len(truth)
        t0 = _ts(run["t0"])
        for at, found in run["checks"]:
            named = set(found)
            right.append(len(truth & named))
            meter.append(len(meters & {m for m, _, _ in named}))
            wrong.append(len(named - truth))
            examples += [list(k) for k in sorted(named - truth)]
            if t0 + 2 * DAY <= at < t0 + 3 * DAY:
                hits += len(truth & named)
    checks = len(right)
    return {
        "mapping_error_hit_rate": round(hits / injected, 4) if injected else None,
        "mapping": {
            "injected": injected,
            "named_right_at_2d": hits,
            "daily_checks": checks,
            "named_right_share_all_checks": round(sum(right) / max(injected * checks / len(runs), 1), 4),
            "meter_named_share_all_checks": round(sum(meter) / max(injected * checks / len(runs), 1), 4),
            "wrong_named_per_check": round(sum(wrong) / max(checks, 1), 4),
            "wrong_examples": examples[:5],
        },
    }


def thresholds(honest: list[float], thief: dict[str, list[float]]) -> dict[str, Any]:
    """How a publish threshold on the score would trade: share of area-days (outside negative-loss
    areas) whose best honest meter exceeds it against share of thieves (a day after their
    start) that do."""
    loss = [x for t in LOSS_THEFTS for x in thief.get(t, [])]
    out: dict[str, Any] = {"area_days": len(honest), "thefts_h1_h4": len(loss)}
    for cut in (10, 30, 100, 300):
        out[f"score_gt_{cut}"] = {
            "area_days_with_honest_above": round(sum(x > cut for x in honest) / max(len(honest), 1), 4),
            "thefts_above": round(sum(x > cut for x in loss) / max(len(loss), 1), 4),
        }
    return out


def inspection_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over the cities of each day's figures; days line up (same start, same visits)."""

    def mean_curve(name: str) -> list[dict[str, Any]]:
        curves = [run["curves"][name] for run in runs]
        out = []
        for days in zip(*curves, strict=False):
            out.append(
                {
                    "day": days[0]["day"][-5:],
                    "verdicts_before": days[0]["verdicts_before"],
                    "precision_at_10": round(statistics.mean(d["precision_at_10"] for d in days), 4),
                    "precision_at_20": round(statistics.mean(d["precision_at_20"] for d in days), 4),
                    "visit_precision": round(statistics.mean(d["visit_precision"] for d in days), 4),
                }
            )
        return out

    learn, base = mean_curve("learning"), mean_curve("score_only")
    return {
        # The plain city's series (no headroom there; the figure of the issue is the scenario's).
        "plain_simulator_precision_at_10_by_verdict_count": {
            str(d["verdicts_before"]): d["precision_at_10"] for d in learn
        },
        "precision_at_10_score_only_by_day": [d["precision_at_10"] for d in base],
        "inspections": {
            "learning": learn,
            "score_only": base,
            "score_only_outside_negative": mean_curve("score_only_outside_negative"),
            "per_city": {str(run["spec"]["seed"]): run["curves"] for run in runs},
        },
    }


# ---- the innocent-drops scenario (precision@10 as verdicts arrive) ----------------------------

# A day's new cases per 10,000 customer meters: thefts (h1-h4 in turn) and honest customers
# whose consumption drops for an innocent reason (a holiday season; docs/suspects.md).
THEFTS_PER_DAY = 10.0
INNOCENT_PER_DAY = {"vacancy": 3.0, "holiday": 8.0, "renovation": 0.5}
STANDBY_SIGMA = 0.05  # interval-to-interval swing of a standby load (lognormal sigma)
SCENARIO_STREAM = 101  # its random streams: default_rng([seed, 101, 1]) thefts, ([seed, 101, 2])
# innocent drops, ([seed, 101, 3, day]) standby swings
SCENARIO_SEEDS = "21,22,23,24,25,26"
SCENARIO_DAYS, FIRST_DAY = 16.0, 7  # inspections by score from day 2, the two teams from day 7
TEAMS = ("with_learning", "score_only")
SCENARIO = (
    "innocent drops: a clean simulated city (simulator/synth.py, no injected anomaly) where, per "
    "10,000 customer meters and day, 10 thefts start (h1-h4 in turn on meters drawn at random, "
    "onsets uniform over the run; h1/h3/h4 until the end, h2 a zeroed run of 4-12 h) and 11.5 "
    "honest customers' consumption drops: 3 vacancies (residential, to the end, to a near-constant "
    "standby load of 2-8% of the meter's mean), 8 holidays (residential, 2-7 days, standby 5-15%) "
    "and 0.5 renovations (commercial, to the end, 10-40% of the load kept). The real consumption "
    "drops, so the area's supply (load + technical loss) drops with it and the loss does not "
    "rise; a theft lowers only what the meter registers. Each day the candidates are every area's "
    "top 5 suspects not inspected yet (outside negative-loss areas) and 10 are visited, a meter "
    "once. Days 2-6 the utility visits by score; from day 7 two teams go on from there over the "
    "same ranking: 'with_learning' with a new classifier (ranks by score until it has 10 "
    "verdicts; visit, score the visits, then learn their verdicts), 'score_only' by the score (the "
    "control). Blocks: '0-10' = the visits that bring verdicts 1-10 (day 7, none learned yet), "
    "'10-20' the next day's, ...; precision@10 = share of the block's visits that found a theft"
)


@dataclass(frozen=True)
class InnocentDrop:
    """An honest customer's drop: ``kind`` (vacancy, holiday, renovation) at customer meter
    ``meter`` over intervals ``first..last`` (numbered as simulator/anomalies.py). ``level``:
    the standby power as a share of the meter's mean (vacancy, holiday), or the share of its
    load kept (renovation)."""

    kind: str
    meter: int
    first: int
    last: int
    level: float


def add_thefts(sim: Sim, per_day: float = THEFTS_PER_DAY) -> None:
    """Append thefts (h1-h4 in turn, ``per_day`` per 10,000 meters) to the city's anomalies, on
    meters that carry none, with onsets uniform over the run so that new thefts keep arriving
    (the simulator draws a span's length first, so its long thefts start early): h1, h3, h4 run
    to the end (a thief goes on until found), h2 is a zeroed run of 4-12 hours; parameters as
    simulator/anomalies.py draws them. The simulator applies and labels them."""
    grid, spec = sim.grid, sim.spec
    rng = np.random.default_rng([spec.seed, SCENARIO_STREAM, 1])
    steps, interval_s = spec.steps, spec.interval_s
    used = {a.index for a in sim.anomalies if a.role == "customer"}
    free = np.array([m for m in range(grid.meters) if m not in used], dtype=np.int64)
    n = round(per_day * spec.days * grid.meters / 10_000)
    for i, m in enumerate(rng.choice(free, size=min(n, len(free)), replace=False)):
        kind = LOSS_THEFTS[i % len(LOSS_THEFTS)]
        first = int(rng.integers(1, steps + 1))
        last, params = steps, dict[str, Any](g_range=list(G_RANGE))
        if kind == "theft_h1":
            share = round(float(rng.uniform(0.2, 0.9)), 4)
            params = {"a": round(1 - share, 6), "share": share}
        elif kind == "theft_h2":
            last, params = min(steps, first + int(rng.integers(RUN_MIN, RUN_MAX + 1)) // interval_s - 1), {}
        a = int(grid.meter_area[m])
        sim.anomalies.append(Anomaly(kind, grid.meter_ids[m], "customer", int(m), a, first, last, params))


def plan_innocent(sim: Sim, per_day: dict[str, float] | None = None) -> list[InnocentDrop]:
    """Draw the innocent drops of a city (``per_day`` per 10,000 meters), on meters that carry
    no anomaly, onsets uniform over the run; deterministic for the city's seed."""
    per_day = INNOCENT_PER_DAY if per_day is None else per_day
    grid, spec = sim.grid, sim.spec
    rng = np.random.default_rng([spec.seed, SCENARIO_STREAM, 2])
    steps, per = spec.steps, DAY // spec.interval_s
    labelled = {a.index for a in sim.anomalies if a.role == "customer"}
    free = np.array([m for m in range(grid.meters) if m not in labelled], dtype=np.int64)
    residential = free[grid.customer_class[free] == RESIDENTIAL]
    pools = {"vacancy": residential, "holiday": residential}
    pools["renovation"] = free[grid.customer_class[free] == COMMERCIAL]
    taken: set[int] = set()
    out = []
    for kind in ("vacancy", "holiday", "renovation"):
        n = round(per_day.get(kind, 0.0) * spec.days * grid.meters / 10_000)
        left = np.array([m for m in pools[kind] if m not in taken], dtype=np.int64)
        for m in rng.choice(left, size=min(n, len(left)), replace=False):
            first = int(rng.integers(1, steps + 1))
            if kind == "holiday":
                last = min(steps, first + int(rng.integers(2 * per, 7 * per + 1)) - 1)
                level = rng.uniform(0.05, 0.15)
            elif kind == "vacancy":
                last, level = steps, rng.uniform(0.02, 0.08)
            else:
                last, level = steps, rng.uniform(0.1, 0.4)
            taken.add(int(m))
            out.append(InnocentDrop(kind, int(m), first, last, round(float(level), 4)))
    return out


class InnocentDrops:
    """Applies innocent drops to a chunk's registers: the dropping meters' registers and their
    areas' supply registers are recounted (0.01 resolution, the multipliers in the field) from
    the changed real consumption, and the supply is load + the area's technical loss (its
    no-load part and the part growing with load^2, as simulator/synth.py), so an honest drop
    lowers the supply too and does not show as loss. The meters carry no injected anomaly, so
    what they register is what flows."""

    def __init__(self, sim: Sim, drops: list[InnocentDrop]) -> None:
        self.sim, self.drops = sim, drops
        grid = sim.grid
        self.meters = np.array([d.meter for d in drops], dtype=np.int64)
        self.areas = np.unique(grid.meter_area[self.meters])
        self.acc = grid.register_start[self.meters].astype(float)  # true counts, register units
        self.s_acc = grid.supply_register_start[self.areas].astype(float)
        self.last, self.s_last = np.zeros(len(self.meters)), np.zeros(len(self.areas))  # last reads

    def apply(self, chunk: Chunk) -> None:
        if not self.drops:
            return
        grid, spec = self.sim.grid, self.sim.spec
        dt = spec.interval_s / 3600
        flow = chunk.flow_kwh
        steps = flow.shape[1]
        rng = np.random.default_rng([spec.seed, SCENARIO_STREAM, 3, chunk.c0 * spec.interval_s // DAY])
        new = flow[self.meters].copy()
        for k, d in enumerate(self.drops):
            lo, hi = max(d.first, chunk.c0 + 1) - chunk.c0 - 1, min(d.last, chunk.c0 + steps) - chunk.c0
            if lo >= hi:
                continue
            if d.kind == "renovation":
                new[k, lo:hi] = flow[d.meter, lo:hi] * d.level
            else:  # a standby load (fridge, router, stand-by): near-constant
                swing = np.exp(STANDBY_SIGMA * rng.standard_normal(hi - lo) - STANDBY_SIGMA**2 / 2)
                new[k, lo:hi] = grid.mean_kw[d.meter] * dt * d.level * swing
        path = self.acc[:, None] + np.cumsum(new / grid.multiplier[self.meters][:, None], axis=1)
        self.acc = path[:, -1].copy()
        chunk.registers[self.meters, 1:] = np.round(path, 2)
        delta = np.zeros((len(grid.area_ids), steps))  # real consumption no longer drawn
        np.add.at(delta, grid.meter_area[self.meters], flow[self.meters] - new)
        load = np.add.reduceat(flow, grid.first[:-1], axis=0)
        mean_kwh = grid.area_mean_kw() * dt
        supply = chunk.supply_kwh - delta
        supply -= (grid.load_loss_share / mean_kwh)[:, None] * (load**2 - (load - delta) ** 2)
        s_path = self.s_acc[:, None] + np.cumsum(
            supply[self.areas] / grid.supply_multiplier[self.areas][:, None], axis=1
        )
        self.s_acc = s_path[:, -1].copy()
        chunk.supply_registers[self.areas, 1:] = np.round(s_path, 2)
        if chunk.c0:  # column 0 is the previous chunk's last read, as recounted there
            chunk.registers[self.meters, 0] = self.last
            chunk.supply_registers[self.areas, 0] = self.s_last
        self.last = chunk.registers[self.meters, -1].copy()
        self.s_last = chunk.supply_registers[self.areas, -1].copy()
        chunk.flow_kwh[self.meters] = new
        chunk.supply_kwh[self.areas] = supply[self.areas]


def candidates(ranked: list[list[Suspect]], team: Inspectors, top: int = 5) -> list[Suspect]:
    """Every area's ``top`` suspects (areas ranked in full) that the team has not inspected."""
    return [x for r in ranked for x in [y for y in r if y.meter not in team.visited][:top]]


def run_scenario(
    spec: SimSpec, *, visits: int = 10, k: int = 10, first_day: int = FIRST_DAY, progress: bool = True
) -> dict[str, Any]:
    """The innocent-drops scenario in one city. From day 2 the utility inspects by the score (the
    warm-up: the city starts with no past, so for its first days the pool holds fewer drops that
    are still visible than it will, and thefts nobody looked for); from ``first_day`` two teams
    take over the same ranking and the same visited meters: one learning from its verdicts
    (a new classifier), one by the score alone (the control). Per team, precision@k of each
    block of ``k`` verdicts (visit order), the share of those visits at innocent drops, and the
    block's ceiling (findings in the pool the team had not visited, at most k)."""
    sim = Sim.build(spec)
    grid = sim.grid
    add_thefts(sim)
    drops = plan_innocent(sim)
    innocent = {grid.meter_ids[d.meter] for d in drops}
    n_areas = len(grid.area_ids)
    by_area = [np.flatnonzero(grid.archive_area == a) for a in range(n_areas)]
    ids = [[grid.meter_ids[i] for i in idx] for idx in by_area]
    groups = [grid.customer_class[idx] for idx in by_area]
    truth: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lab in sim.labels():
        if lab["role"] == "customer":
            truth[lab["entity"]].append(lab)
    ranker = SuspectRanker(interval_s=spec.interval_s)
    finder = MappingErrorFinder(ranker)
    never = 10**9  # a meter is inspected once: a theft found is stopped and back-billed
    warm_up = Inspectors(k=visits, learn=False, cooldown_s=never)
    teams = {name: Inspectors(k=visits, learn=name == "with_learning", cooldown_s=never) for name in TEAMS}
    log: dict[str, list[tuple[bool, bool, float]]] = {name: [] for name in teams}  # found, innocent, ceiling
    pool = []
    started = time.perf_counter()
    for chunk, energy, supply in interval_energies(sim, InnocentDrops(sim, drops)):
        for j in range(energy.shape[1]):
            end = int(chunk.times[j + 1])
            for a in range(n_areas):
                ranker.observe(
                    grid.area_ids[a],
                    end - spec.interval_s,
                    ids[a],
                    energy[by_area[a], j],
                    float(supply[a, j]),
                    groups[a],
                )
            if end % DAY or end < spec.t0 + 2 * DAY:
                continue
            negative = set(finder.negative_areas())
            ranked = [ranker.rank(area, top=None) for area in grid.area_ids if area not in negative]

            top5 = [x for r in ranked for x in r[:5]]
            pool.append(
                {
                    "day": datetime.fromtimestamp(end, UTC).date().isoformat(),
                    "candidates": len(top5),
                    "findings": sum(verdict(truth.get(x.meter, []), end) != Verdict.NORMAL for x in top5),
                    "innocent_drops": sum(x.meter in innocent for x in top5),
                }
            )
            if end < spec.t0 + first_day * DAY:
                warm_up.day(end, candidates(ranked, warm_up), truth)
                for team in teams.values():
                    team.visited = dict(warm_up.visited)
                continue
            for name, team in teams.items():
                listed = candidates(ranked, team)
                found = sum(verdict(truth.get(x.meter, []), end) != Verdict.NORMAL for x in listed)
                for s, v in team.day(end, listed, truth):
                    log[name].append((v != Verdict.NORMAL, s.meter in innocent, min(k, found) / k))
        if progress:
            print(
                f"innocent drops, seed {spec.seed}, day {chunk.c0 * spec.interval_s // DAY + 1}: "
                f"{time.perf_counter() - started:.0f} s",
                file=sys.stderr,
            )

    def per_block(col: int) -> dict[str, dict[str, float]]:
        return {
            name: {
                f"{i}-{i + k}": round(sum(float(x[col]) for x in rows[i : i + k]) / k, 4)
                for i in range(0, len(rows) - k + 1, k)
            }
            for name, rows in log.items()
        }

    return {
        "seed": spec.seed,
        "meters": grid.meters,
        "areas": n_areas,
        "days": spec.days,
        "first_day": first_day,
        "thefts": sum(a.type in LOSS_THEFTS for a in sim.anomalies),
        "innocent_drops": {kind: sum(d.kind == kind for d in drops) for kind in INNOCENT_PER_DAY},
        "seconds": round(time.perf_counter() - started, 1),
        "precision_at_10": per_block(0),
        "innocent_share_of_visits": per_block(1),
        "ceiling": per_block(2),
        "pool": pool,
    }


def scenario_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the cities, block by block (blocks every city reached)."""

    def mean(of: str, name: str) -> dict[str, float]:
        per = [run[of][name] for run in runs]
        return {b: round(statistics.mean(p[b] for p in per), 4) for b in per[0] if all(b in p for p in per)}

    def pool(of: str) -> list[float]:
        days = min(len(run["pool"]) for run in runs)
        return [
            round(statistics.mean(run["pool"][i][of] / run["pool"][i]["candidates"] for run in runs), 4)
            for i in range(days)
        ]

    return {
        "precision_at_10_by_verdict_count": {
            **{name: mean("precision_at_10", name) for name in TEAMS},
            "scenario": SCENARIO,
            "seeds": [run["seed"] for run in runs],
        },
        "innocent_drops": {
            "definition": (
                "blocks of verdicts in visit order: '0-10' = the visits that bring verdicts 1-10, "
                "ranked with none learned (the teams' first day, day 7), '10-20' the next day's; "
                "precision@10 = share of a block's 10 visits that found something (theft, meter fault "
                "or wiring), mean over the cities; ceiling = the best a team could have found that day "
                "(findings among its candidates, at most 10, over 10); the pool's shares by day are of every "
                "area's top 5, visited or not, from day 2"
            ),
            "thefts_per_10000_meters_a_day": THEFTS_PER_DAY,
            "innocent_drops_per_10000_meters_a_day": INNOCENT_PER_DAY,
            "innocent_share_of_visits": {name: mean("innocent_share_of_visits", name) for name in TEAMS},
            "ceiling": {name: mean("ceiling", name) for name in TEAMS},
            "pool_days": [d["day"] for d in runs[0]["pool"]],
            "findings_share_of_candidates_by_day": pool("findings"),
            "innocent_share_of_candidates_by_day": pool("innocent_drops"),
            "seconds": round(sum(run["seconds"] for run in runs), 1),
            "per_city": runs,
        },
    }


def figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    thief: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for k, v in run["thief_1d"].items():
            thief[k] += v
    return {
        "cities": [run["spec"] for run in runs],
        "seconds": round(sum(run["seconds"] for run in runs), 1),
        **top3([r for run in runs for r in run["rows"]]),
        **mapping_figures(runs),
        "publish_threshold": thresholds([x for run in runs for x in run["honest_top"]], thief),
        **inspection_figures(runs),
        "cost": {k: statistics.mean(run["cost"][k] for run in runs) for k in runs[0]["cost"]},
    }


def summary(out: dict[str, Any]) -> str:
    t = out["top3"]["h1-h4"]
    m = out["mapping"]
    th = out["publish_threshold"]
    c = out["cities"]
    lines = [
        f"{len(c)} cities of {c[0]['meters']} meters x {c[0]['days']} days (seeds "
        f"{', '.join(str(x['seed']) for x in c)}; {sum(x['areas'] for x in c)} areas): {out['seconds']} s",
        f"top 3 (h1-h4, {t['scored']} thefts): at 2 days {t['top3_at_2d']}, at 1 day {t['top3_at_1d']}, "
        f"any hourly ranking within 2 days {t['top3_within_2d']} (median {t['median_hours_to_top3']} h); "
        f"area flagged by the area detector within 2 days {t['area_flagged_within_2d']}",
    ]
    for k in RANKED:
        r = out["top3"][k]
        if r["scored"]:
            lines.append(
                f"  {k}: {r['scored']} scored, top 3 at 2 days {r['top3_at_2d']}, at 1 day {r['top3_at_1d']}"
            )
    lines.append(
        f"mapping errors ({m['injected']}): named right at 2 days {out['mapping_error_hit_rate']}; "
        f"over all daily checks: named right {m['named_right_share_all_checks']}, "
        f"meter named {m['meter_named_share_all_checks']}, wrong per check {m['wrong_named_per_check']}"
    )
    lines.append(
        "publish threshold (area-days with an honest meter above / thefts above, 1 day in): "
        + ", ".join(
            f"{k[9:]}: {v['area_days_with_honest_above']} / {v['thefts_above']}"
            for k, v in th.items()
            if k.startswith("score_gt")
        )
    )
    for name, curve in out["inspections"].items():
        if name == "per_city":
            continue
        lines.append(name)
        lines.append(" " * 12 + "verdicts " + " ".join(f"{d['verdicts_before']:>4}" for d in curve))
        lines.append(" " * 12 + "p@10     " + " ".join(f"{d['precision_at_10']:>4.2f}" for d in curve))
        lines.append(" " * 12 + "p@20     " + " ".join(f"{d['precision_at_20']:>4.2f}" for d in curve))
        lines.append(" " * 12 + "visits   " + " ".join(f"{d['visit_precision']:>4.2f}" for d in curve))
    lines.append(f"cost: {json.dumps(out['cost'])}")
    sc, inn = out["precision_at_10_by_verdict_count"], out["innocent_drops"]
    lines.append(
        f"innocent drops ({len(sc['seeds'])} cities, seeds {', '.join(map(str, sc['seeds']))}; "
        f"{inn['seconds']} s): precision@10 by verdicts"
    )
    lines.append(" " * 12 + "verdicts  " + " ".join(f"{b:>6}" for b in sc["with_learning"]))
    for name in TEAMS:
        lines.append(f"  {name:<20}" + " ".join(f"{x:>6.2f}" for x in sc[name].values()))
        lines.append(
            "    innocent visits   "
            + " ".join(f"{x:>6.2f}" for x in inn["innocent_share_of_visits"][name].values())
        )
        lines.append("    ceiling           " + " ".join(f"{x:>6.2f}" for x in inn["ceiling"][name].values()))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meters", type=int, default=10_000)
    p.add_argument("--days", type=float, default=10.0)
    p.add_argument("--seeds", default="21,22,23", help="one city per seed")
    p.add_argument(
        "--scenario-seeds", default=SCENARIO_SEEDS, help="one city per seed for the innocent-drops scenario"
    )
    p.add_argument("--scenario-days", type=float, default=SCENARIO_DAYS)
    p.add_argument("--visits", type=int, default=10, help="inspections a day")
    p.add_argument("--out", type=Path, default=RESULTS / "suspects.json")
    args = p.parse_args()
    started = time.perf_counter()
    runs = []
    for seed in (int(x) for x in args.seeds.split(",")):
        n_areas = len(Sim.build(SimSpec(seed=seed, meters=args.meters, days=args.days)).grid.area_ids)
        spec = SimSpec(
            seed=seed, meters=args.meters, days=args.days, anomalies=AnomalySpec.only(counts_for(n_areas))
        )
        runs.append(run(spec, visits=args.visits))
    out = figures(runs)
    scenario = []
    for seed in (int(x) for x in args.scenario_seeds.split(",")):
        spec = SimSpec(seed=seed, meters=args.meters, days=args.scenario_days, anomalies=AnomalySpec.only({}))
        scenario.append(run_scenario(spec, visits=args.visits))
    out.update(scenario_figures(scenario))
    out["total_seconds"] = round(time.perf_counter() - started, 1)
    out["bars"] = BARS
    out["command"] = " ".join(["python benchmarks/evaluate_suspects.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(summary(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
