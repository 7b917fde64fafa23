"""Score the suspect ranking, the mapping-error finder and the inspection feedback loop on a
simulated city (no Kafka) and write benchmarks/results/suspects.json.

    python benchmarks/evaluate_suspects.py          # 3 cities of 10,000 meters x 10 days, seeds 21-23
    python benchmarks/evaluate_suspects.py --seeds 7 --meters 5000

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
  explain a mirror image), the policy docs/suspects.md recommends.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.area_anomaly import AreaAnomalyDetector  # noqa: E402
from models.inspections import SuspectClassifier, Verdict, precision_at_k  # noqa: E402
from models.mapping import MappingErrorFinder  # noqa: E402
from models.suspects import Suspect, SuspectRanker  # noqa: E402
from simulator.anomalies import THEFTS, AnomalySpec  # noqa: E402
from simulator.synth import Sim, SimSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DAY, HOUR = 86400, 3600
RANKED = (*THEFTS, "stopped")  # meter labels whose top-3 figure is reported
LOSS_THEFTS = ("theft_h1", "theft_h2", "theft_h3", "theft_h4")  # thefts that move the loss
FAULTS = ("stopped", "spike", "flat_line", "rollback", "meter_swap")
WIRING = ("wrong_mapping", "wrong_multiplier")
BARS = {
    "top3_hit_rate (h1-h4, 2 days after onset)": ">= 0.90",
    "mapping_error_hit_rate": ">= 0.90",
    "precision_at_10": "rises as verdicts arrive",
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

    def day(self, at: int, candidates: list[Suspect], truth: dict[str, list[dict[str, Any]]]) -> None:
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
    outages = [x for x in sim.anomalies if x.type == "concentrator_outage"]
    last_known: np.ndarray | None = None
    started = time.perf_counter()
    for chunk in sim.chunks():
        reg, missing = chunk.registers, chunk.missing
        if last_known is None:
            last_known = reg[:, 0].copy()
        energy = np.diff(reg, axis=1) * grid.archive_multiplier[:, None]
        steps = energy.shape[1]
        back = np.zeros(energy.shape, dtype=bool)
        for j in range(steps):  # as streams/evaluate.py: below the last register received
            ok = ~missing[:, j + 1]
            back[:, j] = ok & (reg[:, j + 1] < last_known)
            last_known = np.where(ok, reg[:, j + 1], last_known)
        energy[missing[:, 1:] | missing[:, :-1] | back] = np.nan
        supply = np.diff(chunk.supply_registers, axis=1) * grid.supply_archive_multiplier[:, None]
        for o in outages:
            if (c := o.cols(chunk.c0, steps)) is not None:
                energy[grid.meter_area == o.index, c[0] : c[1]] = np.nan
                supply[o.index, c[0] : c[1]] = np.nan
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
        "precision_at_10_by_verdict_count": {str(d["verdicts_before"]): d["precision_at_10"] for d in learn},
        "precision_at_10_score_only_by_day": [d["precision_at_10"] for d in base],
        "inspections": {
            "learning": learn,
            "score_only": base,
            "score_only_outside_negative": mean_curve("score_only_outside_negative"),
            "per_city": {str(run["spec"]["seed"]): run["curves"] for run in runs},
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
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meters", type=int, default=10_000)
    p.add_argument("--days", type=float, default=10.0)
    p.add_argument("--seeds", default="21,22,23", help="one city per seed")
    p.add_argument("--visits", type=int, default=10, help="inspections a day")
    p.add_argument("--out", type=Path, default=RESULTS / "suspects.json")
    args = p.parse_args()
    runs = []
    for seed in (int(x) for x in args.seeds.split(",")):
        n_areas = len(Sim.build(SimSpec(seed=seed, meters=args.meters, days=args.days)).grid.area_ids)
        spec = SimSpec(
            seed=seed, meters=args.meters, days=args.days, anomalies=AnomalySpec.only(counts_for(n_areas))
        )
        runs.append(run(spec, visits=args.visits))
    out = figures(runs)
    out["bars"] = BARS
    out["command"] = " ".join(["python benchmarks/evaluate_suspects.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(summary(out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
