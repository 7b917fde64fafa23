"""gridwatch: live line loss of transformer areas and meter anomalies, on Kafka.

Settings come from GRIDWATCH_* environment variables or a .env file in the working directory
(`gridwatch settings` shows them). Exit codes: 0 done, 1 a runtime failure (no broker, a port in
use), 2 bad usage, settings or input file. Every failure is reported in one line on stderr.
"""

from __future__ import annotations

import os

# numpy asks the kernel for huge pages on its large arrays. Where the kernel compacts memory to
# find them on a page fault (transparent huge pages with defrag "madvise", the default of many
# distributions) and finds none, that is kernel time for nothing: a 10 M-meter archive load took
# 8-10% more CPU with it on this project's test box, which got no huge page (docs/scaling.md).
# numpy reads it when first imported, so it is set before any import below (ruff: E402 waived
# for this file); an operator's own value wins.
NUMPY_HUGEPAGE_DEFAULT = "0"
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", NUMPY_HUGEPAGE_DEFAULT)

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import orjson
import typer
from typer._click.exceptions import NoArgsIsHelpError as NoArgsIsHelp  # typer 0.29 vendors click
from typer._click.exceptions import UsageError as BadUsage
from typer.core import TyperArgument, TyperCommand, TyperGroup

from cli_errors import BrokerUnavailable, CommandError, UsageError, explain
from streams.settings import REPO, Settings, load_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help=__doc__,
    rich_markup_mode=None,  # plain text: help reads the same in a terminal, a pipe or a file
    pretty_exceptions_enable=False,  # main() reports errors, one line each
)
topology_app = typer.Typer(no_args_is_help=True, help="The grid model on the topology topic.")
broker_app = typer.Typer(no_args_is_help=True, help="The local single-node Kafka broker (.gridwatch/broker).")
app.add_typer(topology_app, name="topology")
app.add_typer(broker_app, name="broker")

SAMPLE = REPO / "data" / "sample"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"gridwatch {version('gridwatch')}")
        except PackageNotFoundError:
            typer.echo("gridwatch (not installed: run from a checkout)")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


def _settings(bootstrap: str | None = None) -> Settings:
    """Settings from the environment and .env, --bootstrap on top (raises SettingsError)."""
    return load_settings(**({"bootstrap": bootstrap} if bootstrap else {}))


def _require_broker(s: Settings) -> None:
    """Fail in GRIDWATCH_CONNECT_TIMEOUT_S, in one line, when no broker answers: the clients
    would otherwise retry for 30 s or more (Faust: a 71-line traceback) before saying so."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError, KafkaTimeoutError

    from streams.kafkaio import security_kwargs

    wait_ms = int(s.connect_timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=s.bootstrap,
            bootstrap_timeout_ms=wait_ms,
            request_timeout_ms=max(wait_ms, 1000),
            **security_kwargs(s),
        )
    except KafkaTimeoutError:
        raise BrokerUnavailable(s.bootstrap, s.connect_timeout_s) from None
    except KafkaError as exc:  # reached, but refused: authentication, TLS, protocol
        raise UsageError(f"Kafka at {s.bootstrap} refused the connection: {exc}") from None
    admin.close()


def _require_free_port(host: str, port: int, variable: str) -> None:
    """An endpoint's port must be free before the service starts (else: a traceback later)."""
    from local.kafka import port_taken

    if port_taken(port, host):
        raise CommandError(f"port {port} on {host} is in use (another worker?): stop it, or set {variable}")


Bootstrap = Annotated[
    str | None, typer.Option(help="Kafka bootstrap host:port (default GRIDWATCH_BOOTSTRAP, 127.0.0.1:9092)")
]


@app.command()
def worker(
    bootstrap: Bootstrap = None,
    loglevel: str = typer.Option("info", help="Log level: debug, info, warning or error."),
) -> None:
    """Run one gridwatch worker in the foreground (stop with Ctrl-C)."""
    s = _settings(bootstrap)
    _require_free_port(s.metrics_host, s.metrics_port, "GRIDWATCH_METRICS_PORT")
    _require_free_port(s.web_host, s.web_port, "GRIDWATCH_WEB_PORT")
    _require_broker(s)
    s.data_dir.mkdir(parents=True, exist_ok=True)  # Faust's table state; a fresh directory has none

    from streams.app import run_worker

    sys.argv = [sys.argv[0], "worker"]  # Faust parses argv; keep ours out of it
    run_worker(s, loglevel=loglevel)


