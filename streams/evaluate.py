"""Score the detectors against a simulated city, without Kafka.

The simulator (simulator/synth.py) is run a day at a time; every interval of every area goes
through :class:`~models.detection.Detection` (meter detector, area detector, alert book), the
same object the worker feeds when a window closes, and the opened alerts are compared with the
labels. ``evaluate(spec)`` returns the figures as a JSON-able dict.

Matching: an alert opened at interval end ``ts`` on an entity a label names (its meter; the
areas for area-level types) with ``start < ts <= end + grace`` detects that label; its delay is
``(ts - start) / interval_s`` intervals. An alert that matches no label and is not explained
by one (an area alert in an area whose loss a label moves) is a false alert. Labels starting in
the warm-up or in the last day of the run are not scored (``scored`` < ``labels``). A type's
precision is that of the alerts an operator acts on for it: of all alerts of its expected
detector types (``EXPECTED``), the share that matched a label. Labels that start
inside the warm-up (the detectors have not seen the meter's normal yet) are reported apart.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.detection import AreaInterval, Detection
from simulator.synth import Sim, SimSpec

# Detector types that are the expected response to each label type: false alerts of these
# types count against that label type's precision.
EXPECTED: dict[str, frozenset[str]] = {
    "theft_h1": frozenset({"drop"}),
    "theft_h2": frozenset({"zero", "drop"}),
    "theft_h3": frozenset({"drop"}),
    "theft_h4": frozenset({"drop"}),
    "theft_h5": frozenset({"drop", "rise"}),
    "theft_h6": frozenset({"drop", "rise"}),
    "stopped": frozenset({"zero", "drop"}),
    "spike": frozenset({"spike", "rise"}),
    "flat_line": frozenset({"flat_line", "zero"}),
    "rollback": frozenset({"rollback", "missing"}),
    "meter_swap": frozenset({"rollback", "missing"}),
    "wrong_multiplier": frozenset({"drop", "rise", "high_loss", "negative_loss", "loss_jump"}),
    "wrong_mapping": frozenset({"high_loss", "negative_loss", "loss_jump"}),
    "concentrator_outage": frozenset({"collection_outage"}),
    "shutdown": frozenset({"drop", "zero", "collapse"}),
}
# Labels whose energy difference shows in their area's loss (area alerts there are explained).
MOVES_LOSS = frozenset(
    {"theft_h1", "theft_h2", "theft_h3", "theft_h4", "stopped", "wrong_multiplier", "wrong_mapping"}
)
# Label types judged without a learned baseline: scored even when they start in the warm-up.
NO_BASELINE = frozenset({"wrong_mapping", "concentrator_outage", "rollback", "meter_swap"})
# The bars: maximum delay (intervals) a detection must meet, per label type.
BAR_DELAY: dict[str, int] = {"theft_h1": 96, "theft_h2": 96, "theft_h3": 96, "theft_h4": 96, "stopped": 4}


def _ts(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def run_detectors(
    sim: Sim,
    detection: Detection,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Feed every interval of the simulated city through ``detection`` (the worker's code
    path, :class:`models.detection.Detection`); return the alert records."""
    grid = sim.grid
    n_areas = len(grid.area_ids)
    by_area = [np.flatnonzero(grid.archive_area == a) for a in range(n_areas)]
    dense = [detection.index([grid.meter_ids[i] for i in idx]) for idx in by_area]
    groups = [grid.customer_class[idx].astype(np.int64) for idx in by_area]
    actives = [np.ones(len(idx), dtype=bool) for idx in by_area]
    uppers = [0.07 if int(grid.area_class[a]) == 0 else 0.10 for a in range(n_areas)]
    outages = [x for x in sim.anomalies if x.type == "concentrator_outage"]
    records: list[dict[str, Any]] = []
    last_known: np.ndarray | None = None
    for chunk in sim.chunks():
        reg, missing = chunk.registers, chunk.missing
        if last_known is None:
            last_known = reg[:, 0].copy()
        delta = np.diff(reg, axis=1)
        gap = missing[:, 1:] | missing[:, :-1]
        energy = delta * grid.archive_multiplier[:, None]
        steps = energy.shape[1]
        # A register below the last one received went backwards, even across missing reads.
        back = np.zeros(energy.shape, dtype=bool)
        for j in range(steps):
            ok = ~missing[:, j + 1]
            back[:, j] = ok & (reg[:, j + 1] < last_known)
            last_known = np.where(ok, reg[:, j + 1], last_known)
        energy[gap | back] = np.nan
        supply = np.diff(chunk.supply_registers, axis=1) * grid.supply_archive_multiplier[:, None]
        for o in outages:  # held back by the concentrator: not there when the window closes
            if (c := o.cols(chunk.c0, steps)) is not None:
                energy[grid.meter_area == o.index, c[0] : c[1]] = np.nan
                supply[o.index, c[0] : c[1]] = np.nan
        for j in range(steps):
            ts = int(chunk.times[j + 1])
            records += detection.step(
                AreaInterval(
                    grid.area_ids[a],
                    ts,
                    dense[a],
                    energy[by_area[a], j],
                    back[by_area[a], j],
                    actives[a],
                    groups[a],
                    supply_kwh=float(supply[a, j]),
                    lower=-0.01,
                    upper=uppers[a],
                )
                for a in range(n_areas)
            )
        if progress is not None:
            progress(chunk.c0 + steps)
    return records


