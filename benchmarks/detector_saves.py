"""Bytes one save of an area's detector state writes to the changelog, as the area ages.

    python benchmarks/detector_saves.py                  # after 0.5, 7 and 30 days
    python benchmarks/detector_saves.py --days 1,30 --meters 300

A simulated city of two areas (``--meters`` customer meters each, 15-minute readings in
concentrator batches) goes through ``streams.offline.run_records`` with suspects on, the
worker's detection path, up to an hour before the end; the area's state is then taken as a save
takes it (its ring slots written so far count as saved), the last hour is run, and one save is
measured as the worker writes it (``streams.detection_stage``: zlib-compressed, base64, the table
value's text):

* ``whole_snapshot_bytes``: the area's whole snapshot in one value (how every save was written
  before the suspect ranker's rings were saved by day-slot);
* ``head_bytes`` + ``slot_bytes`` (``slots`` values): what a save writes now;
* ``input_bytes_per_area_hour``: the area's readings of that hour as JSON values (the worker
  saves an area when its alerts change, else at most every half allowed lateness, one hour by
  default), so ``save_over_hour_input`` is the detector changelog's size against the input in
  steady state.

Writes benchmarks/results/detector_saves.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.detection import Detection  # noqa: E402
from simulator.city import CitySpec, build, messages  # noqa: E402
from streams.detection_stage import encode_detector_state  # noqa: E402
from streams.offline import run_records  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _stored(blob: bytes) -> int:
    value = encode_detector_state(blob)
    if value is None:
        raise SystemExit("a value does not fit one changelog record")
    return len(value["z64"])


def measure(days: float, meters: int, seed: int) -> dict[str, Any]:
    city = build(CitySpec(areas=2, meters_per_area=meters, days=days, seed=seed))
    records = [(m.kind, m.key.encode(), orjson.dumps(m.value)) for m in messages(city)]
    hour = round(len(records) / (days * 24))  # the messages of the last hour (in time order)
    area = city.area_ids[0]
    ids = city.customers[area]
    detection = Detection(suspects=True)
    run_records(records[:-hour], city.topology, detection)
    detection.take_ring_slots(area)  # the save before
    run_records(records[-hour:], city.topology, detection)
    whole = _stored(detection.snapshot_area(area, ids))
    head = _stored(detection.snapshot_area(area, ids, rings=False))
    slots = {name: _stored(blob) for name, blob in detection.take_ring_slots(area).items()}
    hour_input = sum(len(value) for _kind, key, value in records[-hour:] if key.decode() == area)
    save = head + sum(slots.values())
    return {
        "days": days,
        "meters": meters,
        "whole_snapshot_bytes": whole,
        "head_bytes": head,
        "slots": slots,
        "slot_bytes": sum(slots.values()),
        "save_bytes": save,
        "whole_over_save": round(whole / save, 2),
        "input_bytes_per_area_hour": hour_input,
        "whole_over_hour_input": round(whole / hour_input, 2),
        "save_over_hour_input": round(save / hour_input, 2),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", default="0.5,7,30", help="area ages, comma-separated")
    p.add_argument("--meters", type=int, default=100, help="customer meters per area")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    began = time.process_time()
    rows = []
    for days in (float(d) for d in args.days.split(",")):
        row = measure(days, args.meters, args.seed)
        rows.append(row)
        print(
            f"{days:>5g} days: whole snapshot {row['whole_snapshot_bytes']:,} B; now head "
            f"{row['head_bytes']:,} B + {len(row['slots'])} slot(s) {row['slot_bytes']:,} B = "
            f"{row['save_bytes']:,} B ({row['whole_over_save']}x less); an hour of the area's input "
            f"{row['input_bytes_per_area_hour']:,} B: {row['whole_over_hour_input']}x -> "
            f"{row['save_over_hour_input']}x of it",
            flush=True,
        )
    command = " ".join(["python benchmarks/detector_saves.py", *(argv or sys.argv[1:])])
    res: dict[str, Any] = {"command": command, "runs": rows}
    res["cpu_s"] = round(time.process_time() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detector_saves.json").write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
