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
def notify(bootstrap: Bootstrap = None) -> None:
    """Deliver the alerts topic to the duty webhook: HMAC-signed, retried, rate-limited."""
    from streams.notify import NotifyConfigError, run_notify

    try:
        run_notify(_settings(bootstrap))
    except NotifyConfigError as exc:
        typer.echo(f"gridwatch notify: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def topics(bootstrap: Bootstrap = None) -> None:
    """Create gridwatch's topics (existing ones are left alone)."""
    from streams.kafkaio import create_topics, security_kwargs
    from streams.topics import topic_specs

    s = _settings(bootstrap)
    created = create_topics(s.bootstrap, topic_specs(s), **security_kwargs(s))
    typer.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@topology_app.command("load")
def topology_load(
    meters_csv: Path = typer.Argument(..., exists=True, dir_okay=False),
    bootstrap: Bootstrap = None,
) -> None:
    """Publish a meters CSV to the compacted topology topic (one record per meter version)."""
    from streams.kafkaio import produce, security_kwargs
    from topology import MeterRecord, _read_csv

    s = _settings(bootstrap)
    records = []
    for i, row in enumerate(_read_csv(meters_csv), start=2):
        try:
            rec = MeterRecord.from_dict(row)
        except ValueError as exc:
            raise typer.BadParameter(f"{meters_csv}:{i}: {exc}") from None
        records.append((s.topic_topology, rec.topic_key(), orjson.dumps(rec.to_dict())))
    n = produce(s.bootstrap, records, **security_kwargs(s))
    typer.echo(f"published {n} meter records to {s.topic_topology}")


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


SIM_TARGETS = ("jsonl", "jsonl.gz", "parquet", "kafka")


@app.command()
def simulate(
    to: str = typer.Option("jsonl", help=f"where readings go: {' | '.join(SIM_TARGETS)}"),
    out: Path = typer.Option(Path(".gridwatch/sim"), help="directory for archive, labels (and readings)"),
    seed: int = 7,
    areas: int = typer.Option(20, help="transformer areas (ignored when --meters is set)"),
    meters: int | None = typer.Option(None, help="total customer meters; areas follow"),
    days: float = 1.0,
    interval: int = typer.Option(900, help="metering interval, seconds"),
    start: str | None = typer.Option(
        None, help="first read, ISO 8601 (default 2026-01-01T00:00Z; with --to kafka, so the data ends now)"
    ),
    single: bool = typer.Option(False, "--single", help="single readings instead of concentrator batches"),
    anomaly: list[str] = typer.Option(
        [], help="TYPE=N, repeatable (default: one of each type per 1000 meters)"
    ),
    theft_share: float | None = typer.Option(None, help="share of energy a theft_h1 takes (default drawn)"),
    clean: bool = typer.Option(
        False, "--clean", help="no anomalies (except --anomaly ones), no transport faults"
    ),
    households: str = typer.Option("smooth", help="smooth | realistic (docs/simulator.md)"),
    thief_areas: float = typer.Option(
        0.0, help="share of areas with several thieves (1-15% of their customers; docs/simulator.md)"
    ),
    speed: float = typer.Option(0.0, help="x real time by arrival; 0 = as fast as possible"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    bootstrap: Bootstrap = None,
) -> None:
    """A synthetic city with labelled anomalies: to files (JSONL, Parquet) or to the topics."""
    from simulator.anomalies import AnomalySpec
    from simulator.city import aligned_start
    from simulator.faults import TransportSpec
    from simulator.files import JsonlSink, ParquetSink
    from simulator.publish import KafkaSink
    from simulator.run import Sink
    from simulator.run import simulate as run_simulation
    from simulator.synth import SimSpec
    from simulator.thieves import ThiefSpec
    from streams.kafkaio import KafkaUnavailable
    from streams.replay import quiet_kafka_logs
    from topology import parse_time

    if to not in SIM_TARGETS:
        raise typer.BadParameter(f"--to must be one of {', '.join(SIM_TARGETS)}")
    counts: dict[str, int] = {}
    for item in anomaly:
        name, _, n = item.partition("=")
        if not n.isdigit():
            raise typer.BadParameter(f"--anomaly {item!r}: expected TYPE=N")
        counts[name] = int(n)
    try:
        if start is not None:
            first = parse_time(start)
        elif to == "kafka":  # the worker refuses readings older than 35 days
            first = aligned_start(datetime.now(UTC), days, interval)
            first = datetime.fromtimestamp(int(first.timestamp()) // interval * interval, UTC)
        else:
            first = datetime(2026, 1, 1, tzinfo=UTC)
        spec = SimSpec(
            seed=seed,
            areas=areas,
            meters=meters,
            days=days,
            interval_s=interval,
            start=first,
            batches=not single,
            anomalies=(
                AnomalySpec.only(counts, theft_share=theft_share)
                if clean
                else AnomalySpec(counts=counts, theft_share=theft_share)
            ),
            transport=TransportSpec.none() if clean else TransportSpec(),
            households=households,
            thieves=ThiefSpec(area_share=thief_areas),
        )
        sink: Sink
        if to == "kafka":
            quiet_kafka_logs()
            sink = KafkaSink(_settings(bootstrap))
        elif to == "parquet":
            sink = ParquetSink(out / "readings.parquet")
        else:
            sink = JsonlSink(out / f"readings.{to}")
    except (ValueError, RuntimeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        summary = run_simulation(spec, out, sink, speed=speed, progress=progress)
    except (KafkaUnavailable, RuntimeError) as exc:
        typer.echo(f"gridwatch simulate: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"{summary.readings:,} readings in {summary.messages:,} records ({summary.areas} areas, "
        f"{summary.meters:,} meters) to {to}; {summary.labels:,} labels in {out / 'labels.jsonl'}; "
        f"{summary.seconds:.1f}s, {summary.readings_per_s:,.0f} readings/s"
    )


@app.command()
def evaluate(
    directory: Path = typer.Argument(..., help="a gridwatch simulate directory (meters.csv, labels.jsonl)"),
    readings: Path | None = typer.Option(
        None, help="readings file (simulator JSONL or a gridwatch record file); default DIR/readings.jsonl"
    ),
    out: Path = typer.Option(REPO / "benchmarks" / "results", help="where detection.json / .html go"),
) -> None:
    """Score the detectors on a recorded or simulated file, without Kafka (docs/detection.md)."""
    from streams.evaluate import evaluate_files
    from streams.offline import OfflineInputError
    from streams.report import BARS, report_html

    try:
        res = evaluate_files(directory, readings=readings)
    except (OfflineInputError, ValueError) as exc:
        typer.echo(f"gridwatch evaluate: {exc}", err=True)
        raise typer.Exit(1) from None
    res["bars"] = BARS
    out.mkdir(parents=True, exist_ok=True)
    (out / "detection.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
    (out / "detection.html").write_text(report_html(res))
    typer.echo(f"{'type':<22}{'labels':>7}{'prec':>7}{'recall':>7}{'f1':>7}{'delay':>7}")
    for name, e in sorted(res["by_type"].items()):
        cells = [e["precision"], e["recall"], e["f1"], e["median_delay_intervals"]]
        shown = "".join(f"{'-' if v is None else f'{v:.2f}':>7}" for v in cells)
        typer.echo(f"{name:<22}{e['labels']:>7}{shown}")
    typer.echo(
        f"false alerts per 1,000 meter-days: {res['false_alerts_per_1000_meter_days']:.2f}; "
        f"{res['readings']:,} readings in {res['seconds']}s; wrote {out / 'detection.json'}"
    )


@app.command()
def record(
    topics: list[str] = typer.Argument(..., help="topics to dump, from the beginning to their current end"),
    out: Path = typer.Option(..., "--out", "-o", help="recording file (.jsonl, or .jsonl.gz to compress)"),
    bootstrap: Bootstrap = None,
    timeout: float = typer.Option(10.0, help="seconds to wait for the broker"),
) -> None:
    """Dump topics to a file: key, value, timestamp, partition, offset, headers (docs/simulator.md)."""
    from streams.kafkaio import security_kwargs
    from streams.replay import ReplayError, quiet_kafka_logs
    from streams.replay import record as record_topics

    quiet_kafka_logs()
    s = _settings(bootstrap)
    try:
        counts = record_topics(s.bootstrap, topics, out, timeout_s=timeout, **security_kwargs(s))
    except ReplayError as exc:
        typer.echo(f"gridwatch record: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"recorded {sum(counts.values()):,} records ({', '.join(f'{t}: {n:,}' for t, n in counts.items())}) "
        f"to {out}"
    )


@app.command()
def replay(
    file: Path = typer.Argument(..., help="a file written by gridwatch record"),
    rename: list[str] = typer.Option([], help="OLD=NEW: replay topic OLD into NEW (repeatable)"),
    speed: float = typer.Option(0.0, help="x the recorded pace (by timestamps); 0 = as fast as possible"),
    bootstrap: Bootstrap = None,
    timeout: float = typer.Option(10.0, help="seconds to wait for the broker"),
) -> None:
    """Write a recording back to Kafka: same keys, values, timestamps, partitions."""
    from streams.kafkaio import security_kwargs
    from streams.replay import ReplayError, quiet_kafka_logs
    from streams.replay import replay as replay_file

    quiet_kafka_logs()
    mapping = {}
    for item in rename:
        old, sep, new = item.partition("=")
        if not (sep and old and new):
            typer.echo(f"gridwatch replay: --rename {item!r}: expected OLD=NEW", err=True)
            raise typer.Exit(2)
        mapping[old] = new
    s = _settings(bootstrap)
    try:
        result = replay_file(
            s.bootstrap, file, rename=mapping, speed=speed, timeout_s=timeout, **security_kwargs(s)
        )
    except ReplayError as exc:
        typer.echo(f"gridwatch replay: {exc}", err=True)
        raise typer.Exit(1) from None
    sent = ", ".join(f"{t}: {n:,}" for t, n in result.sent.items())
    moved = f"; {result.repartitioned:,} placed by key (partition missing)" if result.repartitioned else ""
    typer.echo(f"replayed {sum(result.sent.values()):,} records ({sent}){moved}")


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