def score(
    labels: list[dict[str, Any]],
    records: list[dict[str, Any]],
    *,
    t0: int,
    interval_s: int,
    meters: int,
    areas: int,
    days: float,
    warmup: int,
    grace: int = 96,
) -> dict[str, Any]:
    """Compare opened alerts with labels (see the module docstring for the rules)."""
    detect_by: dict[tuple[str, str], list[int]] = defaultdict(list)
    explains: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        keys = {("meter" if lab["role"] == "customer" else "area", lab["entity"])}
        if lab["role"] == "supply":
            keys = {("area", lab["area_id"])}
        if lab["type"] == "wrong_mapping":
            keys |= {("area", lab["parameters"]["archive_area"]), ("area", lab["parameters"]["actual_area"])}
        for k in keys:
            detect_by[k].append(i)
        if lab["type"] in MOVES_LOSS:
            explains[("area", lab["area_id"])].append(i)
    span = [(_ts(lab["start"]), _ts(lab["end"]) + grace * interval_s) for lab in labels]
    tail = t0 + int(days * 86400) - 96 * interval_s
    outages: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for lab in labels:
        if lab["type"] == "concentrator_outage":
            outages[lab["entity"]].append((_ts(lab["start"]), _ts(lab["end"])))

    def _overlaps(spans: list[tuple[int, int]], start: int, bar: int) -> bool:
        return any(a < start + bar * interval_s and b > start for a, b in spans)

    delays: list[list[float]] = [[] for _ in labels]
    true_dtypes: dict[str, int] = defaultdict(int)
    false: list[dict[str, Any]] = []
    opened = [r for r in records if r["event"] == "opened"]
    for r in opened:
        ts, key = _ts(r["at"]), (r["entity_kind"], r["entity_id"])
        dtype = r["id"].split(":")[2]
        hits = [i for i in detect_by.get(key, []) if span[i][0] < ts <= span[i][1]]
        for i in hits:
            delays[i].append((ts - span[i][0]) / interval_s)
        if hits:
            true_dtypes[dtype] += 1
            continue
        if any(span[i][0] < ts <= span[i][1] for i in explains.get(key, [])):
            continue
        false.append({"kind": r["entity_kind"], "entity": r["entity_id"], "type": dtype, "ts": ts})
    false_by_dtype: dict[str, int] = defaultdict(int)
    for f in false:
        false_by_dtype[f["type"]] += 1
    true_by_dtype: dict[str, int] = defaultdict(int)
    for dtype, n in true_dtypes.items():
        true_by_dtype[dtype] += n
    by_type: dict[str, Any] = {}
    for t in sorted({lab["type"] for lab in labels}):
        idx = [i for i, lab in enumerate(labels) if lab["type"] == t]
        exempt = t in NO_BASELINE
        # Judged only with a full day of data after the start (a label starting in the last
        # hours of the run cannot show a one-day delay).
        scored = [
            i
            for i in idx
            if (exempt or span[i][0] >= t0 + warmup * interval_s) and _ts(labels[i]["start"]) <= tail
        ]
        found = [min(delays[i]) for i in scored if delays[i]]
        bar = BAR_DELAY.get(t)
        # Precision of the alerts an operator acts on for this type: of all alerts of its
        # expected detector types, the share that matched a label (any label).
        dtypes = EXPECTED.get(t, frozenset())
        tp = sum(true_by_dtype.get(d, 0) for d in dtypes)
        fp = sum(false_by_dtype.get(d, 0) for d in dtypes)
        precision = tp / (tp + fp) if tp + fp else None
        recall = len(found) / len(scored) if scored else None
        entry: dict[str, Any] = {
            "labels": len(idx),
            "scored": len(scored),
            "detected": len(found),
            "precision": precision,
            "recall": recall,
            "f1": (
                2 * precision * recall / (precision + recall)
                if precision is not None and recall is not None and precision + recall
                else None
            ),
            "median_delay_intervals": statistics.median(found) if found else None,
            "alerts_true": tp,
            "alerts_false": fp,
        }
        if bar is not None:
            within = [d for d in found if d <= bar]
            entry["bar_delay_intervals"] = bar
            entry["recall_within_bar"] = len(within) / len(scored) if scored else None
            # Data held back by a concentrator outage in the label's area cannot be judged in
            # time: the same figure without labels whose first ``bar`` intervals overlap one.
            clear = [
                i for i in scored if not _overlaps(outages.get(labels[i]["area_id"], []), span[i][0], bar)
            ]
            hit = [i for i in clear if delays[i] and min(delays[i]) <= bar]
            entry["outside_outages"] = {
                "scored": len(clear),
                "recall_within_bar": len(hit) / len(clear) if clear else None,
            }
            if t == "theft_h1":
                bins = {"share_ge_0.3": (0.3, 1.01), "share_0.2_0.3": (0.2, 0.3), "share_0.3_0.4": (0.3, 0.4)}
                for name, (lo, hi) in bins.items():
                    sel = [i for i in scored if lo <= labels[i]["parameters"].get("share", 1.0) < hi]
                    hit = [i for i in sel if delays[i] and min(delays[i]) <= bar]
                    entry[name] = {
                        "scored": len(sel),
                        "recall_within_bar": len(hit) / len(sel) if sel else None,
                    }
        by_type[t] = entry
    false_meter = [f for f in false if f["kind"] == "meter"]
    false_area = [f for f in false if f["kind"] == "area"]
    return {
        "meters": meters,
        "areas": areas,
        "days": days,
        "warmup_intervals": warmup,
        "by_type": by_type,
        "alerts_opened": len(opened),
        "false_alerts": len(false),
        "false_alerts_by_type": dict(sorted(false_by_dtype.items())),
        "false_alerts_per_1000_meter_days": 1000 * len(false_meter) / (meters * days),
        "false_area_alerts_per_1000_area_days": 1000 * len(false_area) / (areas * days),
    }