@app.command()
def notify(bootstrap: Bootstrap = None) -> None:
    """Deliver alerts to the duty webhook: signed, retried, paced.

    HMAC-signed POSTs, retried with backoff, rate-limited, dead-lettered when undeliverable
    (docs/notify.md).
    """
    s = _settings(bootstrap)
    if s.notify_metrics_port:
        _require_free_port(s.metrics_host, s.notify_metrics_port, "GRIDWATCH_NOTIFY_METRICS_PORT")
    _require_broker(s)

    from notifier.notify import run_notify

    run_notify(s)


@app.command()
def store(bootstrap: Bootstrap = None) -> None:
    """Write lineloss, alerts, verdicts and the archive to PostgreSQL (GRIDWATCH_PG_DSN; docs/store.md)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    from store.sink import run_store
    from streams.kafkaio import KafkaUnavailable

    try:
        run_store(_settings(bootstrap))
    except (psycopg.OperationalError, PoolTimeout, KafkaUnavailable) as exc:
        typer.echo(f"gridwatch store: {str(exc).strip().splitlines()[0]}", err=True)
        raise typer.Exit(1) from None


@app.command()
def topics(bootstrap: Bootstrap = None) -> None:
    """Create gridwatch's topics (existing ones are left alone)."""
    from streams.kafkaio import create_topics, security_kwargs
    from streams.topics import topic_specs

    s = _settings(bootstrap)
    _require_broker(s)
    created = create_topics(
        s.bootstrap,
        topic_specs(s),
        bootstrap_timeout_ms=int(s.connect_timeout_s * 1000),
        **security_kwargs(s),
    )
    typer.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@topology_app.command("load")
def topology_load(
    meters_csv: Path = typer.Argument(
        ..., metavar="METERS_CSV", help="The meter archive: meter_id, area_id, multiplier, ... columns."
    ),
    bootstrap: Bootstrap = None,
) -> None:
    """Publish a meters CSV to the topology topic.

    One record per meter version on the compacted topic. Excel's CSVs are read (BOM, CRLF, `;` or
    tab); every bad row is reported with its line number and nothing is published then.
    """
    from archive_csv import read_meters
    from streams.kafkaio import produce, security_kwargs

    s = _settings(bootstrap)
    records, table = read_meters(meters_csv)  # every bad row reported before Kafka is asked
    _require_broker(s)
    n = produce(
        s.bootstrap,
        ((s.topic_topology, r.topic_key(), orjson.dumps(r.to_dict())) for r in records),
        bootstrap_timeout_ms=int(s.connect_timeout_s * 1000),
        **security_kwargs(s),
    )
    typer.echo(f"published {n} meter records to {s.topic_topology} (read {meters_csv}: {table.dialect()})")


@app.command("settings")
def show_settings() -> None:
    """Print the effective settings, secrets hidden.

    One line per GRIDWATCH_* variable: its value and where it came from (environment, .env or
    default). Secrets show only whether they are set.
    """
    from streams.settings import effective

    rows = effective(_settings())
    widths = [max(len(row[i]) for row in rows) for i in (0, 1)]
    for name, value, source in rows:
        typer.echo(f"{name:<{widths[0]}}  {value:<{widths[1]}}  {source}".rstrip())


@app.command()
def schemas(
    out: Path = typer.Option(REPO / "docs" / "contracts", help="Directory the *.schema.json files go to."),
) -> None:
    """Write the JSON Schema of every message contract.

    Generated from streams/contracts.py into docs/contracts by default.
    """
    from streams.contracts import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        typer.echo(f"wrote {out / name}")


@app.command("sample")
def sample(
    out: Path = typer.Option(SAMPLE, help="Directory the sample city goes to."),
    areas: int = typer.Option(12, help="Transformer areas."),
    meters: int = typer.Option(60, help="Customer meters per area."),
    days: float = typer.Option(1.0, help="Days of 15-minute readings."),
    seed: int = typer.Option(7, help="Random seed (the committed sample uses 7)."),
) -> None:
    """Write the small demo city committed in data/sample.

    meters.csv, areas.csv, readings.jsonl.gz and labels.json, from a fixed seed.
    """
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


