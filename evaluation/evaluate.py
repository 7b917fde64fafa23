"""Score the detectors against a simulated city, without Kafka.

The simulator (simulator/synth.py) is run a day at a time; every interval of every area goes
through :class:`~models.detection.Detection` (meter detector, area detector, alert book), the
same object the worker feeds when a window closes, and the opened alerts are compared with the
labels. ``evaluate(spec)`` returns the figures as a JSON-able dict.

Matching: an alert opened at interval end ``ts`` on an entity a label names (its meter; the
areas for area-level types) with ``start < ts <= end + grace`` detects that label; its delay is
``(ts - start) / interval_s`` intervals. An alert that matches no label and is not explained
by one (an area alert in an area whose loss a label moves) is a false alert. Labels starting in
the warm-up, or in the last day of the run unless they ended inside it, are not scored
(``scored`` < ``labels``). A type's
precision is that of the alerts an operator acts on for it: of all alerts of its expected
detector types (``EXPECTED``), the share that matched a label. Labels that start
inside the warm-up (the detectors have not seen the meter's normal yet) are reported apart.
Meter alerts that are false are split by severity: ``paged`` (page / warning: someone acts on
them) and ``information`` (info). A meter ``missing`` alert in an area whose collection a label
says failed (``concentrator_outage``) is explained, not false: the meter did not report.

``evaluate_files(directory)`` (behind ``gridwatch evaluate``) runs a recorded or simulated file
through the worker's path with suspects on, as the worker runs it, and adds the suspect
ranking's figures (:func:`suspect_figures`). Its labels come from :func:`read_labels`: the
simulator's ``labels.jsonl`` or the committed sample's ``labels.json``.
"""

from __future__ import annotations

import gzip
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.detection import AreaInterval, Detection
from models.suspects import Suspect
from simulator.city import CitySpec
from simulator.synth import Chunk, Sim, SimSpec
from topology import Topology

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
    "misclassified": frozenset({"tariff_mismatch"}),
    "large_consumer": frozenset({"large_day", "large_month"}),
    # The committed sample's area-level facts (labels.json, see _sample_labels).
    "area_theft": frozenset({"high_loss", "loss_jump"}),
    "supply_under_registering": frozenset({"negative_loss"}),
}
# Labels whose energy difference shows in their area's loss (area alerts there are explained).
MOVES_LOSS = frozenset(
    {
        "theft_h1",
        "theft_h2",
        "theft_h3",
        "theft_h4",
        "stopped",
        "wrong_multiplier",
        "wrong_mapping",
        "area_theft",
        "supply_under_registering",
    }
)
# Label types judged without a learned baseline: scored even when they start in the warm-up
# (the area's loss bounds need no history).
NO_BASELINE = frozenset(
    {
        "wrong_mapping",
        "concentrator_outage",
        "rollback",
        "meter_swap",
        "area_theft",
        "supply_under_registering",
        "misclassified",  # filed wrong from the start: no onset, judged once the shape is learned
    }
)
# Severities of alerts someone is paged for or acts on; the rest ("info") is information.
PAGED = frozenset({"page", "warning"})
# The bars: maximum delay (intervals) a detection must meet, per label type.
BAR_DELAY: dict[str, int] = {"theft_h1": 96, "theft_h2": 96, "theft_h3": 96, "theft_h4": 96, "stopped": 4}


