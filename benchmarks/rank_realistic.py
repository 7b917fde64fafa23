"""The suspect ranking alone on the realistic cities of benchmarks/evaluate_realistic.py, in
seconds: for trying a change to the ranker on many seeds before the full benchmark.

    python benchmarks/rank_realistic.py --seeds 11,12,13,14 --case-seeds 101 --jobs 2
    python benchmarks/rank_realistic.py --seeds 11,12,13,14 --out /tmp/a.json   # per area, to pair
    python benchmarks/rank_realistic.py --seeds 11,12,13,14 --pair /tmp/a.json  # against a run saved

Same cities (``mixed_spec`` / ``case_spec``), same interval energies (register deltas x the
archive multiplier; gaps and rollbacks missing) and same figures (``area_figures``) as the full
benchmark, but each area's intervals go to :class:`models.suspects.SuspectRanker` directly, not
through :class:`models.detection.Detection` with its alert detectors: the ranker's state and its
ranking at the check days are the same (the worker's hourly ``rank`` calls only fill a cache),
and 20 mixed cities of 5 areas take about 15 s on two cores instead of an hour. No alert figures.

Printed per kind and check day: top-10 recall (per area, thieves in the top 10 / min(10,
thieves)), mean thieves in the top 5, AUC and each type's top-10 hit rate; then, at the last
check, the mixed thieves' top-10 hit rate by onset day, and of the thieves active at both of the
last two checks how many were in the top 10 at each. ``--pair`` prints the paired difference of
the last check's top-10 recall per mixed area against a run saved with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate_realistic import DAY, Job, area_figures, case_spec, mixed_spec, run_cities  # noqa: E402

from evaluation.evaluate import observed_chunks  # noqa: E402
from models.suspects import SuspectRanker  # noqa: E402
from simulator.synth import Sim  # noqa: E402


def run_city(kind: str, seed: int, areas: int, days: float, checks: tuple[int, ...]) -> dict[str, Any]:
    """One city through the ranker; per check day and theft area its figures and every active
    thief's (type, onset day, rank)."""
    spec = (case_spec if kind == "case" else mixed_spec)(seed, areas, days)
    sim = Sim.build(spec)
    grid = sim.grid
    ranker = SuspectRanker(interval_s=spec.interval_s)
    by_area = [np.flatnonzero(grid.archive_area == a) for a in range(len(grid.area_ids))]
    names = [[grid.meter_ids[int(i)] for i in idx] for idx in by_area]
    groups = [grid.archive_class[idx].astype(np.int64) for idx in by_area]
    planned = {a.entity: a for a in sim.anomalies}
    theft_areas = sorted({grid.area_ids[a.area] for a in sim.anomalies})
    per_day = DAY // spec.interval_s
    ranked: dict[str, dict[str, Any]] = {}
    for chunk, energy, supply, _back in observed_chunks(sim):
        steps = energy.shape[1]
        for j in range(steps):
            start = int(chunk.times[j + 1]) - spec.interval_s
            for a, idx in enumerate(by_area):
                ranker.observe(
                    grid.area_ids[a], start, names[a], energy[idx, j], float(supply[a, j]), groups[a]
                )
        done = chunk.c0 + steps
        if done % per_day or done // per_day not in checks:
            continue
        end = spec.t0 + done * spec.interval_s
        out: dict[str, Any] = {}
        for area in theft_areas:
            meters = names[grid.area_ids.index(area)]
            onset = {m: spec.t0 + (planned[m].first - 1) * spec.interval_s for m in meters if m in planned}
            active = {m: planned[m].type for m in onset if onset[m] <= end - DAY}
            order = [s.meter for s in ranker.rank(area, top=None)]
            fig = area_figures(order, active, {m for m in meters if m not in planned})
            pos = {m: i + 1 for i, m in enumerate(order)}
            fig["onsets"] = {m: [active[m], (onset[m] - spec.t0) / DAY, pos.get(m)] for m in sorted(active)}
            out[area] = fig
        ranked[str(done // per_day)] = out
    return {"kind": kind, "seed": seed, "ranked": ranked}


def _run(job: Job) -> dict[str, Any]:
    return run_city(*job)


def recalls(runs: list[dict[str, Any]], kind: str, day: str) -> dict[str, float]:
    """Top-10 recall per theft area with thieves ("seed/area"), at ``day``.

    >>> recalls([{"kind": "mixed", "seed": 1, "ranked": {"30": {"A": {"top10": 2, "n": 4}}}}], "mixed", "30")
    {'1/A': 0.5}
    """
    return {
        f"{r['seed']}/{a}": f["top10"] / min(10, f["n"])
        for r in runs
        if r["kind"] == kind
        for a, f in r["ranked"].get(day, {}).items()
        if f["n"]
    }


def _hit(ranks: list[int | None], k: int = 10) -> float:
    return sum(r is not None and r <= k for r in ranks) / len(ranks)


def report(runs: list[dict[str, Any]], checks: tuple[int, ...]) -> list[str]:
    lines = []
    for kind in ("mixed", "case"):
        group = [r for r in runs if r["kind"] == kind]
        if not group:
            continue
        for d in map(str, checks):
            figs = [f for r in group for f in r["ranked"].get(d, {}).values()]
            per_type: dict[str, list[int | None]] = defaultdict(list)
            for f in figs:
                for t, rank in f["thieves"]:
                    per_type[t.removeprefix("theft_")].append(rank)
            rec = list(recalls(group, kind, d).values())
            aucs = [f["auc"] for f in figs if f["auc"] is not None]
            top5 = [f["top5"] for f in figs if f["n"]]
            types = " ".join(f"{t} {_hit(v):.2f} ({len(v)})" for t, v in sorted(per_type.items()))
            lines.append(
                f"{kind} day {d}: top-10 recall {statistics.mean(rec) if rec else float('nan'):.4f} "
                f"({len(rec)} areas), top 5 {statistics.mean(top5) if top5 else float('nan'):.3f}, "
                f"AUC {statistics.mean(aucs) if aucs else float('nan'):.4f} | top-10 hit: {types}"
            )
    mixed = [r for r in runs if r["kind"] == "mixed"]
    last = str(checks[-1])
    by_onset: dict[int, list[int | None]] = defaultdict(list)
    for r in mixed:
        for f in r["ranked"].get(last, {}).values():
            for _, onset, rank in f["onsets"].values():
                by_onset[int(onset // 3) * 3].append(rank)
    if by_onset:
        lines.append(
            f"mixed day {last}, top-10 hit by onset day: "
            + " ".join(f"{b}-{b + 3} {_hit(v):.2f} ({len(v)})" for b, v in sorted(by_onset.items()))
        )
    if len(checks) > 1 and mixed:
        prev = str(checks[-2])
        moves = np.zeros((2, 2), dtype=np.int64)
        for r in mixed:
            for area, f in r["ranked"].get(prev, {}).items():
                now = r["ranked"][last][area]["onsets"]
                for m, (_, _, rank) in f["onsets"].items():
                    a, b = rank is not None and rank <= 10, now[m][2] is not None and now[m][2] <= 10
                    moves[int(a), int(b)] += 1
        lines.append(
            f"mixed thieves active at day {prev}, in the top 10 at day {prev} -> {last}: "
            f"kept {moves[1, 1]}, lost {moves[1, 0]}, gained {moves[0, 1]}, never {moves[0, 0]}"
        )
    return lines


def paired(now: dict[str, float], before: dict[str, float]) -> str:
    """The paired difference of per-area recalls over the areas both have.

    >>> paired({"a": 1.0, "b": 0.5, "c": 0.5}, {"a": 0.5, "b": 0.5, "c": 0.0})
    'paired over 3 areas: 0.3333 -> 0.6667, difference +0.3333 (se 0.1667), 2 better, 0 worse'
    """
    keys = sorted(set(now) & set(before))
    d = np.array([now[k] - before[k] for k in keys])
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return (
        f"paired over {len(keys)} areas: {np.mean([before[k] for k in keys]):.4f} -> "
        f"{np.mean([now[k] for k in keys]):.4f}, difference {d.mean():+.4f} (se {se:.4f}), "
        f"{int((d > 0).sum())} better, {int((d < 0).sum())} worse"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="11,12,13,14", help="one mixed city per seed")
    p.add_argument("--areas", type=int, default=5, help="areas per mixed city")
    p.add_argument("--case-seeds", default="", help="one case city per seed")
    p.add_argument("--case-areas", type=int, default=8)
    p.add_argument("--days", type=float, default=30.0)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", type=Path, help="write the runs (per area and thief) as JSON")
    p.add_argument("--pair", type=Path, help="a run saved with --out to pair the mixed recalls with")
    args = p.parse_args(argv)
    started = time.perf_counter()
    checks, runs = run_cities(_run, args)
    lines = report(runs, checks)
    out = {"checks": list(checks), "runs": runs}
    if args.pair is not None:
        saved = json.loads(args.pair.read_text())
        last = str(checks[-1])
        lines.append(paired(recalls(runs, "mixed", last), recalls(saved["runs"], "mixed", last)))
    print("\n".join(lines) + f"\n({time.perf_counter() - started:.0f} s)")
    if args.out is not None:
        args.out.write_text(json.dumps(out) + "\n")
    return out


if __name__ == "__main__":
    main()
