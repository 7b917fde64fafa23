"""The local stack: a worker as a child process, and the main job that runs the demo end to end."""

from __future__ import annotations

import gzip
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streams.settings import REPO, Settings


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


def free_port() -> int:
    """A port free now on 127.0.0.1, below the kernel's ephemeral range.

    A port the kernel hands out for bind(0) comes from the ephemeral range, which outgoing
    connections draw their local ports from too: a worker restarted on the same metrics port
    (the crash tests restart one four to eleven times) found it taken by some Kafka client's
    connection. Ports below the range are only ever taken by an explicit bind.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        if port in _HANDED_OUT:  # free now, but promised to an earlier caller
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket() as s:  # crowded: take what the kernel gives
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class WorkerProcess:
    """``gridwatch worker`` in a child process, configured through GRIDWATCH_* variables."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = int(self.env.get("GRIDWATCH_METRICS_PORT", "9308"))

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "worker",
                "--loglevel",
                self.env.get("GRIDWATCH_LOGLEVEL", "warning"),
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash or an OOM kill."""
        if self.proc is not None and self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def metrics_text(self, timeout: float = 2.0) -> str:
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """One sample's value from the worker's endpoint, or None if absent/unreachable."""
        values = self.metric_values(name, labels)
        return values[0] if values else None

    def metric_sum(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """Sum over every sample of ``name`` whose labels include ``labels``."""
        values = self.metric_values(name, labels)
        return sum(values) if values else None

    def metric_values(self, name: str, labels: Mapping[str, str] | None = None) -> list[float]:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.metrics_text()
        except OSError:
            return []
        wanted = dict(labels or {}).items()
        return [
            float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and wanted <= sample.labels.items()
        ]

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def injected(sample_dir: Path) -> list[str]:
    """What the sample injects on purpose, from its labels.json, one line per anomaly.

    >>> injected(REPO / "data" / "sample")[0]
    'theft in area A0003: 10 meters bill 80% less than they use -> high loss'
    """
    import json

    try:
        labels = json.loads((sample_dir / "labels.json").read_text())
    except (OSError, ValueError):
        return []
    lines = []
    for area in labels.get("theft_areas", []):
        thieves = len(labels.get("thieves", {}).get(area, []))
        share = labels.get("theft_share")
        less = f"{share:.0%} less" if isinstance(share, float) else "less"
        lines.append(f"theft in area {area}: {thieves} meters bill {less} than they use -> high loss")
    lines += [
        f"supply meter of area {area} under-registers (as a wrong multiplier would) -> negative loss"
        for area in labels.get("negative_areas", [])
    ]
    lines += [
        f"a quarter of area {area}'s meters fall silent for two hours mid-day -> incomplete there"
        for area in labels.get("outage_areas", [])
    ]
    return lines


def _wait_for_group_coordinator(settings: Any, timeout_s: float = 60.0) -> None:
    """Ask for the worker group's offsets until the broker answers.

    A fresh broker creates __consumer_offsets on the first group request and answers
    COORDINATOR_NOT_AVAILABLE (then NOT_COORDINATOR) until its partitions are loaded; a worker
    started then logs that as errors and warnings. Asking first leaves the demo's log clean.
    """
    from streams.kafkaio import group_offsets

    deadline = time.monotonic() + timeout_s
    while group_offsets(settings) is None and time.monotonic() < deadline:
        time.sleep(0.5)


def _port_or_free(port: int) -> int:
    from local.kafka import port_taken

    return free_port() if port_taken(port) else port


def run_local(*, sample_dir: Path, speed: float, port: int, keep: bool) -> None:
    """Broker, topics, topology, a worker, the demo stream, and a live summary until done."""
    from contextlib import nullcontext

    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from archive_csv import read_meters
    from local import kafka as broker
    from streams.kafkaio import create_topics, producer
    from streams.settings import load_settings
    from streams.topics import topic_specs

    # In a pipe or a file: no live redraws (they glue the table to the next line), a fixed width.
    console = Console() if sys.stdout.isatty() else Console(width=100, force_terminal=False)
    state = REPO / ".gridwatch"
    bootstrap = str(broker.start_background(state / "broker", port=port).bootstrap)
    console.print(f"[bold]broker[/] {bootstrap}")
    app_id = f"gridwatch-demo-{int(time.time())}"
    env = {
        "GRIDWATCH_BOOTSTRAP": bootstrap,
        "GRIDWATCH_APP_ID": app_id,
        "GRIDWATCH_AREAS_CSV": str(sample_dir / "areas.csv"),
        "GRIDWATCH_IDLE_CLOSE_S": "3",
        "GRIDWATCH_DATA_DIR": str(state / "worker"),
        "GRIDWATCH_METRICS_PORT": str(_port_or_free(9308)),
        "GRIDWATCH_WEB_PORT": str(_port_or_free(6066)),
        "GRIDWATCH_TOPIC_READINGS": f"{app_id}.readings",
        "GRIDWATCH_TOPIC_SUPPLY": f"{app_id}.supply-readings",
        "GRIDWATCH_TOPIC_LINELOSS": f"{app_id}.lineloss",
        "GRIDWATCH_TOPIC_DEADLETTER": f"{app_id}.deadletter",
        "GRIDWATCH_TOPIC_TOPOLOGY": f"{app_id}.topology",
    }
    os.environ.update(env)
    s = load_settings()
    create_topics(s.bootstrap, topic_specs(s))
    prod = producer(s.bootstrap)
    meters, _ = read_meters(sample_dir / "meters.csv")
    for rec in meters:
        prod.send(s.topic_topology, key=rec.topic_key(), value=orjson.dumps(rec.to_dict()))
    prod.flush()
    _wait_for_group_coordinator(s)
    (state / "worker.log").unlink(missing_ok=True)  # this run's log only
    worker = WorkerProcess(env, state / "worker.log").start()
    console.print(f"[bold]worker[/] pid {worker.proc.pid if worker.proc else '?'}, log {worker.log_path}")
    console.print(f"[bold]metrics[/] http://127.0.0.1:{s.metrics_port}/metrics")
    from local.store import start_local_store, stop_local_store  # the results store (docs/store.md)

    store, store_where = start_local_store(state, env)
    console.print(store_where)
    records = list(sample_records(s, sample_dir / "readings.jsonl.gz", rebase_to=datetime.now(UTC)))
    anomalies = injected(sample_dir)
    console.print(
        f"[bold]demo[/] {len(meters)} meters in {len({m.area_id for m in meters})} areas, "
        f"{len(records):,} Kafka records (a record is one reading or a concentrator's batch of them)",
        soft_wrap=True,
    )
    if anomalies:
        console.print("[bold]injected on purpose[/], for the detectors to find:")
        for line in anomalies:
            console.print(f"  - {line}")
    sent = 0
    first_ts = records[0][1] if records else 0
    started = time.monotonic()
    window = f"{s.window_s // 60} min" if s.window_s < 3600 else f"{s.window_s / 3600:g} h"

    def summary() -> Table:
        t = Table(title=f"gridwatch demo: {sent:,}/{len(records):,} records sent", title_justify="left")
        t.add_column("measure")
        t.add_column("value", justify="right")
        t.add_column("unit")
        ratio = worker.metric("gridwatch_pass_ratio")
        t.add_row(
            f"pass rate, latest {window} window",
            f"{ratio:.1%}" if ratio is not None else "-",
            "of judged areas",
        )
        for st in ("qualified", "high_loss", "negative_loss", "incomplete", "no_supply"):
            v = worker.metric("gridwatch_areas", {"state": st})
            t.add_row(f"  {st}", f"{v:.0f}" if v is not None else "-", "areas")
        comp = worker.metric("gridwatch_collection_completeness_ratio")
        t.add_row("collection completeness", f"{comp:.1%}" if comp is not None else "-", "of meters reported")
        emitted = worker.metric_sum("gridwatch_area_windows_emitted_total") or 0
        t.add_row("line-loss results emitted", f"{emitted:,.0f}", "area-windows")
        acc = worker.metric_sum("gridwatch_readings_total", {"outcome": "accepted"})
        t.add_row("readings accepted", f"{acc:,.0f}" if acc is not None else "-", "meter readings")
        rej = worker.metric_sum("gridwatch_readings_rejected_total")
        t.add_row("readings dead-lettered", f"{rej:,.0f}" if rej is not None else "0", "meter readings")
        rows = store.metric_sum("gridwatch_store_rows_written_total")
        t.add_row("rows written to PostgreSQL", f"{rows:,.0f}" if rows is not None else "-", "table rows")
        return t

    live = console.is_terminal
    try:
        with Live(summary(), console=console, refresh_per_second=2) if live else nullcontext() as view:

            def refresh() -> None:
                if view is not None:
                    view.update(summary())

            for topic, ts, key, value in records:
                if speed > 0:
                    due = started + (ts - first_ts) / speed
                    while (delay := due - time.monotonic()) > 0:
                        time.sleep(min(delay, 0.5))
                        refresh()
                prod.send(topic, key=key, value=value)
                sent += 1
                if sent % 200 == 0:
                    refresh()
            prod.flush()
            if not live:
                console.print(f"sent {sent:,} records; waiting for the worker to close the last windows")
            # Wait for the worker to drain and close the last windows (idle close).
            last, stable = -1.0, 0
            while stable < 4 and worker.alive():
                time.sleep(1.5)
                refresh()
                now = worker.metric_sum("gridwatch_area_windows_emitted_total") or 0
                stable = stable + 1 if now == last and now > 0 else 0
                last = now
        if not live:
            console.print(summary())
        console.print(
            f"Pass rate = qualified areas / areas judged (qualified, high or negative loss) in the latest "
            f"{window} window; incomplete areas are not judged (docs/design.md). "
            + ("Below 100% here by design: the anomalies injected above." if anomalies else ""),
            soft_wrap=True,
        )
        if not worker.alive():
            console.print("[red]worker exited[/]\n" + worker.log_tail())
    except KeyboardInterrupt:
        pass
    finally:
        prod.close()
        if not keep:
            worker.stop()
            stop_local_store(state, store)
            broker.stop_background(state / "broker")
            console.print("stopped worker, store, PostgreSQL and broker (use --keep to leave them running)")