SIM_TARGETS = ("jsonl", "jsonl.gz", "parquet", "kafka")


@app.command()
def simulate(
    to: str = typer.Option("jsonl", help=f"where readings go: {' | '.join(SIM_TARGETS)}"),
    out: Path = typer.Option(Path(".gridwatch/sim"), help="directory for archive, labels (and readings)"),
    seed: int = typer.Option(7, help="random seed: the same seed gives the same city"),
    areas: int = typer.Option(20, help="transformer areas (ignored when --meters is set)"),
    meters: int | None = typer.Option(None, help="total customer meters; areas follow"),
    days: float = typer.Option(1.0, help="days of readings"),
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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    bootstrap: Bootstrap = None,
) -> None:
    """Simulate a city with labelled anomalies, to files or to Kafka.

    Files: JSONL or Parquet readings beside meters.csv, areas.csv and labels (docs/simulator.md).
    """
    from simulator.anomalies import AnomalySpec
    from simulator.city import aligned_start
    from simulator.faults import TransportSpec
    from simulator.files import JsonlSink, ParquetSink
    from simulator.publish import KafkaSink
    from simulator.run import Sink
    from simulator.run import simulate as run_simulation
    from simulator.synth import SimSpec
    from simulator.thieves import ThiefSpec
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
        if to == "parquet":
            sink = ParquetSink(out / "readings.parquet")
        elif to != "kafka":
            sink = JsonlSink(out / f"readings.{to}")
    except (ValueError, RuntimeError) as exc:
        raise typer.BadParameter(str(exc)) from None
    if to == "kafka":
        s = _settings(bootstrap)
        _require_broker(s)
        sink = KafkaSink(s)
    try:
        summary = run_simulation(spec, out, sink, speed=speed, progress=progress)
    except RuntimeError as exc:  # the sink's own: a send the broker refused
        raise CommandError(str(exc)) from None
    typer.echo(
        f"{summary.readings:,} readings in {summary.messages:,} records ({summary.areas} areas, "
        f"{summary.meters:,} meters) to {to}; {summary.labels:,} labels in {out / 'labels.jsonl'}; "
        f"{summary.seconds:.1f}s, {summary.readings_per_s:,.0f} readings/s"
    )


@app.command(short_help="Score detectors and suspects on a file.")
def evaluate(
    directory: Path = typer.Argument(
        ...,
        metavar="DIR",
        help="a gridwatch simulate or sample directory (meters.csv, labels.jsonl or labels.json)",
    ),
    readings: Path | None = typer.Option(
        None,
        help="readings file (simulator JSONL or a gridwatch record file); default DIR/readings.jsonl(.gz)",
    ),
    labels: Path | None = typer.Option(
        None, help="labels file; default DIR/labels.jsonl, else DIR/labels.json"
    ),
    out: Path | None = typer.Option(
        None, help="folder for detection.json / .html; default a new ./gridwatch-evaluate-<UTC time>"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="a progress bar on stderr"),
) -> None:
    """Score the detectors and the suspect ranking on a recorded or simulated file, through the
    worker's own path, without Kafka (docs/detection.md). Exit 2: bad input; 1: the run failed."""
    from evaluation.evaluate import LabelsError, check_inputs, count_records, evaluate_files, out_dir
    from evaluation.report import BARS, measured_bars, progress_bar, report_html, summary_lines
    from streams.offline import OfflineInputError

    def fail(message: str, code: int) -> NoReturn:
        typer.echo(f"gridwatch evaluate: {message}", err=True)
        raise typer.Exit(code)

    if not directory.is_dir():
        fail(f"{directory}: no such directory", 2)
    target = out_dir(out)
    if target is None:
        fail(f"{out}: inside gridwatch's own files; pass --out a folder of your own", 2)
    try:
        source = check_inputs(directory, readings, labels)  # fails before the run and its progress bar
        s = Settings()
        with progress_bar(progress, source, count_records) as advance:
            res = evaluate_files(
                directory,
                readings=source,
                labels=labels,
                suspect_score=s.suspect_score,
                min_completeness=s.min_completeness,
                progress=advance,
            )
    except (LabelsError, OfflineInputError, ValueError, OSError) as exc:
        fail(str(exc), 2)
    res["bars"] = BARS
    res["bars_measured"] = measured_bars(res)
    try:
        target.mkdir(parents=True, exist_ok=True)
        (target / "detection.json").write_text(json.dumps(res, indent=2, sort_keys=True) + "\n")
        (target / "detection.html").write_text(report_html(res))
    except OSError as exc:
        fail(f"{target}: cannot write ({exc.strerror})", 1)
    typer.echo(
        f"{res['source']}: {res['readings']:,} readings in {res['records']:,} records, {res['areas']} areas, "
        f"{res['meters']:,} meters, {res['days']:g} day(s) from {res['start']} in {res['seconds']}s; "
        f"labels {res['labels_file']}"
    )
    for line in summary_lines(res):
        typer.echo(line)
    typer.echo(f"wrote {target / 'detection.json'} and {target / 'detection.html'}")