def evaluate(
    spec: SimSpec,
    *,
    meter_kw: dict[str, Any] | None = None,
    area_kw: dict[str, Any] | None = None,
    grace: int = 96,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Simulate ``spec``, run the detectors over it and score the alerts against its labels."""
    sim = Sim.build(spec)
    detection = Detection(meter_kw=meter_kw, area_kw=area_kw, capacity=sim.grid.meters)
    meter_detector = detection.meter_detector
    started = time.perf_counter()
    records = run_detectors(sim, detection, progress=progress)
    elapsed = time.perf_counter() - started
    out = score(
        sim.labels(),
        records,
        t0=spec.t0,
        interval_s=spec.interval_s,
        meters=sim.grid.meters,
        areas=len(sim.grid.area_ids),
        days=spec.steps * spec.interval_s / 86400,
        warmup=meter_detector.warmup,
        grace=grace,
    )
    out["state_bytes_per_meter"] = detection.state_bytes_per_meter()
    out["seed"] = spec.seed
    out["seconds"] = round(elapsed, 1)
    out["meter_intervals_per_s"] = round(sim.grid.meters * spec.steps / elapsed) if elapsed else None
    return out


def evaluate_files(
    directory: Path,
    *,
    readings: Path | None = None,
    interval_s: int | None = None,
    window_s: int | None = None,
    meter_kw: dict[str, Any] | None = None,
    area_kw: dict[str, Any] | None = None,
    grace: int = 96,
) -> dict[str, Any]:
    """Score the detectors on a recorded or simulated file through the worker's whole path
    (:mod:`streams.offline`: decoding, line-loss engine, detection), against the labels in
    ``directory`` (what ``gridwatch simulate`` writes)."""
    from streams.offline import OfflineInputError, load_city, run_file

    topology, labels, spec = load_city(directory)
    labels = [lab for lab in labels if lab["type"] in EXPECTED]  # transport faults are not anomalies
    if readings is None:
        found = [directory / n for n in ("readings.jsonl", "readings.jsonl.gz") if (directory / n).exists()]
        if not found:
            raise OfflineInputError(f"{directory}: no readings.jsonl(.gz); pass the readings file")
        readings = found[0]
    interval = interval_s or int(spec.get("interval_s", 900))
    window = window_s or interval
    detection = Detection(meter_kw=meter_kw, area_kw=area_kw)
    started = time.perf_counter()
    run = run_file(readings, topology, detection, interval_s=interval, window_s=window)
    elapsed = time.perf_counter() - started
    if run.first_ts is None or run.last_ts is None:
        raise OfflineInputError(f"{readings}: no reading could be used")
    t0 = _ts(spec["start"]) if "start" in spec else run.first_ts
    days = float(spec["days"]) if "days" in spec else (run.last_ts - t0) / 86400
    customers = {r.meter_id for r in topology.records() if r.role.value == "customer"}
    areas = {r.area_id for r in topology.records()}
    out = score(
        labels,
        run.alerts,
        t0=t0,
        interval_s=interval,
        meters=len(customers),
        areas=len(areas),
        days=days,
        warmup=detection.meter_detector.warmup,
        grace=grace,
    )
    meter_labels = {lab["entity"] for lab in labels if lab.get("role") == "customer"}
    out.update(
        {
            "source": str(readings),
            "seed": spec.get("seed"),
            "anomalous_meters": len(meter_labels),
            "anomalous_share": len(meter_labels) / len(customers) if customers else 0.0,
            "state_bytes_per_meter": detection.state_bytes_per_meter(),
            "records": run.records,
            "readings": run.readings,
            "refused": dict(sorted(run.refused.items())),
            "area_windows": run.windows,
            "seconds": round(elapsed, 1),
            "readings_per_s": round(run.readings / elapsed) if elapsed else None,
        }
    )
    return out