def _ts(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def observed_chunks(
    sim: Sim, before: Callable[[Chunk], None] | None = None
) -> Iterator[tuple[Chunk, np.ndarray, np.ndarray, np.ndarray]]:
    """Each day of the simulated city as the worker observes it: the chunk, the customer meters'
    interval energies (register deltas x the archive's multiplier; NaN for gaps, register
    rollbacks and data a concentrator held back), the areas' supply energies (NaN where held
    back) and which readings went backwards (meters x intervals). ``before`` may rewrite a
    chunk's registers first (a benchmark's scenario)."""
    grid = sim.grid
    outages = [x for x in sim.anomalies if x.type == "concentrator_outage"]
    last_known: np.ndarray | None = None
    for chunk in sim.chunks():
        if before is not None:
            before(chunk)
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
        yield chunk, energy, supply, back


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
    groups = [grid.archive_class[idx].astype(np.int64) for idx in by_area]  # the class billed
    actives = [np.ones(len(idx), dtype=bool) for idx in by_area]
    uppers = [0.07 if int(grid.area_class[a]) == 0 else 0.10 for a in range(n_areas)]
    records: list[dict[str, Any]] = []
    for chunk, energy, supply, back in observed_chunks(sim):
        steps = energy.shape[1]
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
    area_of: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Compare opened alerts with labels (see the module docstring for the rules).
    ``area_of`` (meter -> area) lets a collection outage explain its meters' missing alerts."""
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
    run_end = t0 + int(days * 86400)
    tail = run_end - 96 * interval_s
    outages: dict[str, list[tuple[int, int]]] = defaultdict(list)
    silent: dict[str, list[int]] = defaultdict(list)  # area -> outage labels
    for i, lab in enumerate(labels):
        if lab["type"] == "concentrator_outage":
            outages[lab["entity"]].append((_ts(lab["start"]), _ts(lab["end"])))
            silent[lab["area_id"]].append(i)
    area_of = area_of or {}

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
        if dtype == "missing" and any(
            span[i][0] < ts <= span[i][1] for i in silent.get(area_of.get(r["entity_id"], ""), [])
        ):
            continue
        false.append(
            {
                "kind": r["entity_kind"],
                "entity": r["entity_id"],
                "type": dtype,
                "ts": ts,
                "paged": r.get("severity", "warning") in PAGED,
            }
        )
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
        # hours of the run cannot show a one-day delay), or when it ended inside the run (seen
        # whole: a short recording, the sample's day, still judges what it holds).
        scored = [
            i
            for i in idx
            if (exempt or span[i][0] >= t0 + warmup * interval_s)
            and (_ts(labels[i]["start"]) <= tail or _ts(labels[i]["end"]) < run_end)
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
    paged = sum(f["paged"] for f in false_meter)
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
        "false_meter_alerts_per_1000_meter_days": {
            "paged": 1000 * paged / (meters * days),
            "information": 1000 * (len(false_meter) - paged) / (meters * days),
        },
        "false_area_alerts": len(false_area),
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
        area_of={
            m: sim.grid.area_ids[int(a)]
            for m, a in zip(sim.grid.meter_ids, sim.grid.archive_area, strict=True)
        },
    )
    out["state_bytes_per_meter"] = detection.anomaly_state_bytes_per_meter()  # the 64-byte bar
    out["watch_state_bytes_per_meter"] = detection.watch_state_bytes_per_meter()
    out["seed"] = spec.seed
    out["seconds"] = round(elapsed, 1)
    out["meter_intervals_per_s"] = round(sim.grid.meters * spec.steps / elapsed) if elapsed else None
    return out


# ---- labels ------------------------------------------------------------------------------------

LABEL_FILES = ("labels.jsonl", "labels.json")
ROLES = frozenset({"customer", "supply", "area", "message"})


class LabelsError(ValueError):
    """The labels cannot be used: which file, which line, and why (one line)."""


@dataclass(frozen=True)
class Labels:
    """Labels read from a directory: the simulator's records, or the sample's description
    (``labels.json``: theft, negative-loss and outage areas) that :meth:`resolve` turns into
    records once the run's span is known."""

    path: Path
    records: list[dict[str, Any]] | None = None
    sample: dict[str, Any] | None = None

    def resolve(self, topology: Topology, *, t0: int, t_end: int, interval_s: int) -> list[dict[str, Any]]:
        if self.records is not None:
            return self.records
        assert self.sample is not None
        return _sample_labels(self.sample, self.path, topology, t0=t0, t_end=t_end, interval_s=interval_s)


def read_labels(directory: Path, path: Path | None = None) -> Labels:
    """The labels of ``directory``: ``path`` if given, else ``labels.jsonl`` (what ``gridwatch
    simulate`` writes), else ``labels.json`` (what ``gridwatch sample`` writes). Raises
    :class:`LabelsError` when there are none or one is malformed."""
    if path is None:
        found = [directory / n for n in LABEL_FILES if (directory / n).is_file()]
        if not found:
            raise LabelsError(
                f"{directory}: no labels.jsonl or labels.json (write one with `gridwatch simulate`, "
                "or pass --labels FILE)"
            )
        path = found[0]
    elif not path.is_file():
        raise LabelsError(f"{path}: no such labels file")
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix == ".json":  # one document: the sample's description, or a list of labels
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise LabelsError(f"{path}: not JSON ({exc})") from None
        if isinstance(doc, dict) and "theft_areas" in doc:
            return Labels(path, sample=_check_sample(doc, path))
        if isinstance(doc, list):
            return Labels(
                path, records=[_check_label(orjson.dumps(x), f"{path}[{i}]") for i, x in enumerate(doc)]
            )
        raise LabelsError(f"{path}: neither the sample's labels (theft_areas, ...) nor a list of labels")
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            records.append(_check_label(line, f"{path}:{n}"))
    return Labels(path, records=records)


def _check_label(line: bytes, where: str) -> dict[str, Any]:
    try:
        lab = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LabelsError(f"{where}: not JSON ({exc})") from None
    if not isinstance(lab, dict):
        raise LabelsError(f"{where}: a label is a JSON object, got {type(lab).__name__}")
    for key in ("entity", "type", "start", "end", "area_id", "role"):
        if not isinstance(lab.get(key), str) or not lab[key]:
            raise LabelsError(f"{where}: label needs a non-empty string {key!r}")
    if lab["role"] not in ROLES:
        raise LabelsError(f"{where}: role {lab['role']!r} is not one of {', '.join(sorted(ROLES))}")
    try:
        start, end = _ts(lab["start"]), _ts(lab["end"])
    except ValueError:
        raise LabelsError(
            f"{where}: start / end must be ISO 8601 times, got {lab['start']!r}, {lab['end']!r}"
        ) from None
    if end < start:
        raise LabelsError(f"{where}: end {lab['end']} is before start {lab['start']}")
    params = lab.setdefault("parameters", {})
    if not isinstance(params, dict):
        raise LabelsError(f"{where}: parameters must be a JSON object")
    if lab["type"] == "wrong_mapping" and not {"archive_area", "actual_area"} <= params.keys():
        raise LabelsError(f"{where}: a wrong_mapping label needs parameters archive_area and actual_area")
    return lab


def _check_sample(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    for key in ("theft_areas", "negative_areas", "outage_areas"):
        v = doc.get(key, [])
        if not isinstance(v, list) or not all(isinstance(a, str) for a in v):
            raise LabelsError(f"{path}: {key} must be a list of area ids")
    thieves = doc.get("thieves", {})
    if not isinstance(thieves, dict) or not all(
        isinstance(v, list) and all(isinstance(m, str) for m in v) for v in thieves.values()
    ):
        raise LabelsError(f"{path}: thieves must map area ids to lists of meter ids")
    share = doc.get("theft_share")
    if not isinstance(share, int | float) or not 0 < share <= 1:
        raise LabelsError(f"{path}: theft_share must be a number in (0, 1], got {share!r}")
    return doc


def _sample_labels(
    doc: dict[str, Any], path: Path, topology: Topology, *, t0: int, t_end: int, interval_s: int
) -> list[dict[str, Any]]:
    """Label records for the sample's description (``simulator.city``): each thief under-reports
    by ``theft_share`` for the whole run (h1), a theft area's loss is high for the whole run, a
    negative area's supply meter under-registers for the whole run, and in an outage area a
    quarter of the meters is silent for ``outage_intervals`` reads from the middle of the run.
    What labels.json does not record (the outage's reads, the supply's share) follows the
    rules and defaults of :class:`simulator.city.CitySpec`, which wrote it."""
    rules = CitySpec()
    start, end = _iso(t0), _iso(t_end)
    at = datetime.fromtimestamp(t0, UTC)
    known = topology.areas

    def area(a: str, what: str) -> str:
        if a not in known:
            raise LabelsError(f"{path}: {what} {a!r} is not an area of the archive")
        return a

    share = float(doc["theft_share"])
    out: list[dict[str, Any]] = []
    for a in doc.get("theft_areas", []):
        thieves = doc.get("thieves", {}).get(area(a, "theft area"), [])
        out.append(_label(a, "area_theft", start, end, a, "area", thieves=len(thieves), share=share))
        for m in thieves:
            rec = topology.meter_at(m, at)
            if rec is None or rec.area_id != a:
                raise LabelsError(f"{path}: thief {m!r} is not a meter of area {a!r} in the archive")
            out.append(_label(m, "theft_h1", start, end, a, "customer", share=share))
    for a in doc.get("negative_areas", []):
        supply = sorted(topology.supply_meters(area(a, "negative area"), at)) or [a]
        out.append(
            _label(supply[0], "supply_under_registering", start, end, a, "supply", share=rules.negative_share)
        )
    steps = (t_end - t0) // interval_s
    first = steps // 2  # the first silent read; intervals first .. first + n lack energy
    last = min(steps, first + rules.outage_intervals)
    for a in doc.get("outage_areas", []):
        meters = len(topology.customer_meters(area(a, "outage area"), at))
        out.append(
            _label(
                a,
                "concentrator_outage",
                _iso(t0 + (first - 1) * interval_s),
                _iso(t0 + last * interval_s),
                a,
                "area",
                silent_meters=max(1, meters // 4),
            )
        )
    return sorted(out, key=lambda d: (d["start"], d["type"], d["entity"]))


def _label(
    entity: str, kind: str, start: str, end: str, area: str, role: str, **params: Any
) -> dict[str, Any]:
    return {
        "entity": entity,
        "type": kind,
        "start": start,
        "end": end,
        "area_id": area,
        "role": role,
        "parameters": params,
    }


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# ---- suspects ----------------------------------------------------------------------------------

TOP_K = (3, 5, 10)
CHECK_DAYS = (7.0, 14.0, 30.0)


def checkpoints(t0: int, days: float) -> list[int]:
    """Times the suspect ranking is judged at: day 7, 14 and 30, or the run's end if shorter.

    >>> [(c - 0) / 86400 for c in checkpoints(0, 10.0)], [c / 86400 for c in checkpoints(0, 1.0)]
    ([7.0, 10.0], [1.0])
    """
    return sorted({t0 + int(min(d, days) * 86400) for d in CHECK_DAYS})


class RankedDetection(Detection):
    """:class:`~models.detection.Detection` with suspects on, as the worker runs it, that also
    keeps each area's full suspect ranking as it stood when the area's data reached each
    checkpoint (ranked once per area and checkpoint, after the step that reached it; a step is
    one closed window, so with 15-minute windows right at the checkpoint)."""

    def __init__(self, at: Sequence[int], **kw: Any) -> None:
        super().__init__(suspects=True, **kw)
        self.rankings: dict[int, dict[str, list[Suspect]]] = {c: {} for c in at}

    def step(self, intervals: Iterable[AreaInterval]) -> list[dict[str, Any]]:
        batch = list(intervals)
        out = super().step(batch)
        for area in {iv.area_id for iv in batch}:
            learned = self.learned.get(area, -1)
            for c, ranked in self.rankings.items():
                if learned >= c and area not in ranked:
                    ranked[area] = self.ranking(area)
        return out

    def ranking(self, area: str) -> list[Suspect]:
        """Every meter of the area, most likely cause first; empty while it cannot be ranked."""
        if self.ranker is None:
            return []
        try:
            return self.ranker.rank(area, top=None)
        except KeyError:  # never observed
            return []

    def finish(self, at: Sequence[int], areas: Sequence[str]) -> None:
        """At the end of the run: keep the checkpoints ``at`` (those the run reached, and its
        end), ranking the areas that did not reach one as they end."""
        self.rankings = {c: self.rankings.get(c, {}) for c in at}
        for ranked in self.rankings.values():
            for a in areas:
                if a not in ranked:
                    ranked[a] = self.ranking(a)


def auc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """Probability that a positive outscores a negative (ties count half); None without both.

    >>> auc([3.0, 2.0], [1.0, 2.0]), auc([1.0], [])
    (0.875, None)
    """
    if not positive or not negative:
        return None
    neg = np.sort(np.asarray(negative, dtype=np.float64))
    pos = np.asarray(positive, dtype=np.float64)
    below = np.searchsorted(neg, pos, side="left")
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(pos) * len(neg)))


def suspect_figures(
    labels: list[dict[str, Any]],
    rankings: dict[int, dict[str, list[Suspect]]],
    *,
    customers: dict[str, str],
    t0: int,
) -> dict[str, Any]:
    """Per label type of the customer meters' labels: the share of labels whose meter is in its
    area's top k (3, 5, 10) at each checkpoint (labels that began before it), and the AUC of the
    final ranking's scores, pooled over areas, of the labelled meters against the meters with
    no label. ``all_loss`` pools the types that move an area's loss. ``customers``: meter ->
    its archive area (where the ranker sees it)."""
    final = max(rankings) if rankings else None
    pos_at: dict[int, dict[str, int]] = {
        c: {s.meter: s.rank for a in by_area.values() for s in a} for c, by_area in rankings.items()
    }
    final_score = {s.meter: s.score for a in rankings.get(final, {}).values() for s in a} if final else {}
    meter_labels = [lab for lab in labels if lab["role"] == "customer" and lab["entity"] in customers]
    labelled = {lab["entity"] for lab in labels if lab["role"] == "customer"}
    honest = [final_score.get(m, -math.inf) for m in customers if m not in labelled]

    def figures(group: list[dict[str, Any]]) -> dict[str, Any]:
        at: dict[str, Any] = {}
        for c in sorted(rankings):
            live = [lab for lab in group if _ts(lab["start"]) < c]
            ranks = [pos_at[c].get(lab["entity"], 10**9) for lab in live]
            at[f"{(c - t0) / 86400:g}"] = {
                "scored": len(live),
                **{f"top{k}": (sum(r <= k for r in ranks) / len(ranks) if ranks else None) for k in TOP_K},
            }
        started = {lab["entity"] for lab in group if final is not None and _ts(lab["start"]) < final}
        return {
            "labels": len(group),
            "meters": len(started),
            "at_day": at,
            "auc": auc([final_score.get(m, -math.inf) for m in sorted(started)], honest),
        }

    by_type = {
        t: figures([lab for lab in meter_labels if lab["type"] == t])
        for t in sorted({lab["type"] for lab in meter_labels})
    }
    return {
        "days": [round((c - t0) / 86400, 4) for c in sorted(rankings)],
        "top_k": list(TOP_K),
        "honest_meters": len(honest),
        "by_type": by_type,
        "all_loss": figures([lab for lab in meter_labels if lab["type"] in MOVES_LOSS]),
    }


# ---- a file through the worker's path ----------------------------------------------------------


def out_dir(out: Path | None, *, cwd: Path | None = None) -> Path | None:
    """Where ``gridwatch evaluate`` writes: ``out``, or a new folder ``gridwatch-evaluate-<UTC
    time>`` in the working directory. None when that is inside gridwatch's own files (its
    packages, or the committed benchmark results, which are the benchmark's to write).

    >>> out_dir(Path(__file__).parent / "x") is None, out_dir(Path("/tmp/x"))
    (True, PosixPath('/tmp/x'))
    """
    if out is None:
        base = cwd or Path.cwd()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out, n = base / f"gridwatch-evaluate-{stamp}", 1
        while out.exists():
            n += 1
            out = base / f"gridwatch-evaluate-{stamp}-{n}"
    resolved = out.resolve()
    root = Path(__file__).resolve().parent.parent
    packages = ["streams", "models", "simulator", "evaluation", "local", "notifier"]
    own = [root / p for p in packages] + [root / "benchmarks" / "results"]
    if any(resolved == d or d in resolved.parents for d in own):
        return None
    return out


def count_records(path: Path) -> int:
    """Lines of a readings file (the progress bar's total): one pass, no decoding."""
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def check_inputs(directory: Path, readings: Path | None = None, labels: Path | None = None) -> Path:
    """The quick checks before a run, in the order a run needs them: the archive, the labels
    (read and checked), the readings file (returned). Raises a one-line error."""
    from streams.offline import OfflineInputError

    if not (directory / "meters.csv").is_file():
        raise OfflineInputError(
            f"{directory / 'meters.csv'}: no such file (the archive is needed to judge areas)"
        )
    read_labels(directory, labels)
    return readings_file(directory, readings)


def readings_file(directory: Path, readings: Path | None = None) -> Path:
    """``readings``, else the directory's readings.jsonl(.gz)."""
    from streams.offline import OfflineInputError

    if readings is not None:
        if not readings.is_file():
            raise OfflineInputError(f"{readings}: no such readings file")
        return readings
    for name in ("readings.jsonl", "readings.jsonl.gz"):
        if (directory / name).is_file():
            return directory / name
    raise OfflineInputError(f"{directory}: no readings.jsonl(.gz); pass --readings FILE")


def evaluate_files(
    directory: Path,
    *,
    readings: Path | None = None,
    labels: Path | None = None,
    interval_s: int | None = None,
    window_s: int | None = None,
    meter_kw: dict[str, Any] | None = None,
    area_kw: dict[str, Any] | None = None,
    suspect_score: float = 30.0,
    min_completeness: float = 0.98,
    grace: int = 96,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score the detectors and the suspect ranking on a recorded or simulated file through the
    worker's whole path (:mod:`streams.offline`: decoding, line-loss engine, detection with
    suspects on), against the labels of ``directory`` (:func:`read_labels`). ``progress`` is
    called with the records read so far, every 1,000 records and at the end."""
    from streams.offline import OfflineInputError, iter_records, load_city, run_records

    topology, _, spec = load_city(directory)
    found = read_labels(directory, labels)  # before the run: a missing file fails fast
    readings = readings_file(directory, readings)
    interval = interval_s or int(spec.get("interval_s", 900))
    window = window_s or interval
    # The run starts at spec.json's start, else at the file's first reading; it ends where the
    # file does, so the last checkpoint (the run's end, when shorter than 30 days) comes last.
    t0 = _ts(spec["start"]) if "start" in spec else _first_ts(readings, iter_records)
    detection = RankedDetection(
        [t0 + int(d * 86400) for d in CHECK_DAYS],
        meter_kw=meter_kw,
        area_kw=area_kw,
        interval_s=interval,
        min_completeness=min_completeness,
        suspect_score=suspect_score,
    )

    def records() -> Iterator[tuple[str, bytes | None, bytes]]:
        n = 0
        for rec in iter_records(readings):
            yield rec
            n += 1
            if progress is not None and n % 1000 == 0:
                progress(n)
        if progress is not None:
            progress(n)

    started = time.perf_counter()
    run = run_records(
        records(),
        topology,
        detection,
        interval_s=interval,
        window_s=window,
        min_completeness=min_completeness,
    )
    if run.first_ts is None or run.last_ts is None:
        raise OfflineInputError(f"{readings}: no reading could be used")
    days = float(spec["days"]) if "days" in spec else (run.last_ts - t0) / 86400
    detection.finish(checkpoints(t0, days), sorted(topology.areas))
    elapsed = time.perf_counter() - started
    all_labels = found.resolve(topology, t0=t0, t_end=t0 + int(days * 86400), interval_s=interval)
    used = [lab for lab in all_labels if lab["type"] in EXPECTED]  # transport faults are not anomalies
    ignored: dict[str, int] = defaultdict(int)
    for lab in all_labels:
        if lab["type"] not in EXPECTED:
            ignored[lab["type"]] += 1
    customers = {r.meter_id: r.area_id for r in topology.records() if r.role.value == "customer"}
    areas = {r.area_id for r in topology.records()}
    out = score(
        used,
        run.alerts,
        t0=t0,
        interval_s=interval,
        meters=len(customers),
        areas=len(areas),
        days=days,
        warmup=detection.meter_detector.warmup,
        grace=grace,
        area_of=customers,
    )
    meter_labels = {lab["entity"] for lab in used if lab.get("role") == "customer"}
    ranker = detection.ranker
    out["suspects"] = suspect_figures(used, detection.rankings, customers=customers, t0=t0)
    out["suspects"]["state_bytes_per_meter"] = ranker.state_bytes_per_meter() if ranker is not None else 0
    out["suspects"]["suspect_alerts_opened"] = sum(
        r["event"] == "opened" and r["id"].split(":")[2] == "suspect" for r in run.alerts
    )
    out.update(
        {
            "source": str(readings),
            "labels_file": str(found.path),
            "labels_ignored": dict(sorted(ignored.items())),
            "start": _iso(t0),
            "seed": spec.get("seed", found.sample.get("seed") if found.sample else None),
            "anomalous_meters": len(meter_labels),
            "anomalous_share": len(meter_labels) / len(customers) if customers else 0.0,
            "state_bytes_per_meter": detection.anomaly_state_bytes_per_meter(),
            "watch_state_bytes_per_meter": detection.watch_state_bytes_per_meter(),
            "records": run.records,
            "readings": run.readings,
            "late_readings": run.refused.get("late", 0),
            "refused": dict(sorted(run.refused.items())),
            "area_windows": run.windows,
            "seconds": round(elapsed, 1),
            "readings_per_s": round(run.readings / elapsed) if elapsed else None,
        }
    )
    return out


def _first_ts(
    readings: Path, iter_records: Callable[[Path], Iterable[tuple[str, bytes | None, bytes]]]
) -> int:
    """The time of a file's first usable reading (0 when it has none)."""
    from streams import contracts
    from streams.contracts import InvalidRecord

    for _, _, value in iter_records(readings):
        try:
            return int(contracts.decode_readings(value).ts.timestamp())
        except InvalidRecord:
            continue
    return 0
