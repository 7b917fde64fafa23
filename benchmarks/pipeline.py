"""The worker's per-reading cost without Kafka or Faust: readings per CPU-second of the pure
step alone and of the offline pipeline (step + detectors + suspects), before vs after a change.

    python benchmarks/pipeline.py                          # 20 areas x 100 meters x 2.5 days
    python benchmarks/pipeline.py --baseline /tmp/base     # and a baseline tree, same run
    python benchmarks/pipeline.py --singles --days 0.5
    python benchmarks/pipeline.py --profile 15             # and the top functions (cProfile)

Measured (best of ``--repeat``, process CPU time, the box is shared and noisy):
- ``pipeline``: :func:`streams.offline.run_records` (what ``gridwatch evaluate`` runs): decode,
  snap, line-loss windows, window close, detectors and suspects.
- ``step``: :class:`streams.step.BatchStep` without detectors, 1000 records a chunk.
- ``engine``: the same work as ``step`` written per record against
  :class:`streams.engine.LineLossEngine` (the path before the step; present in every tree, so
  it is the yardstick between trees and runs).
``--baseline DIR`` runs the same measurements in a subprocess importing DIR (e.g. ``git archive
main | tar -x -C DIR``) on the same city, and prints the ratios; ``--out`` writes the figures.
What the throughput benchmark adds on top of this is Faust, Kafka and the changelog.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

TREE = Path(os.environ.get("GRIDWATCH_TREE") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(TREE))

from models.detection import Detection  # noqa: E402
from models.windows import snap  # noqa: E402
from simulator.city import City, CitySpec, build, messages  # noqa: E402
from streams import contracts  # noqa: E402
from streams.contracts import InvalidRecord, Reading  # noqa: E402
from streams.engine import REROUTED, LineLossEngine, Point  # noqa: E402
from streams.offline import run_records  # noqa: E402
from topology import Role  # noqa: E402

START = datetime(2026, 1, 5, tzinfo=UTC)
Records = list[tuple[str, bytes | None, bytes]]


def engine_per_record(records: Records, city: City) -> int:
    """Decode, snap and ingest record by record, forwards applied at once, no detectors."""
    engine = LineLossEngine(
        city.topology,
        {},
        interval_s=900,
        window_s=900,
        allowed_lateness_s=7200,
        close_delay_s=900,
        min_completeness=0.98,
        sources=("readings", "supply"),
        write_behind=True,
    )
    readings = 0

    def ingest(area: str, ts: int, points: list[Point], role: Role, source: str) -> None:
        out = engine.ingest(0, area, ts, points, role, source=source)
        for fwd in out.forwards:
            moved = [
                Point(p.meter_id, p.register_kwh, p.energy_kwh, (*p.flags, REROUTED)) for p in fwd.points
            ]
            ingest(fwd.area_id, fwd.ts, moved, role, source)

    for n, (kind, _key, value) in enumerate(records):
        try:
            msg = contracts.decode_readings(value)
        except InvalidRecord:
            continue
        ts = snap(msg.ts.timestamp(), interval_s=900, tolerance_s=120)
        if ts is None:
            continue
        if isinstance(msg, Reading):
            points = [Point(msg.meter_id, msg.register_kwh, msg.energy_kwh, tuple(msg.flags))]
        else:
            points = [Point(v.meter_id, v.register_kwh, v.energy_kwh, tuple(v.flags)) for v in msg.values]
        readings += len(points)
        ingest(msg.area_id, ts, points, Role.SUPPLY if kind == "supply" else Role.CUSTOMER, kind)
        if n % 1000 == 999:
            engine.persist(lambda *_: None)
    for source in ("readings", "supply"):
        engine.mark_idle(0, source)
    engine.flush_idle(0)
    return readings


def step_alone(records: Records, city: City) -> int:
    from streams.step import BatchStep, Record  # not in trees before the step

    step = BatchStep(
        city.topology,
        None,
        sources=("readings", "supply"),
        supply_sources=frozenset({"supply"}),
        forward_inline=True,
        write_behind=True,
    )
    readings = 0
    for i in range(0, len(records), 1000):
        out = step.step([Record(kind, key, value) for kind, key, value in records[i : i + 1000]])
        readings += out.counts["readings"]
        step.engine.persist(lambda *_: None)
    step.close_idle(0, ("readings", "supply"))
    return readings


def pipeline(records: Records, city: City) -> int:
    return run_records(records, city.topology, Detection(suspects=True)).readings


CASES: dict[str, Callable[[Records, City], int]] = {
    "engine": engine_per_record,
    "step": step_alone,
    "pipeline": pipeline,
}


def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    city = build(CitySpec(areas=args.areas, meters_per_area=args.meters, days=args.days, start=START, seed=5))
    records = [
        (m.kind, m.key.encode(), orjson.dumps(m.value)) for m in messages(city, batches=not args.singles)
    ]
    gc.collect()
    gc.freeze()  # as the worker does once the archive is loaded
    figures: dict[str, dict[str, float]] = {}
    for name, case in CASES.items():
        try:
            import streams.step  # noqa: F401
        except ImportError:
            if name == "step":
                continue
        best = None
        for _ in range(args.repeat):
            cpu, wall = time.process_time(), time.perf_counter()
            readings = case(records, city)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            best = min(best or (cpu, wall), (cpu, wall))
        assert best is not None
        figures[name] = {
            "readings": readings,
            "records": len(records),
            "cpu_s": round(best[0], 3),
            "wall_s": round(best[1], 3),
            "us_per_reading": round(best[0] / readings * 1e6, 3),
            "readings_per_cpu_s": round(readings / best[0]),
        }
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--areas", type=int, default=20)
    p.add_argument("--meters", type=int, default=100, help="customer meters per area")
    p.add_argument("--days", type=float, default=2.5)
    p.add_argument("--singles", action="store_true", help="one reading per record, not batches")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="a tree to measure the same way, for ratios")
    p.add_argument("--baseline-name", help="what the baseline tree is (e.g. its commit), for the record")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a baseline's subprocess
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N functions")
    args = p.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args)))
        return {}

    baseline: dict[str, dict[str, float]] = {}
    if args.baseline:
        if not (args.baseline / "streams" / "engine.py").exists():
            sys.exit(f"{args.baseline}: not a gridwatch tree (no streams/engine.py)")
        cmd = [sys.executable, __file__, "--json", *(argv if argv is not None else sys.argv[1:])]
        env = {**os.environ, "GRIDWATCH_TREE": str(args.baseline.resolve()), "PYTHONPATH": str(args.baseline)}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"baseline run failed:\n{done.stderr}")
        baseline = json.loads(done.stdout.strip().splitlines()[-1])
    figures = measure(args)
    kind = "single readings" if args.singles else "batches"
    print(
        f"{args.areas} areas x {args.meters} meters x {args.days:g} days, {kind}; "
        f"best of {args.repeat}, CPU time"
    )
    for name, f in figures.items():
        line = (
            f"  {name:9} {f['us_per_reading']:7.2f} us/reading  {f['readings_per_cpu_s']:>10,} readings/CPU-s"
        )
        if name in baseline:
            before = baseline[name]["us_per_reading"]
            line += f"  (baseline {before:.2f} us: {before / f['us_per_reading']:.2f}x)"
        print(line)
    if "step" in figures and "engine" in figures:
        ratio = figures["engine"]["us_per_reading"] / figures["step"]["us_per_reading"]
        print(f"  step vs per-record engine, same process: {ratio:.2f}x")
    report = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python benchmarks/pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "city": {
            "areas": args.areas,
            "meters_per_area": args.meters,
            "days": args.days,
            "batches": not args.singles,
        },
        "method": "best of --repeat, process CPU time; baseline measured in a subprocess in the same run",
        "figures": figures,
        "baseline_tree": args.baseline_name or (str(args.baseline) if args.baseline else None),
        "baseline": baseline,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.profile:
        city = build(
            CitySpec(areas=args.areas, meters_per_area=args.meters, days=args.days, start=START, seed=5)
        )
        records = [(m.kind, m.key.encode(), orjson.dumps(m.value)) for m in messages(city)]
        prof = cProfile.Profile()
        prof.runcall(pipeline, records, city)
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    return report


if __name__ == "__main__":
    main()
