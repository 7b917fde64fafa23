"""The throughput benchmark's profile classifier: waiting threads are idle, work is work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"
_spec = importlib.util.spec_from_file_location("gw_bench_throughput", _PATH)
assert _spec is not None and _spec.loader is not None
tp = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tp
_spec.loader.exec_module(tp)


@pytest.mark.parametrize(
    "leaf",
    [
        "_worker (/usr/lib/python3.11/concurrent/futures/thread.py:81)",
        "get (/usr/lib/python3.11/queue.py:171)",
        "EpollSelector.select (/usr/lib/python3.11/selectors.py:468)",
        "Condition.wait (/usr/lib/python3.11/threading.py:320)",
        "_wait_for_tstate_lock (/usr/lib/python3.11/threading.py:1132)",
    ],
)
def test_waiting_leaves_are_idle(leaf: str) -> None:
    assert tp.is_idle(leaf)


@pytest.mark.parametrize(
    "leaf",
    [
        "ingest (/work/main/streams/engine.py:212)",
        "_worker (/work/main/streams/app.py:40)",  # same name, our code: work
        "get (/work/main/models/detection.py:10)",
    ],
)
def test_work_is_not_idle(leaf: str) -> None:
    assert not tp.is_idle(leaf)


def test_hot_spots_share_excludes_idle_pool_worker(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "main (a.py:1);step (/x/models/detection.py:5) 30\n"
        "main (a.py:1);_bootstrap (/t/threading.py:1);_worker (/u/concurrent/futures/thread.py:81) 70\n"
    )
    spots = dict(tp.hot_spots(raw, "test"))
    assert spots["step (models/detection.py)"] == pytest.approx(1.0)
    assert spots[tp.IDLE_LABEL] == pytest.approx(0.7)
