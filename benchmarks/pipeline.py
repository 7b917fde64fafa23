"""The worker's per-reading cost without Kafka or Faust: where a reading's CPU goes.

    python benchmarks/pipeline.py                      # 20 areas x 100 meters x 2.5 days, batches
    python benchmarks/pipeline.py --singles --days 0.5
    python benchmarks/pipeline.py --profile 15         # and the top functions (cProfile)

Runs a simulated city through :func:`streams.offline.run_records`, the worker's path over
records (decode, snap, engine, window close, detectors and suspects), best of ``--repeat``
runs, and prints microseconds per reading. What the throughput benchmark adds on top of this
is Faust, Kafka and the changelog; the difference between the two is the I/O layer's share.
Use it before and after a change to the pure code: it is quick and much less noisy than a run
against the broker.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.detection import Detection  # noqa: E402
from simulator.city import CitySpec, aligned_start, build, messages  # noqa: E402
from streams.offline import run_records  # noqa: E402


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--areas", type=int, default=20)
    p.add_argument("--meters", type=int, default=100, help="customer meters per area")
    p.add_argument("--days", type=float, default=2.5)
    p.add_argument("--singles", action="store_true", help="one reading per record, not batches")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N functions")
    args = p.parse_args(argv)

    start = aligned_start(datetime.now(UTC), args.days, 900)
    city = build(CitySpec(areas=args.areas, meters_per_area=args.meters, days=args.days, start=start, seed=5))
    records = [
        (m.kind, m.key.encode(), orjson.dumps(m.value)) for m in messages(city, batches=not args.singles)
    ]

    gc.collect()
    gc.freeze()  # as the worker does once the archive is loaded

    def once() -> tuple[float, int]:
        t = time.perf_counter()
        run = run_records(records, city.topology, Detection(suspects=True))
        return time.perf_counter() - t, run.readings

    best, readings = min(once() for _ in range(args.repeat))
    us = best / readings * 1e6
    kind = "single readings" if args.singles else "batches"
    print(
        f"{args.areas} areas x {args.meters} meters x {args.days:g} days, {kind}: {len(records):,} records, "
        f"{readings:,} readings; best of {args.repeat}: {best:.2f} s, {us:.2f} us per reading "
        f"({readings / best:,.0f} readings/s on one core)"
    )
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(once)
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    return us


if __name__ == "__main__":
    main()
