"""``gridwatch evaluate``: a simulated file through the worker's path (decoding, line-loss
engine, detection) gives the alerts the vectorised evaluation gives, and the report files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from evaluation.evaluate import run_detectors
from models.detection import Detection
from simulator.anomalies import AnomalySpec
from simulator.faults import TransportSpec
from simulator.synth import Sim, SimSpec
from streams.offline import load_city, run_file

COUNTS = {"stopped": 3, "theft_h2": 2, "rollback": 2, "spike": 2}


@pytest.fixture(scope="module")
def city_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    args = ["simulate", "--out", str(out), "--areas", "6", "--days", "3", "--clean", "--no-progress"]
    for kind, n in COUNTS.items():
        args += ["--anomaly", f"{kind}={n}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_file_path_alerts_equal_the_vectorised_path(city_dir: Path) -> None:
    topology, _, _ = load_city(city_dir)
    run = run_file(city_dir / "readings.jsonl", topology, Detection())
    spec = SimSpec(
        seed=7,
        areas=6,
        days=3,
        start=datetime(2026, 1, 1, tzinfo=UTC),
        anomalies=AnomalySpec.only(COUNTS),
        transport=TransportSpec.none(),
    )
    sim = Sim.build(spec)
    direct = run_detectors(sim, Detection(capacity=sim.grid.meters))
    assert run.alerts, "the injected anomalies raise alerts"
    assert sorted((r["id"], r["event"]) for r in run.alerts) == sorted((r["id"], r["event"]) for r in direct)


def test_cli_writes_the_report(city_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(city_dir), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "detection.json").read_text())
    assert {"meters", "days", "by_type", "false_alerts_per_1000_meter_days"} <= set(res)
    assert res["meters"] == 1080 and res["days"] == 3.0
    for entry in res["by_type"].values():
        assert {"precision", "recall", "f1", "median_delay_intervals"} <= set(entry)
    assert res["by_type"]["stopped"]["recall"] == 1.0
    assert "<svg" in (tmp_path / "detection.html").read_text()
    assert "stopped" in result.output


def test_cli_says_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nowhere")])
    assert result.exit_code == 2  # bad input (docs: 1 runtime, 2 usage)
    assert "nowhere: no such directory" in result.output
    (tmp_path / "city").mkdir()
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "city"), "--labels", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "meters.csv: no such file" in result.output
