"""Bytes of detector state per meter at 1 M meters, measured, and the cost of a step.

    python benchmarks/detector_state.py               # 1,000,000 meters in 5,000 areas
    python benchmarks/detector_state.py --meters 200000

Feeds every area one interval (so every meter has state), then reports: the numpy arrays of the
meter detector plus the last-register array, and those of the volume-price-fee watch (large
consumption, tariff class; all snapshotted per area), the dense index
(meter id -> int, a Python dict and list of the id strings), measured with tracemalloc, and the
time of one area-interval step. Then the suspect ranker's state (30 days of hourly bins per
meter, models/suspects.py): its stated bytes per meter, the bytes its arrays allocate per meter
and per area, and the time to rank one area of ``--per-area`` meters over a full horizon.
Writes benchmarks/results/detector_state.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.detection import AreaInterval, Detection  # noqa: E402
from models.suspects import SuspectRanker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meters", type=int, default=1_000_000)
    p.add_argument("--per-area", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    n, per = args.meters, args.per_area
    areas = n // per
    ids = [f"M{i:08d}" for i in range(areas * per)]
    gc.collect()
    tracemalloc.start()
    det = Detection(capacity=len(ids))
    base = tracemalloc.get_traced_memory()[0]
    idx = det.index(ids)
    after_index = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()  # it slows every allocation down: not on while steps are timed
    rng = np.random.default_rng(1)
    steps = []
    for ts in (900, 1800):  # the first interval creates each area's state; time the second
        for a in range(areas):
            sel = idx[a * per : (a + 1) * per]
            e = rng.gamma(2.0, 0.25, per)
            iv = AreaInterval(
                f"A{a}",
                ts,
                sel,
                e,
                np.zeros(per, bool),
                np.ones(per, bool),
                np.zeros(per, np.int64),
                supply_kwh=float(e.sum() * 1.04),
                lower=-0.01,
                upper=0.07,
            )
            t = time.perf_counter()
            det.step([iv])
            if ts == 1800:
                steps.append(time.perf_counter() - t)
    anomaly = sum(v.nbytes for v in det.meter_detector._a.values()) + det.last_register.nbytes
    watch = sum(v.nbytes for d in (det.large_consumption, det.tariff_class) for v in d._a.values())
    arrays = anomaly + watch
    meters = det.meters
    res = {
        "meters": meters,
        "areas": areas,
        "detector_state_bytes_per_meter": det.state_bytes_per_meter(),
        # the anomaly detectors (bar: 64 B) and the volume-price-fee watch (docs/detection.md)
        "anomaly_detectors_bytes_per_meter": det.anomaly_state_bytes_per_meter(),
        "watch_bytes_per_meter": det.watch_state_bytes_per_meter(),
        "detector_arrays_bytes_per_meter_allocated": round(arrays / meters, 1),
        "watch_arrays_bytes_per_meter_allocated": round(watch / meters, 1),
        "index_bytes_per_meter": round((after_index - base) / meters, 1),
        "area_interval_step_ms_median": round(1000 * float(np.median(steps)), 3),
        "meter_intervals_per_s": round(per / float(np.median(steps))),
    }
    res.update(ranker_state(per, areas=20))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detector_state.json").write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k:45} {v:>12,}")
    return res


def ranker_state(per: int, *, areas: int) -> dict[str, float]:
    """The suspect ranker's bytes per meter and per area (allocated arrays, ``areas`` areas of
    ``per`` meters), and the cost of ranking one area over a full 30-day horizon."""
    ranker = SuspectRanker(interval_s=3600)
    rng = np.random.default_rng(2)
    ids = [f"M{i:05d}" for i in range(per)]
    for a in range(areas):  # the rings are allocated whole when an area is first seen
        e = rng.gamma(2.0, 0.25, per)
        ranker.observe(f"A{a}", 0, ids, e, float(e.sum() * 1.04))
    meter_bytes = area_bytes = 0
    for st in ranker.areas.values():
        for v in vars(st).values():
            if isinstance(v, np.ndarray):
                if v.ndim == 2 or (v.ndim == 1 and len(v) == per):
                    meter_bytes += v.nbytes
                else:
                    area_bytes += v.nbytes
    mean = rng.lognormal(-1.0, 0.7, per)
    for h in range(1, ranker.history):  # one area over the full horizon, then rank it
        e = mean * rng.lognormal(0, 0.4, per)
        ranker.observe("A0", h * 3600, ids, e, float(e.sum() * 1.04))
    t = time.perf_counter()
    ranker.rank("A0", top=10)
    full = time.perf_counter() - t
    ranker.observe("A0", ranker.history * 3600, ids, mean, float(mean.sum() * 1.04))
    t = time.perf_counter()
    ranker.rank("A0", top=10)  # the joint fit cached (refitted every ``refit`` bins)
    cached = time.perf_counter() - t
    return {
        "ranker_horizon_days": ranker.history * ranker.bin_s / 86400,
        "ranker_state_bytes_per_meter": ranker.state_bytes_per_meter(),
        "ranker_arrays_bytes_per_meter_allocated": round(meter_bytes / (areas * per), 1),
        "ranker_bytes_per_area": round(area_bytes / areas),
        "ranker_rank_ms_joint_fit": round(1000 * full, 1),
        "ranker_rank_ms_cached_fit": round(1000 * cached, 1),
    }


if __name__ == "__main__":
    main()
