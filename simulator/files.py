"""Write a city to files: the archive (meters.csv, areas.csv), its readings as JSONL, labels."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable
from pathlib import Path

import orjson

from simulator.city import City, Message


def write_city(city: City, msgs: Iterable[Message], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "meters.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["meter_id", "area_id", "role", "multiplier", "customer_class", "active", "effective_from"]
        )
        for rec in sorted(city.topology.records(), key=lambda r: (r.meter_id, r.effective_from)):
            d = rec.to_dict()
            w.writerow(
                [
                    d["meter_id"],
                    d["area_id"],
                    d["role"],
                    d["multiplier"],
                    d["customer_class"],
                    str(d["active"]).lower(),
                    d["effective_from"],
                ]
            )
    with (out / "areas.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["area_id", "area_class", "loss_lower", "loss_upper"])
        for area_id in city.area_ids:
            area = city.topology.areas[area_id]
            w.writerow([area_id, area.area_class, "", ""])
    # mtime=0 keeps the gzip bytes deterministic for a seed
    with gzip.GzipFile(out / "readings.jsonl.gz", "wb", mtime=0) as gz:
        for m in msgs:
            gz.write(orjson.dumps({"kind": m.kind, "key": m.key, "ts": m.ts, "value": m.value}))
            gz.write(b"\n")
    spec = city.spec
    labels = {
        "seed": spec.seed,
        "theft_areas": [city.area_ids[a] for a in spec.theft_areas],
        "theft_share": spec.theft_share,
        "thieves": {
            city.area_ids[a]: city.customers[city.area_ids[a]][: spec.thieves_per_area]
            for a in spec.theft_areas
        },
        "negative_areas": [city.area_ids[a] for a in spec.negative_areas],
        "outage_areas": [city.area_ids[a] for a in spec.outage_areas],
    }
    (out / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
