"""``gridwatch store`` as a child process, for `make run`, the benchmark and the tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from local.run import WorkerProcess
from streams.settings import REPO


class StoreProcess(WorkerProcess):
    """Like the worker's child process (metrics, kill, stop), running ``gridwatch store``."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.metrics_port = int(self.env.get("GRIDWATCH_STORE_METRICS_PORT", "9310"))

    def start(self) -> StoreProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "store"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self


def start_local_store(state: Path, env: Mapping[str, str]) -> tuple[StoreProcess, str]:
    """For `make run`: PostgreSQL in ``state``/postgres (kept between runs) and a store process
    reading the demo's topics; returns the process and a line saying where to look."""
    from local import postgres

    pg = postgres.start_background(state / "postgres")
    assert pg.dsn is not None
    store_env = {
        **env,
        "GRIDWATCH_PG_DSN": pg.dsn,
        "GRIDWATCH_STORE_GROUP_ID": f"{env.get('GRIDWATCH_APP_ID', 'gridwatch')}-store",
    }
    store = StoreProcess(store_env, state / "store.log").start()
    where = (
        f"[bold]store[/] pid {store.proc.pid if store.proc else '?'}, metrics "
        f"http://127.0.0.1:{store.metrics_port}/metrics, log {store.log_path}\n"
        f"[bold]postgres[/] {str(pg).removeprefix('postgres ')};"
        ' psql "$(python -m local.postgres dsn)": tables lineloss, alerts,'
        " inspections; views cases, ledger_daily, ledger_monthly; Grafana: gridwatch-area, gridwatch-cases\n"
    )
    return store, where


def stop_local_store(state: Path, store: StoreProcess) -> None:
    from local import postgres

    store.stop()
    postgres.stop_background(state / "postgres")