WAIT_HELP = "seconds to wait for the broker (default GRIDWATCH_CONNECT_TIMEOUT_S)"


@app.command(short_help="Dump topics to a recording file.")
def record(
    topics: list[str] = typer.Argument(..., help="topics to dump, from the beginning to their current end"),
    out: Path = typer.Option(..., "--out", "-o", help="recording file (.jsonl, or .jsonl.gz to compress)"),
    bootstrap: Bootstrap = None,
    timeout: float | None = typer.Option(None, help=WAIT_HELP),
) -> None:
    """Dump topics to a file: key, value, timestamp, partition, offset, headers, and each topic's
    partition count and settings (docs/simulator.md). Progress on stderr."""
    from local.replay import progress_bars
    from local.replay import record as record_topics
    from streams.kafkaio import security_kwargs

    s = _settings(bootstrap)
    wait = s.connect_timeout_s if timeout is None else timeout
    with progress_bars() as bars:
        counts = record_topics(s.bootstrap, topics, out, timeout_s=wait, progress=bars, **security_kwargs(s))
    typer.echo(
        f"recorded {sum(counts.values()):,} records ({', '.join(f'{t}: {n:,}' for t, n in counts.items())}) "
        f"to {out}"
    )


@app.command(short_help="Write a recording back to Kafka.")
def replay(
    file: Path = typer.Argument(..., help="a file written by gridwatch record"),
    rename: list[str] = typer.Option([], help="OLD=NEW: replay topic OLD into NEW (repeatable)"),
    speed: float = typer.Option(0.0, help="x the recorded pace (by timestamps); 0 = as fast as possible"),
    shift_to: str | None = typer.Option(
        None, help="'now' or an ISO 8601 time: move every event time so the last one lands there"
    ),
    shift_by: str | None = typer.Option(None, help="move every event time by this much (30d, -2h, 1w2d)"),
    bootstrap: Bootstrap = None,
    timeout: float | None = typer.Option(None, help=WAIT_HELP),
) -> None:
    """Write a recording back to Kafka: same keys, values, timestamps, partitions; missing topics
    are created like the recorded ones. --shift-to now replays an old recording as current: event
    times and Kafka timestamps move by whole windows (GRIDWATCH_WINDOW_S). Progress on stderr."""
    from local.replay import parse_duration, parse_instant, progress_bars
    from local.replay import replay as replay_file
    from streams.kafkaio import security_kwargs

    mapping = {}
    for item in rename:
        old, sep, new = item.partition("=")
        if not (sep and old and new):
            raise typer.BadParameter(f"--rename {item!r}: expected OLD=NEW")
        mapping[old] = new
    to = by = None
    try:
        flag = "--shift-to"
        to = None if shift_to is None else parse_instant(shift_to)
        flag = "--shift-by"
        by = None if shift_by is None else parse_duration(shift_by)
        if to is not None and by is not None:
            raise ValueError("give --shift-to or --shift-by, not both")
    except ValueError as exc:
        raise typer.BadParameter(f"{flag}: {exc}") from None
    s = _settings(bootstrap)
    wait = s.connect_timeout_s if timeout is None else timeout
    with progress_bars() as bars:
        result = replay_file(
            s.bootstrap, file, rename=mapping, speed=speed, shift_to=to, shift_by=by,
            align_s=s.window_s, timeout_s=wait, progress=bars, **security_kwargs(s),
        )
    sent = ", ".join(f"{t}: {n:,}" for t, n in result.sent.items())
    moved = f"; {result.repartitioned:,} placed by key (partition missing)" if result.repartitioned else ""
    created = f"; created {', '.join(result.created)}" if result.created else ""
    shifted = f"; {result.describe_shift()}" if result.shift else ""
    typer.echo(f"replayed {sum(result.sent.values()):,} records ({sent}){moved}{created}{shifted}")


