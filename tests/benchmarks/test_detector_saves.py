"""benchmarks/detector_saves.py: one save of an area's detector state, whole vs by day-slot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import detector_saves  # noqa: E402


def test_a_save_of_a_two_day_old_area_writes_its_head_and_the_slots_of_the_last_hour(tmp_path: Path) -> None:
    res = detector_saves.main(["--days", "2", "--meters", "20", "--out", str(tmp_path)])
    (row,) = res["runs"]
    # the hour's bin is in one day-slot of the horizon and one of the finer recent bins
    assert sorted(name[0] for name in row["slots"]) == ["h", "w"]
    assert row["save_bytes"] == row["head_bytes"] + row["slot_bytes"] < row["whole_snapshot_bytes"]
    assert row["input_bytes_per_area_hour"] > 0
    assert json.loads((tmp_path / "detector_saves.json").read_text())["runs"] == [row]
