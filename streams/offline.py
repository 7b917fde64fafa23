"""The worker's path without Kafka: readings from a file through the same decoding, line-loss
engine and detectors, for ``gridwatch evaluate``.

Input is what ``gridwatch simulate`` writes (``readings.jsonl[.gz]`` with ``meters.csv``,
``areas.csv``, ``labels.jsonl``, ``spec.json``) or a ``gridwatch record`` file of the readings
and supply topics. Records are taken in file order (arrival order) into one engine partition,
in chunks through :class:`streams.step.BatchStep` (decode, checks, line-loss engine, detectors);
moved meters are rerouted once, at once. Only the wall-clock checks (too old / in the future)
are left out: a file is replayed in its own time.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any

import orjson

from models.detection import Detection
from models.lineloss import LossResult
from streams.step import BatchStep, Record, StepOutput
from topology import Topology

READINGS, SUPPLY = "readings", "supply"
CHUNK = 1000  # records per step


class OfflineInputError(ValueError):
    """The input cannot be read: say which file and why."""


@dataclass
class OfflineRun:
    """What a file run produced."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, LossResult] = field(default_factory=dict)  # latest per area-window key
    records: int = 0
    readings: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    windows: int = 0
    first_ts: int | None = None
    last_ts: int | None = None


def _open(path: Path) -> IO[bytes]:
    if not path.exists():
        raise OfflineInputError(f"{path}: no such file")
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def iter_records(
    path: Path, *, supply_topics: tuple[str, ...] = ()
) -> Iterator[tuple[str, bytes | None, bytes]]:
    """(kind, key, value) per record of a simulator JSONL file or a ``gridwatch record`` file.

    In a recording, topics named in ``supply_topics`` (or ending in ``supply`` /
    ``supply-readings``) are supply readings, the rest customer readings.
    """
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise OfflineInputError(f"{path}:{n}: not JSON ({exc})") from None
            if d.get("format") == "gridwatch-record":
                continue  # a recording's header
            if "topic" in d:  # gridwatch record
                topic = str(d["topic"])
                is_supply = topic in supply_topics or topic.endswith(("supply", "supply-readings"))
                key = base64.b64decode(d["key"]) if d.get("key") else None
                value = base64.b64decode(d["value"]) if d.get("value") else b""
                yield (SUPPLY if is_supply else READINGS), key, value
            elif "kind" in d:  # gridwatch simulate
                key = str(d["key"]).encode() if d.get("key") is not None else None
                if "value_b64" in d:
                    value = base64.b64decode(d["value_b64"])
                else:
                    value = orjson.dumps(d["value"])
                yield (SUPPLY if d["kind"] == SUPPLY else READINGS), key, value
            else:
                raise OfflineInputError(f"{path}:{n}: neither a simulator nor a recording line")


def run_file(path: Path, topology: Topology, detection: Detection, **kw: Any) -> OfflineRun:
    """Feed every record of ``path`` through the worker's path; return alerts and results."""
    supply_topics = tuple(kw.pop("supply_topics", ()))
    return run_records(iter_records(path, supply_topics=supply_topics), topology, detection, **kw)


def run_records(
    records: Iterable[tuple[str, bytes | None, bytes]],
    topology: Topology,
    detection: Detection,
    *,
    interval_s: int = 900,
    window_s: int = 900,
    allowed_lateness_s: int = 7200,
    close_delay_s: int = 900,
    clock_tolerance_s: int = 120,
    min_completeness: float = 0.98,
    chunk: int = CHUNK,
) -> OfflineRun:
    """Feed (kind, key, value) records, kind ``readings`` or ``supply``, in arrival order
    through the worker's step, ``chunk`` records at a time; return the alerts and the latest
    result per area-window."""
    batch = BatchStep(
        topology,
        detection,
        sources=(READINGS, SUPPLY),
        supply_sources=frozenset({SUPPLY}),
        interval_s=interval_s,
        window_s=window_s,
        allowed_lateness_s=allowed_lateness_s,
        close_delay_s=close_delay_s,
        clock_tolerance_s=clock_tolerance_s,
        min_completeness=min_completeness,
        forward_inline=True,
        write_behind=True,  # nothing reads the store back: persisted per chunk, to nowhere
    )
    run = OfflineRun()
    it = iter(records)
    while chunk_records := [Record(kind, key, value) for kind, key, value in islice(it, chunk)]:
        _add(run, batch.step(chunk_records))
        batch.engine.persist(_nowhere)
    # The end of the file: every source is quiet, so every ended window closes.
    _add(run, batch.close_idle(0, (READINGS, SUPPLY)))
    return run


def _nowhere(partition: int, key: str, value: Any) -> None:
    pass


def _add(run: OfflineRun, out: StepOutput) -> None:
    run.alerts.extend(out.alerts)
    run.results.update((r.key(), r) for r, _ in out.results)
    run.records += out.counts["records"]
    run.readings += out.counts["readings"]
    run.windows += out.windows_closed
    for reason in [d.reason for d in out.dead_letters] + [r.reason for r in out.refused]:
        run.refused[reason] = run.refused.get(reason, 0) + 1
    for ts in (out.first_ts, out.last_ts):
        if ts is not None:
            run.first_ts = ts if run.first_ts is None else min(run.first_ts, ts)
            run.last_ts = ts if run.last_ts is None else max(run.last_ts, ts)


def load_city(directory: Path) -> tuple[Topology, list[dict[str, Any]], dict[str, Any]]:
    """The archive, labels and spec a ``gridwatch simulate`` directory holds."""
    meters = directory / "meters.csv"
    if not meters.exists():
        raise OfflineInputError(f"{meters}: no such file (the archive is needed to judge areas)")
    areas = directory / "areas.csv"
    topology = Topology.from_csv(meters, areas if areas.exists() else None)
    labels_path = directory / "labels.jsonl"
    labels = []
    if labels_path.exists():
        with labels_path.open("rb") as f:
            labels = [orjson.loads(line) for line in f if line.strip()]
    spec_path = directory / "spec.json"
    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    return topology, labels, spec
