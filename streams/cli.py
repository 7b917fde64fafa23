"""The ``gridwatch`` command: worker, topics, topology, sample data, schemas, and the local run."""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer

from streams.settings import REPO, Settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
topology_app = typer.Typer(no_args_is_help=True, help="The grid model on the topology topic.")
broker_app = typer.Typer(no_args_is_help=True, help="The local single-node Kafka broker.")
app.add_typer(topology_app, name="topology")
app.add_typer(broker_app, name="broker")

SAMPLE = REPO / "data" / "sample"


def _settings(bootstrap: str | None) -> Settings:
    s = Settings()
    if bootstrap:
        s = s.model_copy(update={"bootstrap": bootstrap})
    return s


Bootstrap = Annotated[str | None, typer.Option(help="Kafka bootstrap (default from settings)")]


@app.command()
def worker(bootstrap: Bootstrap = None, loglevel: str = "info") -> None:
    """Run one gridwatch worker in the foreground."""
    from streams.app import run_worker

    sys.argv = [sys.argv[0], "worker"]  # Faust parses argv; keep ours out of it
    run_worker(_settings(bootstrap), loglevel=loglevel)


@app.command()
def topics(bootstrap: Bootstrap = None) -> None:
    """Create gridwatch's topics (existing ones are left alone)."""
    from streams.kafkaio import create_topics
    from streams.topics import topic_specs

    s = _settings(bootstrap)
    created = create_topics(s.bootstrap, topic_specs(s))
    typer.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@topology_app.command("load")
def topology_load(
    meters_csv: Path = typer.Argument(..., exists=True, dir_okay=False),
    bootstrap: Bootstrap = None,
) -> None:
    """Publish a meters CSV to the compacted topology topic (one record per meter version)."""
    from streams.kafkaio import produce
    from topology import MeterRecord, _read_csv

    s = _settings(bootstrap)
    records = []
    for i, row in enumerate(_read_csv(meters_csv), start=2):
        try:
            rec = MeterRecord.from_dict(row)
        except ValueError as exc:
            raise typer.BadParameter(f"{meters_csv}:{i}: {exc}") from None
        records.append((s.topic_topology, topology_key(rec), orjson.dumps(rec.to_dict())))
    n = produce(s.bootstrap, records)
    typer.echo(f"published {n} meter records to {s.topic_topology}")


def topology_key(rec: object) -> bytes:
    """Keyed by meter and effective time, so compaction keeps every version of a meter."""
    from topology import MeterRecord

    assert isinstance(rec, MeterRecord)
    return f"{rec.meter_id}|{rec.effective_from.isoformat()}".encode()


@app.command()
def schemas(out: Path = typer.Option(REPO / "docs" / "contracts")) -> None:
    """Write the JSON Schema of every contract (generated from streams/contracts.py)."""
    from streams.contracts import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        typer.echo(f"wrote {out / name}")


@app.command("sample")
def sample(
    out: Path = typer.Option(SAMPLE),
    areas: int = 12,
    meters: int = 60,
    days: float = 1.0,
    seed: int = 7,
) -> None:
    """Write the small committed demo city: meters.csv, areas.csv, readings.jsonl.gz."""
    from simulator.city import CitySpec, build, messages
    from simulator.files import write_city

    city = build(
        CitySpec(
            areas=areas,
            meters_per_area=meters,
            days=days,
            seed=seed,
            theft_areas=(3,),
            negative_areas=(7,),
            outage_areas=(9,),
        )
    )
    write_city(city, messages(city), out)
    typer.echo(f"wrote {out}")


def sample_records(
    s: Settings, path: Path, *, rebase_to: datetime | None = None
) -> Iterator[tuple[str, int, bytes, bytes]]:
    """(topic, event ts, key, value) of a JSONL(.gz) sample, shifted so it ends at
    ``rebase_to`` (readings older than the allowed age are refused, so a demo replays as now)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        lines = [orjson.loads(line) for line in f if line.strip()]
    shift = 0
    if rebase_to is not None and lines:
        last = max(int(r["ts"]) for r in lines)
        target = int(rebase_to.timestamp()) // s.interval_s * s.interval_s - s.interval_s
        shift = target - last
    for r in lines:
        value = r["value"]
        ts = int(r["ts"]) + shift
        if shift:
            value = {**value, "ts": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")}
        topic = s.topic_supply if r["kind"] == "supply" else s.topic_readings
        yield topic, ts, r["key"].encode(), orjson.dumps(value)


@app.command()
def run(
    speed: float = typer.Option(0.0, help="x real time; 0 = as fast as possible"),
    port: int = 9092,
    keep: bool = typer.Option(False, help="leave broker and worker running at the end"),
) -> None:
    """The main job, locally: broker, topics, topology, worker, demo stream, live summary."""
    from streams.localrun import run_local

    run_local(sample_dir=SAMPLE, speed=speed, port=port, keep=keep)


@broker_app.command("start")
def broker_start(port: int = 9092, version: str = "3.9.2") -> None:
    """Start the local broker in the background (state in .gridwatch/broker)."""
    from streams import broker

    b = broker.start_background(Path(".gridwatch/broker"), port=port, version=version)
    typer.echo(f"broker at {b}")


@broker_app.command("stop")
def broker_stop() -> None:
    from streams import broker

    broker.stop_background(Path(".gridwatch/broker"))


@broker_app.command("status")
def broker_status() -> None:
    from streams import broker

    typer.echo(broker.status(Path(".gridwatch/broker")))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
