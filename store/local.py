"""``gridwatch store`` as a child process, for `make run`, the benchmark and the tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from streams.localrun import WorkerProcess
from streams.settings import REPO


class StoreProcess(WorkerProcess):
    """Like the worker's child process (metrics, kill, stop), running ``gridwatch store``."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.metrics_port = int(self.env.get("GRIDWATCH_STORE_METRICS_PORT", "9310"))

    def start(self) -> StoreProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "store"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self
