"""Write a city to files: the archive (meters.csv, areas.csv), its readings as JSONL (or
Parquet, when pyarrow is installed), and labels."""

from __future__ import annotations

import base64
import csv
import gzip
import importlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from simulator.city import City, Message
from topology import Topology

if TYPE_CHECKING:
    from simulator.stream import Delivery
    from simulator.synth import Sim


def write_city(city: City, msgs: Iterable[Message], out: Path) -> None:
    write_archive(city.topology, city.area_ids, out)
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


def write_archive(topology: Topology, area_ids: Iterable[str], out: Path) -> None:
    """meters.csv (every archive record) and areas.csv, as ``gridwatch topology load`` reads them."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "meters.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["meter_id", "area_id", "role", "multiplier", "customer_class", "active", "effective_from"]
        )
        for rec in sorted(topology.records(), key=lambda r: (r.meter_id, r.effective_from)):
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
        for area_id in area_ids:
            area = topology.areas[area_id]
            w.writerow([area_id, area.area_class, "", ""])


def write_labels(labels: Iterable[dict[str, Any]], path: Path) -> int:
    """One JSON object per line: entity, type, start, end, area_id, role, parameters."""
    n = 0
    with path.open("wb") as f:
        for label in labels:
            f.write(orjson.dumps(label, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
            n += 1
    return n


def read_labels(path: Path) -> list[dict[str, Any]]:
    with path.open("rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def _is_json(value: bytes) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


class JsonlSink:
    """readings.jsonl(.gz): one line per Kafka record, in arrival order:
    ``{"kind", "key", "ts", "at", "value"}`` with ``value`` the record's JSON as sent, or
    ``value_b64`` for bytes that are not JSON (malformed records)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: BinaryIO | gzip.GzipFile | None = None

    def open(self, sim: Sim) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ".gz":
            # mtime=0 keeps the bytes deterministic for a seed; level 6 trades size for speed
            self._f = gzip.GzipFile(self.path, "wb", compresslevel=6, mtime=0)
        else:
            self._f = self.path.open("wb", buffering=1 << 20)

    def write(self, batch: Sequence[Delivery]) -> None:
        assert self._f is not None, "open() first"
        lines = []
        for d in batch:
            head = b'{"kind":"%s","key":%s,"ts":%d,"at":%d,' % (
                d.kind.encode(),
                orjson.dumps(d.key),
                d.ts,
                d.at,
            )
            if d.meter_ids is not None or _is_json(d.value):
                lines.append(head + b'"value":' + d.value + b"}\n")
            else:
                lines.append(head + b'"value_b64":"' + base64.b64encode(d.value) + b'"}\n')
        self._f.write(b"".join(lines))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class ParquetSink:
    """readings.parquet: one row per meter reading as delivered (arrival order, duplicates
    included): at, kind, key, ts, meter_id, register_kwh. Malformed records have no rows."""

    def __init__(self, path: Path, row_group: int = 1_000_000) -> None:
        try:  # optional: not a dependency of gridwatch
            pa = importlib.import_module("pyarrow")
            pq = importlib.import_module("pyarrow.parquet")
        except ImportError:
            raise RuntimeError("Parquet output needs pyarrow (pip install pyarrow)") from None
        self.pa, self.pq = pa, pq
        self.path = path
        self.row_group = row_group
        self.schema = pa.schema(
            [
                ("at", pa.timestamp("s", tz="UTC")),
                ("kind", pa.string()),
                ("key", pa.string()),
                ("ts", pa.timestamp("s", tz="UTC")),
                ("meter_id", pa.string()),
                ("register_kwh", pa.float64()),
            ]
        )
        self._cols: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        self._writer: Any = None

    def open(self, sim: Sim) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = self.pq.ParquetWriter(self.path, self.schema, compression="zstd")

    def write(self, batch: Sequence[Delivery]) -> None:
        c = self._cols
        for d in batch:
            if d.meter_ids is None or d.registers is None:
                continue
            n = len(d.meter_ids)
            c["at"].extend([d.at] * n)
            c["kind"].extend([d.kind] * n)
            c["key"].extend([d.key] * n)
            c["ts"].extend([d.ts] * n)
            c["meter_id"].extend(d.meter_ids)
            c["register_kwh"].extend(d.registers)
        if len(c["at"]) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if self._cols["at"]:
            self._writer.write_table(self.pa.table(self._cols, schema=self.schema))
            self._cols = {name: [] for name in self.schema.names}

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None
