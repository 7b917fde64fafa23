"""Run a simulation into a sink (files or Kafka) at a pace, with a progress bar; write the
archive, the spec and the labels beside it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from simulator.files import write_archive, write_labels
from simulator.stream import Delivery, Streamer
from simulator.synth import Sim, SimSpec


class Sink(Protocol):
    def open(self, sim: Sim) -> None: ...
    def write(self, batch: Sequence[Delivery]) -> None: ...
    def close(self) -> None: ...


@dataclass
class Summary:
    areas: int
    meters: int
    messages: int = 0
    readings: int = 0
    labels: int = 0
    seconds: float = 0.0

    @property
    def readings_per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


class Pacer:
    """Holds records back to ``speed`` x their simulated arrival pace (0: no waiting)."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.origin: tuple[int, float] | None = None

    def wait(self, at: int) -> None:
        if self.speed <= 0:
            return
        if self.origin is None:
            self.origin = (at, time.monotonic())
        delay = self.origin[1] + (at - self.origin[0]) / self.speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _groups(batch: list[Delivery]) -> Iterator[list[Delivery]]:
    i = 0
    while i < len(batch):
        j = i + 1
        while j < len(batch) and batch[j].at == batch[i].at:
            j += 1
        yield batch[i:j]
        i = j


@contextmanager
def _progress(enabled: bool, total: int, summary: Summary) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]simulate[/] reads"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("simulate", total=total, rate="")
        started = time.perf_counter()

        def advance() -> None:
            rate = summary.readings / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=1, rate=f"{summary.readings:,} readings, {rate:,.0f}/s")

        yield advance


def simulate(spec: SimSpec, out: Path, sink: Sink, *, speed: float = 0.0, progress: bool = False) -> Summary:
    """Build the city, stream it into ``sink``; write meters.csv, areas.csv, spec.json and
    labels.jsonl to ``out``."""
    started = time.perf_counter()
    sim = Sim.build(spec)
    out.mkdir(parents=True, exist_ok=True)
    write_archive(sim.topology(), sim.grid.area_ids, out)
    (out / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n")
    summary = Summary(areas=len(sim.grid.area_ids), meters=sim.grid.meters)
    streamer = Streamer(sim)
    pacer = Pacer(speed)

    def emit(batch: list[Delivery]) -> None:
        for group in _groups(batch) if speed > 0 else [batch]:
            if group:
                pacer.wait(group[0].at)
            sink.write(group)
        summary.messages += len(batch)
        summary.readings += sum(d.readings for d in batch)

    sink.open(sim)
    try:
        with _progress(progress, spec.steps + 1, summary) as advance:
            for chunk in sim.chunks():
                for batch in streamer.feed(chunk):
                    emit(batch)
                    if advance is not None:
                        advance()
            emit(streamer.flush())
    finally:
        sink.close()
    labels = sorted(sim.labels() + streamer.labels, key=lambda d: (d["start"], d["type"], d["entity"]))
    summary.labels = write_labels(labels, out / "labels.jsonl")
    summary.seconds = time.perf_counter() - started
    return summary
