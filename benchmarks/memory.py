"""Worker memory under ever-new meter ids and old windows (issue #6, section 4).

    python benchmarks/memory.py                        # 96 h of event time in 8 minutes (2 cores)
    python benchmarks/memory.py --hours 24 --wall 240 --unknown-per-area 100 --unknown-areas 100 --late 100
    python benchmarks/memory.py --backlog --drain 600   # the stream produced first: catching up
    python benchmarks/memory.py --max-rss-mb 200        # exit 1 above a bound

Starts its own Kafka broker (local.kafka.LocalKafka in a temporary directory) and a real worker
(``gridwatch worker`` through local.run.WorkerProcess, default settings: 15-minute windows,
2 h allowed lateness, detection on), publishes the topology of a deterministic city
(simulator.city: ``--areas`` x ``--meters`` customer meters and one supply meter per area), then
streams ``--hours`` of event time, paced over ``--wall`` seconds of wall time. Every interval end
carries:

* the city's own readings: one concentrator batch and one supply reading per area (a moving set
  of windows: each closes after the close delay and is released 2 h after its end);
* ``--unknown-per-area`` readings of brand-new meter ids in each area's batch, and
  ``--unknown-areas`` single readings of brand-new meters under brand-new area ids: never seen
  before, never seen again, dead-lettered as ``unknown_meter``; they must leave no state;
* ``--late`` readings of known meters for windows released hours ago (``late``): they must not
  reopen them.

Every ``--sample`` seconds it reads the worker's RSS (psutil if installed, else /proc/<pid>/status
VmRSS) and a few of its metrics; it prints RSS over time and the peak, and writes
benchmarks/results/memory.json. The run is bounded if RSS stops growing once the windows have
filled (the first lateness + window of event time): the summary reports the growth per 100,000
dead letters (nearly all never-seen ids) over the second half of them. ``--backlog`` produces the
whole stream first and then starts the worker: memory while catching up after an outage.
``--max-rss-mb`` makes it exit 1 above a bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
INTERVAL = 900


def rss_mb(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    try:
        import psutil  # type: ignore[import-untyped]

        info = psutil.Process(pid).memory_info()
        rss = info.rss / 2**20
        peak = getattr(info, "peak_wset", None)
    except ImportError:
        rss = peak = None
    except Exception:
        return None, None
    values: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024.0
    except OSError:
        pass
    return (rss if rss is not None else values.get("VmRSS")), (peak or values.get("VmHWM"))


@dataclass
class Sample:
    t: float  # wall seconds since the stream started
    event_h: float  # event time reached by the producer, hours since the stream's start
    rss_mb: float | None
    hwm_mb: float | None
    unknown_sent: int
    dead_letters: float
    open_windows: float | None
    accepted: float
    detector_meters: float | None
    detector_bytes: float | None


@dataclass
class Progress:
    event_h: float = 0.0
    unknown_sent: int = 0
    late_sent: int = 0
    records_sent: int = 0
    done: bool = False
    samples: list[Sample] = field(default_factory=list)


def build_stream(
    args: argparse.Namespace, start: datetime
) -> tuple[Any, dict[int, list[tuple[str, bytes, bytes]]]]:
    """The city, and per interval end its records as (topic kind, key, value)."""
    import orjson

    from simulator.city import CitySpec, build, messages

    city = build(
        CitySpec(areas=args.areas, meters_per_area=args.meters, days=args.hours / 24, start=start, seed=23)
    )
    by_ts: dict[int, list[tuple[str, bytes, bytes]]] = {}
    for m in messages(city):
        by_ts.setdefault(m.ts, []).append((m.kind, m.key.encode(), orjson.dumps(m.value)))
    return city, by_ts


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def hostile_for(
    args: argparse.Namespace, city: Any, k: int, ts: int, serial: list[int]
) -> tuple[list[Any], int, int]:
    """Records of interval ``k``: new unknown ids in each area's batch, new unknown areas, and
    late readings of known meters. Returns (records, unknown ids, late readings)."""
    import orjson

    recs: list[tuple[str, bytes, bytes]] = []
    unknown = late = 0
    for area in city.area_ids:
        items = []
        for _ in range(args.unknown_per_area):
            serial[0] += 1
            items.append({"meter_id": f"N{serial[0]:09d}", "register_kwh": float(serial[0] % 9973)})
        if items:
            value = {"kind": "batch", "v": 1, "area_id": area, "ts": iso(ts), "readings": items}
            recs.append(("readings", area.encode(), orjson.dumps(value)))
            unknown += len(items)
    for _ in range(args.unknown_areas):
        serial[0] += 1
        area = f"X{serial[0]:09d}"
        value = {"kind": "reading", "v": 1, "area_id": area, "meter_id": f"N{serial[0]:09d}", "ts": iso(ts),
                 "energy_kwh": 0.5}
        recs.append(("readings", area.encode(), orjson.dumps(value)))
        unknown += 1
    old = ts - 4 * 3600  # released long ago (2 h lateness)
    for i in range(args.late):
        area = city.area_ids[(k + i) % len(city.area_ids)]
        meter = city.customers[area][(k * 7 + i) % len(city.customers[area])]
        value = {
            "kind": "reading", "v": 1, "area_id": area, "meter_id": meter, "ts": iso(old), "energy_kwh": 0.2,
        }
        recs.append(("readings", area.encode(), orjson.dumps(value)))
        late += 1
    return recs, unknown, late


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--areas", type=int, default=20)
    ap.add_argument("--meters", type=int, default=50, help="customer meters per area")
    ap.add_argument("--hours", type=float, default=96.0, help="event time streamed")
    ap.add_argument("--wall", type=float, default=480.0, help="wall seconds to stream it in")
    ap.add_argument("--unknown-per-area", type=int, default=50, help="new unknown ids per area batch")
    ap.add_argument("--unknown-areas", type=int, default=50, help="new unknown areas per interval")
    ap.add_argument("--late", type=int, default=50, help="late readings per interval")
    ap.add_argument("--sample", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--kafka-version", default=os.environ.get("GRIDWATCH_KAFKA_VERSION"))
    ap.add_argument("--max-rss-mb", type=float, default=None, help="exit 1 if the peak RSS is above")
    ap.add_argument("--backlog", action="store_true",
                    help="produce the whole stream, then start the worker (catching up after an outage)")
    ap.add_argument("--drain", type=float, default=300.0, help="seconds to wait for the worker to catch up")
    ap.add_argument("--hold", type=float, default=5.0,
                    help="seconds to keep sampling the drained worker (to inspect it: py-spy, tracemalloc)")
    ap.add_argument("--out", type=Path, default=RESULTS / "memory.json")
    args = ap.parse_args()

    from local.kafka import DEFAULT_VERSION, LocalKafka
    from local.run import WorkerProcess, free_port
    from streams.kafkaio import create_topics, produce, producer
    from streams.settings import Settings
    from streams.topics import topic_specs

    version = args.kafka_version or DEFAULT_VERSION
    n_steps = int(args.hours * 3600 // INTERVAL)
    end = int(time.time()) // INTERVAL * INTERVAL - INTERVAL
    start = datetime.fromtimestamp(end - n_steps * INTERVAL, UTC)
    city, by_ts = build_stream(args, start)
    times = sorted(by_ts)
    tmp = Path(tempfile.mkdtemp(prefix="gridwatch-memory-"))
    print(f"broker: Kafka {version} in {tmp}", flush=True)
    broker = LocalKafka.start(tmp / "kafka", version=version)
    worker = None
    progress = Progress()
    try:
        app_id = f"gwmem-{uuid.uuid4().hex[:8]}"
        areas_csv = tmp / "areas.csv"
        areas_csv.write_text(
            "area_id,area_class,loss_lower,loss_upper\n"
            + "".join(f"{a},{city.topology.area_class(a)},,\n" for a in city.area_ids)
        )
        env = {
            "GRIDWATCH_BOOTSTRAP": broker.bootstrap,
            "GRIDWATCH_APP_ID": app_id,
            "GRIDWATCH_TOPIC_READINGS": f"{app_id}.readings",
            "GRIDWATCH_TOPIC_SUPPLY": f"{app_id}.supply",
            "GRIDWATCH_TOPIC_TOPOLOGY": f"{app_id}.topology",
            "GRIDWATCH_TOPIC_LINELOSS": f"{app_id}.lineloss",
            "GRIDWATCH_TOPIC_DEADLETTER": f"{app_id}.deadletter",
            "GRIDWATCH_TOPIC_ALERTS": f"{app_id}.alerts",
            "GRIDWATCH_TOPIC_ALERTS_DEADLETTER": f"{app_id}.alerts-deadletter",
            "GRIDWATCH_METRICS_PORT": str(free_port()),
            "GRIDWATCH_WEB_PORT": str(free_port()),
            "GRIDWATCH_DATA_DIR": str(tmp / "worker"),
            "GRIDWATCH_AREAS_CSV": str(areas_csv),
        }
        s = Settings(
            bootstrap=broker.bootstrap,
            topic_readings=env["GRIDWATCH_TOPIC_READINGS"],
            topic_supply=env["GRIDWATCH_TOPIC_SUPPLY"],
            topic_topology=env["GRIDWATCH_TOPIC_TOPOLOGY"],
            topic_lineloss=env["GRIDWATCH_TOPIC_LINELOSS"],
            topic_deadletter=env["GRIDWATCH_TOPIC_DEADLETTER"],
            topic_alerts=env["GRIDWATCH_TOPIC_ALERTS"],
            topic_alerts_deadletter=env["GRIDWATCH_TOPIC_ALERTS_DEADLETTER"],
        )
        create_topics(s.bootstrap, topic_specs(s))
        import orjson

        produce(s.bootstrap, [
            (s.topic_topology, r.topic_key(), orjson.dumps(r.to_dict())) for r in city.topology.records()
        ])
        prod = producer(s.bootstrap)
        topic = {"readings": s.topic_readings, "supply": s.topic_supply}
        serial = [0]

        def send(k: int, ts: int) -> None:
            hostile, unknown, late = hostile_for(args, city, k, ts, serial)
            for kind, key, value in by_ts[ts] + hostile:
                prod.send(topic[kind], key=key, value=value)
            prod.flush()
            progress.records_sent += len(by_ts[ts]) + len(hostile)
            progress.unknown_sent += unknown
            progress.late_sent += late
            progress.event_h = (ts - times[0]) / 3600

        if args.backlog:  # the whole stream waits on the broker, as after an outage
            for k, ts in enumerate(times):
                send(k, ts)
            print(f"backlog: {progress.records_sent} records produced before the worker starts", flush=True)
        worker = WorkerProcess(env, tmp / "worker.log").start()
        assert worker.proc is not None
        pid = worker.proc.pid
        deadline = time.monotonic() + 120
        while worker.metric("gridwatch_topology_meters") != city.topology.meter_count():
            if time.monotonic() > deadline or not worker.alive():
                raise SystemExit(f"worker did not load the topology:\n{worker.log_tail()}")
            time.sleep(0.5)
        idle_rss, _ = rss_mb(pid)
        print(f"worker pid {pid}: topology loaded ({city.topology.meter_count()} meters), "
              f"RSS {idle_rss:.1f} MB", flush=True)

        t0 = time.monotonic()

        def sampler() -> None:
            while not progress.done:
                rss, hwm = rss_mb(pid)
                w = worker
                assert w is not None
                progress.samples.append(Sample(
                    t=round(time.monotonic() - t0, 2),
                    event_h=round(progress.event_h, 3),
                    rss_mb=rss,
                    hwm_mb=hwm,
                    unknown_sent=progress.unknown_sent,
                    dead_letters=w.metric_sum("gridwatch_readings_rejected_total") or 0.0,
                    open_windows=w.metric("gridwatch_open_area_windows"),
                    accepted=w.metric_sum("gridwatch_readings_total", {"outcome": "accepted"}) or 0.0,
                    detector_meters=w.metric("gridwatch_detector_meters"),
                    detector_bytes=w.metric("gridwatch_detector_state_bytes"),
                ))
                time.sleep(args.sample)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        step_s = args.wall / max(1, len(times))
        for k, ts in enumerate(times if not args.backlog else []):
            due = t0 + k * step_s
            while (delay := due - time.monotonic()) > 0:
                time.sleep(min(delay, 0.2))
            send(k, ts)
            if not worker.alive():
                raise SystemExit(f"the worker stopped:\n{worker.log_tail()}")
        prod.close()
        streamed_s = time.monotonic() - t0
        # Let it drain: every unknown id and late reading dead-lettered, the windows closed.
        expected_dead = progress.unknown_sent + progress.late_sent
        drain_deadline = time.monotonic() + args.drain
        while (worker.metric_sum("gridwatch_readings_rejected_total") or 0) < expected_dead:
            if time.monotonic() > drain_deadline or not worker.alive():
                break
            time.sleep(1.0)
        got = worker.metric_sum("gridwatch_readings_rejected_total") or 0
        state = "drained" if got >= expected_dead else f"NOT drained after {args.drain:.0f} s"
        print(f"{state}: {got:.0f} of {expected_dead} dead letters; holding {args.hold:.0f} s", flush=True)
        time.sleep(max(5 * args.sample, args.hold))
        progress.done = True
        thread.join()
        alive = worker.alive()
        summary = summarize(args, progress, streamed_s, idle_rss, expected_dead, alive, n_steps, city)
    finally:
        progress.done = True
        if worker is not None:
            worker.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print_table(progress.samples)
    for line in summary["lines"]:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "kafka_version": version,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": {k: v for k, v in summary.items() if k != "lines"},
        "samples": [vars(x) for x in progress.samples],
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not summary["worker_alive"]:
        return 1
    if args.max_rss_mb is not None and (summary["peak_rss_mb"] or 0) > args.max_rss_mb:
        print(f"peak RSS {summary['peak_rss_mb']:.1f} MB is above the bound {args.max_rss_mb} MB")
        return 1
    return 0


def summarize(
    args: argparse.Namespace, p: Progress, streamed_s: float, idle_rss: float | None, expected_dead: int,
    alive: bool, n_steps: int, city: Any,
) -> dict[str, Any]:
    rss = [(x.t, x.rss_mb, x.unknown_sent) for x in p.samples if x.rss_mb is not None]
    peak = max((r for _, r, _ in rss), default=None)
    hwm = max((x.hwm_mb or 0 for x in p.samples), default=None)
    # Steady state: after the first lateness + window + close delay of event time (2.5 h) the
    # set of open windows stops growing. Growth is measured over the second half of the stream.
    final_dead = p.samples[-1].dead_letters if p.samples else 0.0
    half = [x for x in p.samples if x.dead_letters >= final_dead / 2 and x.rss_mb is not None]
    growth = None
    if len(half) >= 2 and half[-1].dead_letters > half[0].dead_letters:
        # least squares of RSS against dead letters written (nearly all of them never-seen ids)
        xs = [x.dead_letters for x in half]
        ys = [x.rss_mb or 0.0 for x in half]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
        growth = slope * 100_000
    open_max = max((x.open_windows or 0 for x in p.samples), default=0)
    last = p.samples[-1] if p.samples else None
    known = args.areas * (args.meters + 1)
    lines = [
        "",
        f"streamed {args.hours:g} h of event time ({n_steps} intervals) in {streamed_s:.0f} s: "
        f"{p.records_sent} records, {p.unknown_sent} never-seen meter ids, {p.late_sent} late readings",
        f"worker: {'alive' if alive else 'STOPPED'}; dead letters {last.dead_letters if last else 0:.0f} "
        f"of {expected_dead} expected; accepted readings {last.accepted if last else 0:.0f}",
        f"known meters {known} in {args.areas} areas; open area-windows max {open_max:.0f} "
        f"(now {last.open_windows if last else None})",
        f"RSS: idle {idle_rss or 0:.1f} MB after loading the topology, peak {peak or 0:.1f} MB "
        f"(VmHWM {hwm or 0:.1f} MB), end {rss[-1][1] if rss else 0:.1f} MB",
        f"growth over the second half: {growth:+.2f} MB per 100,000 dead letters (never-seen ids)"
        if growth is not None
        else "growth: not enough samples",
    ]
    return {
        "lines": lines,
        "worker_alive": alive,
        "records_sent": p.records_sent,
        "unknown_ids_sent": p.unknown_sent,
        "late_sent": p.late_sent,
        "dead_letters": last.dead_letters if last else None,
        "dead_letters_expected_at_least": expected_dead,
        "known_meters": known,
        "areas": args.areas,
        "open_area_windows_max": open_max,
        "idle_rss_mb": idle_rss,
        "peak_rss_mb": peak,
        "vm_hwm_mb": hwm,
        "end_rss_mb": rss[-1][1] if rss else None,
        "growth_mb_per_100k_dead_letters_second_half": growth,
        "streamed_s": round(streamed_s, 1),
        "detector_meters_end": last.detector_meters if last else None,
        "detector_state_bytes_end": last.detector_bytes if last else None,
    }


def print_table(samples: list[Sample], every: float = 10.0) -> None:
    print(f"\n{'wall s':>7} {'event h':>8} {'RSS MB':>8} {'open win':>9} {'unknown ids':>12} "
          f"{'dead letters':>13} {'accepted':>10}")
    next_t = 0.0
    for i, x in enumerate(samples):
        if x.t >= next_t or i == len(samples) - 1:
            print(f"{x.t:7.0f} {x.event_h:8.2f} {x.rss_mb or 0:8.1f} {x.open_windows or 0:9.0f} "
                  f"{x.unknown_sent:12d} {x.dead_letters:13.0f} {x.accepted:10.0f}")
            next_t = x.t + every


if __name__ == "__main__":
    raise SystemExit(main())