@app.command()
def run(
    speed: float = typer.Option(0.0, help="x real time; 0 = as fast as possible"),
    port: int = typer.Option(9092, help="the local broker's port on 127.0.0.1"),
    keep: bool = typer.Option(False, "--keep", help="leave broker and worker running at the end"),
) -> None:
    """The main job, locally: broker, worker, demo, summary.

    Starts the local broker, creates the topics, publishes the sample's archive, starts a worker,
    streams the sample shifted to end now and shows a summary; stops both at the end.
    """
    from local.run import run_local

    run_local(sample_dir=SAMPLE, speed=speed, port=port, keep=keep)


BROKER_DIR = Path(".gridwatch/broker")


@broker_app.command("start")
def broker_start(
    port: int = typer.Option(9092, help="the broker's port on 127.0.0.1"),
    version: str = typer.Option(
        "3.9.2",
        envvar="GRIDWATCH_KAFKA_VERSION",
        help="Kafka version (3.9.x or 4.x; jars from Maven Central)",
    ),
) -> None:
    """Start the local broker in the background (state in .gridwatch/broker)."""
    from local import kafka as broker

    b = broker.start_background(BROKER_DIR, port=port, version=version)
    typer.echo(f"broker at {b}")


@broker_app.command("stop")
def broker_stop() -> None:
    """Stop the local broker started by `gridwatch broker start`."""
    from local import kafka as broker

    typer.echo("stopped" if broker.stop_background(BROKER_DIR) else "no broker was running")


@broker_app.command("status")
def broker_status() -> None:
    """Say whether the local broker runs, and where (exit 1 when it does not)."""
    from local import kafka as broker

    st = broker.status(BROKER_DIR)
    typer.echo(st)
    if not st.running:
        raise typer.Exit(1)


class _Command(TyperCommand):
    """Usage lines as click writes them (`gridwatch evaluate [OPTIONS] DIRECTORY`), not typer
    0.29's `{directory}`."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or param.name or "").upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces


for _typer in (app, topology_app, broker_app):
    for _info in _typer.registered_commands:
        _info.cls = _Command


def _command_path(argv: Sequence[str]) -> str:
    """`gridwatch topology load` for argv ["topology", "load", ...]: the prefix of the errors."""
    group = typer.main.get_command(app)
    words = ["gridwatch"]
    for arg in argv:
        if not isinstance(group, TyperGroup) or arg not in group.commands:
            break
        group = group.commands[arg]
        words.append(arg)
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; every failure it can explain is one line on stderr and exit 1 or 2."""
    import logging

    # kafka-python logs each failed connection attempt itself; the command says it once.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name="gridwatch", standalone_mode=False)
    except NoArgsIsHelp as exc:  # `gridwatch`, `gridwatch topology`: the help, as click shows it
        typer.echo(exc.format_message())
        return 2
    except BadUsage as exc:  # bad options or arguments (click's own, BadParameter)
        where = exc.ctx.command_path if exc.ctx else _command_path(args)
        typer.echo(f"{where}: {exc.format_message()} (see `{where} --help`)", err=True)
        return 2
    except typer.Abort:
        typer.echo(f"{_command_path(args)}: interrupted", err=True)
        return 130
    except Exception as exc:
        explained = explain(exc)
        if explained is None:
            raise  # a bug: the traceback is what its report needs
        # One line per problem, each with the command; indented lines detail the one above.
        prefix = _command_path(args)
        lines = explained.message.splitlines() or [type(exc).__name__]
        typer.echo("\n".join(line if line[:1].isspace() else f"{prefix}: {line}" for line in lines), err=True)
        return explained.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
