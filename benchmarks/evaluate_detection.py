"""Score the meter and area detectors on a simulated city (no Kafka) and write
benchmarks/results/detection.json and detection.html (inline SVG, no network).

    python benchmarks/evaluate_detection.py                 # 10,000 meters x 14 days, seed 7
    python benchmarks/evaluate_detection.py --meters 2000 --days 7
    python benchmarks/evaluate_detection.py --seed 3 --out /tmp/det3 --meter-kw '{"slack": 0.3}'
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

from river import drift, stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.evaluate import evaluate  # noqa: E402
from evaluation.report import BARS, measured_bars, report_html, status  # noqa: E402
from models.meter_anomaly import MeterAnomalyDetector  # noqa: E402
from simulator.anomalies import THEFTS, TYPES, AnomalySpec  # noqa: E402
from simulator.synth import SimSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def river_sizes() -> dict[str, int]:
    """What one meter would cost as river objects (EWMean + EWVar + PageHinkley)."""
    mean, var = stats.EWMean(0.005), stats.EWVar(0.005)
    mean.update(1.0)
    var.update(1.0)
    objs: list[object] = [mean, var, drift.PageHinkley()]
    return {
        "pickle_bytes": sum(len(pickle.dumps(o)) for o in objs),
        "getsizeof_bytes": sum(sys.getsizeof(o) + sys.getsizeof(vars(o)) for o in objs),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meters", type=int, default=10_000)
    p.add_argument("--days", type=float, default=14)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--per-type", type=int, default=40, help="labels per theft type and for stopped")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--meter-kw", type=json.loads, default={}, help="MeterAnomalyDetector parameters (JSON)")
    args = p.parse_args(argv)
    counts = {t: args.per_type for t in (*THEFTS, "stopped")}
    spec = SimSpec(seed=args.seed, meters=args.meters, days=args.days, anomalies=AnomalySpec(counts=counts))
    started = time.perf_counter()
    res = evaluate(spec, meter_kw=args.meter_kw)
    meter_types = [t for t in TYPES if t not in ("concentrator_outage",)]
    labelled = sum(e["labels"] for t, e in res["by_type"].items() if t in meter_types)
    res["anomalous_meters"] = labelled
    res["anomalous_share"] = labelled / res["meters"]
    res["river_per_meter"] = river_sizes()
    res["wall_seconds"] = round(time.perf_counter() - started, 1)
    res["bars"] = BARS
    res["bars_measured"] = measured_bars(res)
    probe = MeterAnomalyDetector(1, **args.meter_kw)
    res["meter_detector"] = {
        "state_bytes_per_meter": probe.state_bytes_per_meter(),
        "params": {k: v for k, v in vars(probe).items() if not k.startswith("_")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detection.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    (args.out / "detection.html").write_text(report_html(res))
    keys = ("meters", "days", "seed", "false_alerts_per_1000_meter_days", "wall_seconds")
    print(json.dumps({k: res[k] for k in keys}))
    for b in res["bars_measured"]:
        measured = "n/a" if b["measured"] is None else f"{b['measured']:.3f}"
        print(f"  {b['bar']:60s} {measured:>8}  {status(b['met'])}")
    return res


if __name__ == "__main__":
    main()
