"""The grid archive per worker at city and province scale (issue #18).

    python benchmarks/topology.py                 # 2 M and 10 M meters; results/topology.json
    python benchmarks/topology.py --sizes 200000  # quick look
    python benchmarks/topology.py --repeats 3     # each load in 3 fresh processes, medians

For each archive size and each share of the 8 partitions a worker holds (1, 4 and all 8), a
fresh subprocess generates the topology topic's record values (150 meters per area, one supply
meter per area, 1% of the meters moved to another area with a second version), loads them the
way the worker does (streams.topology_decode.add_values: chunks of 10,000 values decoded into coded
columns and added to an ArchiveBuilder, which keeps the meters of the held partitions' areas), builds and
installs the archive, and reports:

* load time, wall and CPU (process_time), of decoding + building + installing (generating the
  values is not counted), and archive records per second;
* the meter directory a shard builds in the same pass (the partition of every meter it does not
  hold): its meters, bytes per meter and CPU time, which the load time and the RSS include;
* memory: the RSS delta of the process from before the load to after it (values and decoded
  chunks freed), and the bytes the archive's own arrays hold (``MeterArchive.nbytes``), both per
  meter held and per meter of the whole archive; and the peak RSS (VmHWM) during the load.

The old representation (every record decoded and applied to ``Topology`` as Python objects) is
measured the same way at ``--old-size`` meters (it takes ~630 bytes per meter, so 10 M would
need ~6 GB). A 40 M-meter estimate comes from the slope between the two largest sizes. The
machine is shared (2 cores): CPU time is the figure to compare, the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cli import NUMPY_HUGEPAGE_DEFAULT as WORKER_NUMPY_HUGEPAGE  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
PARTITIONS = 8
METERS_PER_AREA = 150
MOVED_SHARE = 0.01
CHUNK = 10_000  # as streams.topology_feed


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def record_values(meters: int, start: int, stop: int) -> list[bytes]:
    """Topic values of archive records ``start`` to ``stop`` (a deterministic city: area ``a``
    has customer meters ``A{a}-M{k}`` and one supply meter; every 100th meter has a second
    record moving it to the next area from 2026-01-01)."""
    areas = max(1, meters // METERS_PER_AREA)
    out = []
    template = (
        b'{"v":1,"meter_id":"%s","area_id":"%s","role":"%s","multiplier":%s,'
        b'"customer_class":"%s","active":true,"effective_from":"%s"}'
    )
    moved_every = int(1 / MOVED_SHARE)
    for r in range(start, stop):
        m = r if r < meters else (r - meters) * moved_every  # the extra records move meters
        a = m // METERS_PER_AREA % areas
        k = m % METERS_PER_AREA
        area = b"A%07d" % a
        if k == 0:
            meter, role, mult, cls = b"A%07d-S" % a, b"supply", b"80.0", b"supply"
        else:
            meter, role, mult, cls = b"A%07d-M%04d" % (a, k), b"customer", b"1.0", b"residential"
        when = b"2025-01-01T00:00:00Z"
        if r >= meters:
            area, when = b"A%07d" % ((a + 1) % areas), b"2026-01-01T00:00:00Z"
        out.append(template % (meter, area, role, mult, cls, when))
    return out


def measure_compact(meters: int, held: int) -> dict[str, Any]:
    """One load of the compact archive (run in a fresh process)."""
    import gc

    from archive import ArchiveBuilder
    from streams.topology_decode import ChunkDecoder, add_values
    from streams.topology_feed import TopologyFeed, area_partition, release_free_memory
    from topology import Topology

    records = meters + meters // int(1 / MOVED_SHARE)
    held_set = frozenset(range(held))
    keep = None if held >= PARTITIONS else (lambda area: area_partition(area, PARTITIONS) in held_set)
    # As the feed: a shard also builds the meter directory of every meter it does not hold.
    partition_of = None if keep is None else (lambda area: area_partition(area, PARTITIONS))
    assert TopologyFeed  # the worker's path: the same decoder and builder calls
    gc.collect()
    rss0 = _status_kb("VmRSS")
    wall = cpu = 0.0
    builder = ArchiveBuilder(keep, partition_of=partition_of)
    decoder = ChunkDecoder()
    refused = 0
    for start in range(0, records, CHUNK):
        values = record_values(meters, start, min(records, start + CHUNK))
        w, c = time.perf_counter(), time.process_time()
        bad = add_values(builder, decoder, values)
        wall += time.perf_counter() - w
        cpu += time.process_time() - c
        refused += len(bad)
        del values
    w, c = time.perf_counter(), time.process_time()
    archive = builder.build()
    topo = Topology()
    topo.install(archive)
    wall += time.perf_counter() - w
    cpu += time.process_time() - c
    directory_cpu_s = builder.directory_cpu_s
    del builder, decoder
    gc.collect()
    release_free_memory()  # as the feed does after a load
    rss1 = _status_kb("VmRSS")
    # A lookup per meter, as the engine does per reading (a sample: their cost per call).
    sample = [f"A{a:07d}-M0001" for a in range(0, max(1, meters // METERS_PER_AREA), 7)][:20_000]
    c = time.process_time()
    found = sum(1 for m in sample if topo.placement_ts(m, 1.8e9) is not None)
    lookup_us = (time.process_time() - c) / max(1, len(sample)) * 1e6
    held_meters = archive.size
    directory = archive.directory
    directory_meters = directory.size if directory is not None else 0
    return {
        **_figures("compact", meters, records, held, held_meters, wall, cpu, rss1 - rss0),
        "refused": refused,
        "archive_nbytes_mb": round(archive.nbytes / 2**20, 1),
        "bytes_per_meter_held_arrays": round(archive.nbytes / max(1, held_meters), 1),
        "lookup_us_cpu": round(lookup_us, 2),
        "decode_only_records_per_s_cpu": _decode_floor(meters),
        "lookups_found": found,
        # The meter directory (shards only): in the load and the RSS above; here on its own.
        "directory_meters": directory_meters,
        "directory_mb": round(directory.nbytes / 2**20, 2) if directory is not None else 0.0,
        "directory_bytes_per_meter": (round(directory.nbytes / directory_meters, 2) if directory is not None
                                      and directory_meters else None),
        "directory_cpu_s": round(directory_cpu_s, 3),
        "records_per_s_cpu_without_directory": round(records / (cpu - directory_cpu_s)),
    }


def _decode_floor(meters: int) -> int:
    """Records per CPU second of msgspec decoding alone, the part no bulk path avoids: a yardstick
    for how fast this machine runs at the moment."""
    from streams.topology_decode import _row_decoder

    values = record_values(meters, 0, min(meters, CHUNK))
    c = time.process_time()
    for value in values:
        _row_decoder.decode(value)
    return round(len(values) / (time.process_time() - c))


def measure_old(meters: int) -> dict[str, Any]:
    """The representation before: every record decoded and applied as Python objects."""
    import gc

    from streams import contracts
    from topology import MeterRecord, Role, Topology

    records = meters + meters // int(1 / MOVED_SHARE)
    gc.collect()
    rss0 = _status_kb("VmRSS")
    topo = Topology()
    wall = cpu = 0.0
    for start in range(0, records, CHUNK):
        values = record_values(meters, start, min(records, start + CHUNK))
        w, c = time.perf_counter(), time.process_time()
        for value in values:
            rec = contracts.decode_topology(value)
            topo.apply(
                MeterRecord(rec.meter_id, rec.area_id, Role(rec.role), rec.multiplier,
                            rec.customer_class, rec.active, rec.effective_from.astimezone(UTC))
            )
        wall += time.perf_counter() - w
        cpu += time.process_time() - c
        del values
    gc.collect()
    rss1 = _status_kb("VmRSS")
    return _figures("old", meters, records, PARTITIONS, topo.meter_count(), wall, cpu, rss1 - rss0)


def _figures(
    kind: str, meters: int, records: int, held: int, held_meters: int, wall: float, cpu: float, rss_kb: int
) -> dict[str, Any]:
    return {
        "representation": kind,
        "meters": meters,
        "records": records,
        "partitions_held": held,
        "partitions": PARTITIONS,
        "meters_held": held_meters,
        "load_wall_s": round(wall, 3),
        "load_cpu_s": round(cpu, 3),
        "records_per_s_cpu": round(records / cpu),
        "records_per_s_wall": round(records / wall),
        "rss_delta_mb": round(rss_kb / 1024, 1),
        "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
        "bytes_per_meter_held_rss": round(rss_kb * 1024 / max(1, held_meters), 1),
        "bytes_per_archive_meter_rss": round(rss_kb * 1024 / meters, 1),
    }


def child_env() -> dict[str, str]:
    """The children's environment: numpy's huge-page switch as the worker sets it (``cli``),
    unless this process was given one."""
    return {"NUMPY_MADVISE_HUGEPAGE": WORKER_NUMPY_HUGEPAGE, **os.environ}


def run_child(kind: str, meters: int, held: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, str(meters), str(held)]
    print(f"  {kind} {meters:,} meters, {held}/{PARTITIONS} partitions ...", flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, env=child_env())
    if out.returncode != 0:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    print("   ", json.dumps(result), flush=True)
    return result


def run_repeated(meters: int, held: int, repeats: int) -> dict[str, Any]:
    """``repeats`` fresh processes of one compact load: the figures of the first, with load
    time and RSS delta (and what is derived from them) replaced by their medians over the runs,
    every run's kept. A median, not a best: the RSS delta of a small shard moves by 1-3 MB
    between fresh processes of one tree (heap the load leaves pinned), and this box is shared."""
    results = [run_child("compact", meters, held) for _ in range(repeats)]
    if repeats == 1:
        return results[0]
    out = dict(results[0])
    for key in ("load_wall_s", "load_cpu_s", "rss_delta_mb", "directory_cpu_s"):
        out[key] = statistics.median(r[key] for r in results)
        out[key + "_runs"] = [r[key] for r in results]
    records, held_meters, rss_b = out["records"], max(1, out["meters_held"]), out["rss_delta_mb"] * 2**20
    out.update(
        repeats=repeats,
        records_per_s_cpu=round(records / out["load_cpu_s"]),
        records_per_s_wall=round(records / out["load_wall_s"]),
        records_per_s_cpu_without_directory=round(records / (out["load_cpu_s"] - out["directory_cpu_s"])),
        bytes_per_meter_held_rss=round(rss_b / held_meters, 1),
        bytes_per_archive_meter_rss=round(rss_b / meters, 1),
        peak_rss_mb=max(r["peak_rss_mb"] for r in results),
    )
    return out


def _slope(rows: list[dict[str, Any]], key: str, at: int) -> float:
    """``key`` at ``at`` meters, by the line through the two largest sizes."""
    rows = sorted(rows, key=lambda r: r["meters"])[-2:]
    if len(rows) < 2:
        return float(rows[0][key]) * at / rows[0]["meters"]
    (x0, y0), (x1, y1) = ((r["meters"], float(r[key])) for r in rows)
    return y0 + (y1 - y0) / (x1 - x0) * (at - x0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 10_000_000])
    ap.add_argument("--held", type=int, nargs="+", default=[1, 4, PARTITIONS])
    ap.add_argument("--old-size", type=int, default=500_000, help="old representation's meters (0: none)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=1,
                    help="fresh processes per compact load; their median load time and RSS delta")
    ap.add_argument("--out", type=Path, default=RESULTS / "topology.json")
    args = ap.parse_args()
    if args.child:
        kind, meters, held = args.child[0], int(args.child[1]), int(args.child[2])
        result = measure_compact(meters, held) if kind == "compact" else measure_old(meters)
        print(json.dumps(result))
        return 0

    load_before = os.getloadavg()
    runs = [run_repeated(n, h, args.repeats) for n in args.sizes for h in args.held]
    old = [run_child("old", args.old_size, PARTITIONS)] if args.old_size else []
    by_held = {h: [r for r in runs if r["partitions_held"] == h] for h in args.held}
    largest = max(args.sizes)
    at_largest = {h: next(r for r in by_held[h] if r["meters"] == largest) for h in args.held}
    estimate = {
        str(h): {
            "rss_delta_mb": round(_slope(rows, "rss_delta_mb", 40_000_000)),
            "load_cpu_s": round(_slope(rows, "load_cpu_s", 40_000_000), 1),
            "load_wall_s": round(_slope(rows, "load_wall_s", 40_000_000), 1),
        }
        for h, rows in by_held.items()
    }
    acceptance: dict[str, Any] = {
        "max_bytes_per_meter_held_rss": max(r["bytes_per_meter_held_rss"] for r in runs),
        "bytes_per_meter_held_ok": all(r["bytes_per_meter_held_rss"] <= 64 for r in runs),
        "min_records_per_s_cpu": min(r["records_per_s_cpu"] for r in runs),
        "min_records_per_s_wall": min(r["records_per_s_wall"] for r in runs),
        "load_rate_ok_cpu": all(r["records_per_s_cpu"] >= 1_000_000 for r in runs),
    }
    if 1 in at_largest and PARTITIONS in at_largest:
        ratio = at_largest[1]["rss_delta_mb"] / at_largest[PARTITIONS]["rss_delta_mb"]
        acceptance["one_eighth_over_all_rss_at_largest"] = round(ratio, 3)
        acceptance["one_eighth_ok"] = ratio <= 1 / 6
    result = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/topology.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "params": {"sizes": args.sizes, "held": args.held, "partitions": PARTITIONS, "repeats": args.repeats,
                   "meters_per_area": METERS_PER_AREA, "moved_share": MOVED_SHARE, "chunk": CHUNK,
                   "numpy_madvise_hugepage": child_env()["NUMPY_MADVISE_HUGEPAGE"]},
        "runs": runs,
        "old": old,
        "estimate_40M": estimate,
        "acceptance": acceptance,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"estimate_40M": estimate, "acceptance": acceptance}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
