"""The local stack: a worker as a child process, and the main job that runs the demo end to end."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from streams.settings import REPO


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
                "streams.cli",
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


def run_local(*, sample_dir: Path, speed: float, port: int, keep: bool) -> None:
    """Broker, topics, topology, a worker, the demo stream, and a live summary until done."""
    import orjson
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from streams import broker
    from streams.cli import sample_records
    from streams.kafkaio import create_topics, producer
    from streams.settings import Settings
    from streams.topics import topic_specs
    from topology import MeterRecord, _read_csv

    console = Console()
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
        "GRIDWATCH_TOPIC_READINGS": f"{app_id}.readings",
        "GRIDWATCH_TOPIC_SUPPLY": f"{app_id}.supply-readings",
        "GRIDWATCH_TOPIC_LINELOSS": f"{app_id}.lineloss",
        "GRIDWATCH_TOPIC_DEADLETTER": f"{app_id}.deadletter",
        "GRIDWATCH_TOPIC_TOPOLOGY": f"{app_id}.topology",
    }
    os.environ.update(env)
    s = Settings()
    create_topics(s.bootstrap, topic_specs(s))
    prod = producer(s.bootstrap)
    for row in _read_csv(sample_dir / "meters.csv"):
        rec = MeterRecord.from_dict(row)
        prod.send(s.topic_topology, key=rec.topic_key(), value=orjson.dumps(rec.to_dict()))
    prod.flush()
    worker = WorkerProcess(env, state / "worker.log").start()
    console.print(
        f"[bold]worker[/] pid {worker.proc.pid if worker.proc else '?'}, "
        f"metrics http://127.0.0.1:{s.metrics_port}/metrics, log {worker.log_path}"
    )
    from store.local import start_local_store, stop_local_store  # the results store (docs/store.md)

    store, store_where = start_local_store(state, env)
    console.print(store_where)
    records = list(sample_records(s, sample_dir / "readings.jsonl.gz", rebase_to=datetime.now(UTC)))
    sent = 0
    first_ts = records[0][1] if records else 0
    started = time.monotonic()

    def summary() -> Table:
        t = Table(title=f"gridwatch demo: {sent}/{len(records)} records sent")
        t.add_column("metric")
        t.add_column("value", justify="right")
        ratio = worker.metric("gridwatch_pass_ratio")
        t.add_row("pass rate, latest window", f"{ratio:.1%}" if ratio is not None else "-")
        emitted = worker.metric_sum("gridwatch_area_windows_emitted_total") or 0
        t.add_row("area-window results emitted", f"{emitted:.0f}")
        for st in ("qualified", "high_loss", "negative_loss", "incomplete", "no_supply"):
            v = worker.metric("gridwatch_areas", {"state": st})
            t.add_row(f"  areas {st}", f"{v:.0f}" if v is not None else "-")
        comp = worker.metric("gridwatch_collection_completeness_ratio")
        t.add_row("collection completeness", f"{comp:.1%}" if comp is not None else "-")
        acc = worker.metric_sum("gridwatch_readings_total", {"outcome": "accepted"})
        t.add_row("readings accepted", f"{acc:.0f}" if acc is not None else "-")
        rej = worker.metric_sum("gridwatch_readings_rejected_total")
        t.add_row("readings dead-lettered", f"{rej:.0f}" if rej is not None else "0")
        rows = store.metric_sum("gridwatch_store_rows_written_total")
        t.add_row("rows written to PostgreSQL", f"{rows:.0f}" if rows is not None else "-")
        return t

    try:
        with Live(summary(), console=console, refresh_per_second=2) as live:
            for topic, ts, key, value in records:
                if speed > 0:
                    due = started + (ts - first_ts) / speed
                    while (delay := due - time.monotonic()) > 0:
                        time.sleep(min(delay, 0.5))
                        live.update(summary())
                prod.send(topic, key=key, value=value)
                sent += 1
                if sent % 200 == 0:
                    live.update(summary())
            prod.flush()
            # Wait for the worker to drain and close the last windows (idle close).
            last, stable = -1.0, 0
            while stable < 4 and worker.alive():
                time.sleep(1.5)
                live.update(summary())
                now = worker.metric_sum("gridwatch_area_windows_emitted_total") or 0
                stable = stable + 1 if now == last and now > 0 else 0
                last = now
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
