"""Throughput of the gridwatch worker against a bare consumer and a trivial Faust agent.

    python benchmarks/throughput.py                       # defaults: ~10 minutes on 2 cores
    python benchmarks/throughput.py --areas 40 --meters 150 --intervals 96 --kafka-version 4.1.1
    python benchmarks/throughput.py --no-profile --no-latency --no-scaling --out /tmp/gw-quick

Starts its own Kafka broker (local.kafka.LocalKafka in a temporary directory), builds a
deterministic city (simulator.city) and pre-fills two topic sets with the SAME readings:
concentrator batches (one message per area and interval, ``--meters`` readings each) and single
readings (one message per reading); supply readings are single messages in both sets. The
topology topic is filled too. No producer runs while anything is measured.

Then, for each message kind:

(a) baseline: one aiokafka consumer (the client Faust uses), no group, reads every message of
    the readings and supply topics and decodes it with streams.contracts.decode_readings;
(b) trivial:  benchmarks/trivial_agent.py, a Faust app whose agent decodes each message;
(c) worker:   ``gridwatch worker`` (local.run.WorkerProcess), the full pipeline.

Each runs in its own child process. readings/s is counted from the first record processed
until (a) the consumer has read everything, (b)/(c) the consumer group's committed offsets
equal the end offsets (so it includes up to one commit interval, 1 s here, plus 0.25 s of
polling; ``processed_readings_per_s`` stops at the last record instead). CPU seconds are the
child's utime+stime over the same span, peak RSS its VmHWM. For the worker,
processing_p50_ms/processing_p99_ms are the per-record processing time (histogram
gridwatch_processing_seconds, interpolated within buckets), which pre-filled topics can measure;
p50_ms/p99_ms are END-TO-END latency, reading produced to area result emitted, from the
latency runs below (None for a kind whose latency run is off).

(d) latency (benchmarks/latency.py, skipped with --no-latency): a fresh worker on fresh topics,
    a producer child sending the city at a steady --latency-rate readings/s (batches, default
    20k/s; and singles at --latency-singles-rate, 0: off), CreateTime of the input record that
    let a window close -> timestamp of the window's lineloss record, and of the alerts it
    emitted. The definitions are in benchmarks/latency.py's docstring.
(e) scaling (skipped with --no-scaling): a larger batch set (--scaling-intervals) pre-filled,
    read once by one worker and once by two workers in one consumer group (fresh group each,
    topics of Settings.partitions = 4 partitions); readings/s from the first record either
    worker processes until the group's committed offsets equal the end offsets, so a
    rebalance when the second worker joins is part of it. The broker runs with
    group.initial.rebalance.delay.ms = 3000 (the local broker's default is 0), so two workers
    started together usually join one initial rebalance; single-worker runs, measured from
    their first record, are not affected. ``two_workers_over_one`` (target >= 1.5) is the ratio.
    Over the same span the workers' and the broker's CPU seconds are read from /proc: the
    broker's share of them, and how busy they kept the machine's CPUs (near 1: the workers and
    the broker share a saturated machine, and a second worker can only take CPU from them).

Writes benchmarks/results/throughput.json and throughput.md (another directory with --out);
with --profile-s > 0 (default 15; --no-profile: 0) a separate worker run per message kind is
sampled with py-spy and the top hot spots go in the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
INTERVAL = 900
COMMIT_INTERVAL_S = "1"
SCRAPE_EVERY_S = 1.0  # the worker's metrics while a measured run goes (see run_worker)
TARGETS = {
    "worker_over_baseline_batches": 0.5,
    "worker_over_trivial_singles": 0.8,  # issue 17
    "worker_batches_readings_per_s": 500_000,
    "two_workers_over_one": 1.5,
    "window_close_to_pass_rate_metric_p99_ms": 1000,
}
SCALING_REBALANCE_DELAY_MS = "3000"


# --- process accounting -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    try:
        import psutil  # type: ignore[import-untyped]

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except ImportError:
        pass
    except Exception:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# --- data ---------------------------------------------------------------------------------------


def build_city(areas: int, meters: int, intervals: int) -> Any:
    from simulator.city import CitySpec, aligned_start, build

    days = intervals * INTERVAL / 86400
    start = aligned_start(datetime.now(UTC), days, INTERVAL)
    return build(CitySpec(areas=areas, meters_per_area=meters, days=days, start=start, seed=11))


def topic_names(prefix: str) -> dict[str, str]:
    return {
        "readings": f"{prefix}.readings",
        "supply": f"{prefix}.supply",
        "lineloss": f"{prefix}.lineloss",
        "deadletter": f"{prefix}.deadletter",
        "alerts": f"{prefix}.alerts",
        "alerts_deadletter": f"{prefix}.alerts-deadletter",
    }


def settings_for(bootstrap: str, names: dict[str, str], topology: str) -> Any:
    from streams.settings import Settings

    return Settings(
        bootstrap=bootstrap,
        topic_readings=names["readings"],
        topic_supply=names["supply"],
        topic_lineloss=names["lineloss"],
        topic_deadletter=names["deadletter"],
        topic_topology=topology,
        topic_alerts=names["alerts"],
        topic_alerts_deadletter=names["alerts_deadletter"],
    )


def prefill(
    bootstrap: str, city: Any, run_id: str, kinds: tuple[str, ...] = ("batches", "singles")
) -> dict[str, Any]:
    """Topology once; then the same readings as batches and as singles, in two topic sets."""
    import orjson

    from simulator.city import messages
    from streams.kafkaio import create_topics, produce
    from streams.topics import TopicSpec, topic_specs

    topology = f"{run_id}.topology"
    sets: dict[str, Any] = {}
    for kind in kinds:
        names = topic_names(f"{run_id}.{kind}")
        s = settings_for(bootstrap, names, topology)
        create_topics(bootstrap, topic_specs(s))
        t0 = time.monotonic()
        n_msgs = n_readings = 0
        recs = []
        for m in messages(city, batches=(kind == "batches")):
            recs.append((names[m.kind], m.key.encode(), orjson.dumps(m.value)))
            n_msgs += 1
            n_readings += len(m.value["readings"]) if m.value["kind"] == "batch" else 1  # type: ignore[arg-type]
        produce(bootstrap, recs)
        sets[kind] = {
            "names": names,
            "settings": s,
            "messages": n_msgs,
            "readings": n_readings,
            "bytes": sum(len(v) for _, _, v in recs),
            "produce_s": time.monotonic() - t0,
        }
        print(
            f"  {kind}: {n_msgs} messages, {n_readings} readings, "
            f"{sets[kind]['bytes'] / 1e6:.1f} MB, produced in {sets[kind]['produce_s']:.1f}s",
            flush=True,
        )
    from topology import Topology  # noqa: F401  (city.topology is one)

    create_topics(bootstrap, [TopicSpec(topology, 4, {"cleanup.policy": "compact"})])
    produce(
        bootstrap, [(topology, r.topic_key(), orjson.dumps(r.to_dict())) for r in city.topology.records()]
    )
    return {"topology": topology, "sets": sets}


# --- consumer-group progress --------------------------------------------------------------------


class GroupLag:
    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        from kafka import KafkaAdminClient

        from streams.kafkaio import end_offsets

        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self.group = group
        self.end = {(t, p): off for t in topics for p, off in end_offsets(bootstrap, t).items()}

    def lag(self) -> int | None:
        from kafka.errors import KafkaError

        try:
            committed = self.admin.list_group_offsets(self.group).get(self.group, {})
        except KafkaError:
            return None
        done = {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()}
        lag = 0
        for key, end in self.end.items():
            got = done.get(key, 0)
            lag += end - max(got, 0)
        return lag

    def close(self) -> None:
        self.admin.close()


# --- (a) bare aiokafka consumer -----------------------------------------------------------------


def baseline_child(bootstrap: str, topics: list[str]) -> None:
    """Runs in a child process; prints one JSON line with its own timings."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from streams.contracts import InvalidRecord, Reading, decode_readings
    from streams.kafkaio import from_beginning

    async def run() -> dict[str, Any]:
        consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        try:
            end = await from_beginning(consumer)
            remaining = sum(end.values())
            msgs = readings = 0
            first = cpu0 = None
            while remaining > 0:
                batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for recs in batch.values():
                    if first is None and recs:
                        first, cpu0 = time.time(), cpu_seconds(os.getpid())
                    for rec in recs:
                        try:
                            d = decode_readings(rec.value)
                            readings += 1 if isinstance(d, Reading) else len(d.values)
                        except InvalidRecord:
                            pass
                    msgs += len(recs)
                    remaining -= len(recs)
            done = time.time()
            cpu1 = cpu_seconds(os.getpid())
        finally:
            await consumer.stop()
        return {
            "first": first,
            "done": done,
            "messages": msgs,
            "readings": readings,
            "cpu_s": (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
            "peak_rss_mb": peak_rss_mb(os.getpid()),
        }

    print(json.dumps(asyncio.run(run())), flush=True)


def run_baseline(bootstrap: str, st: dict[str, Any], kind: str) -> dict[str, Any]:
    names = st["names"]
    out = subprocess.run(
        [sys.executable, __file__, "--baseline-child", bootstrap, names["readings"], names["supply"]],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"baseline failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    span = r["done"] - r["first"]
    return row("baseline (aiokafka + decode)", kind, st, span, span, r["cpu_s"], r["peak_rss_mb"])


# --- (b) trivial Faust agent --------------------------------------------------------------------


def run_trivial(bootstrap: str, st: dict[str, Any], kind: str, tmp: Path) -> dict[str, Any]:
    from local.run import free_port

    names = st["names"]
    app_id = f"bench-trivial-{kind}-{uuid.uuid4().hex[:6]}"
    mark = tmp / f"{app_id}.mark"
    env = {
        **os.environ,
        "BENCH_APP_ID": app_id,
        "BENCH_BOOTSTRAP": bootstrap,
        "BENCH_TOPICS": f"{names['readings']},{names['supply']}",
        "BENCH_EXPECTED": str(st["messages"]),
        "BENCH_MARK_FILE": str(mark),
        "BENCH_DATADIR": str(tmp / app_id),
        "BENCH_WEB_PORT": str(free_port()),
        "BENCH_COMMIT_INTERVAL_S": COMMIT_INTERVAL_S,
    }
    log = (tmp / f"{app_id}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "trivial_agent.py"), "worker", "-l", "warn"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lag = GroupLag(bootstrap, app_id, [names["readings"], names["supply"]])
    try:
        first = cpu0 = None
        deadline = time.monotonic() + 600
        while first is None:
            if mark.exists() and (line := mark.read_text().split("\n", 1)[0]).startswith("first"):
                first, cpu0 = float(line.split()[1]), cpu_seconds(proc.pid)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"trivial agent did not start: {(tmp / f'{app_id}.log').read_text()[-3000:]}"
                )
            time.sleep(0.05)
        while lag.lag() != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"trivial agent stalled: {(tmp / f'{app_id}.log').read_text()[-3000:]}")
            time.sleep(0.25)
        committed = time.time()
        cpu1, hwm = cpu_seconds(proc.pid), peak_rss_mb(proc.pid)
        done_lines = [ln for ln in mark.read_text().splitlines() if ln.startswith("done")]
        processed = float(done_lines[0].split()[1]) if done_lines else committed
    finally:
        lag.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return row("trivial Faust agent", kind, st, committed - first, processed - first, cpu, hwm)


# --- (c) the gridwatch worker -------------------------------------------------------------------


def worker_env(
    bootstrap: str, st: dict[str, Any], topology: str, kind: str, tmp: Path, areas_csv: Path
) -> dict[str, str]:
    """latency.worker_env on the pre-filled set's topics (the inspections topic stays the
    default), with test timings: short session, commit every COMMIT_INTERVAL_S."""
    from latency import worker_env as latency_worker_env

    from streams.settings import Settings

    names = {**st["names"], "topology": topology, "inspections": Settings().topic_inspections}
    app_id = f"bench-worker-{kind}-{uuid.uuid4().hex[:6]}"
    return {
        **latency_worker_env(bootstrap, names, app_id, tmp, areas_csv),
        "GRIDWATCH_BROKER_SESSION_TIMEOUT_S": "10",
        "GRIDWATCH_BROKER_HEARTBEAT_INTERVAL_S": "1",
        "GRIDWATCH_BROKER_COMMIT_INTERVAL_S": COMMIT_INTERVAL_S,
    }


def histogram_quantiles(text: str, name: str, qs: tuple[float, ...]) -> dict[float, float | None]:
    """Quantiles from a Prometheus histogram, linear within the bucket (as histogram_quantile)."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: Counter[float] = Counter()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == f"{name}_bucket":
                buckets[float(s.labels["le"])] += s.value
    edges = sorted(buckets)
    total = buckets[float("inf")] if edges else 0
    out: dict[float, float | None] = {}
    for q in qs:
        if not total:
            out[q] = None
            continue
        rank, prev_edge, prev_count = q * total, 0.0, 0.0
        out[q] = None
        for e in edges:
            c = buckets[e]
            if c >= rank:
                if e == float("inf"):
                    out[q] = prev_edge
                else:
                    out[q] = prev_edge + (e - prev_edge) * ((rank - prev_count) / max(c - prev_count, 1e-12))
                break
            prev_edge, prev_count = e, c
    return out


def run_worker(
    bootstrap: str,
    st: dict[str, Any],
    topology: str,
    kind: str,
    tmp: Path,
    areas_csv: Path,
    profile_s: float = 0.0,
) -> tuple[dict[str, Any], list[tuple[str, float]]]:
    from local.run import WorkerProcess

    env = worker_env(bootstrap, st, topology, kind, tmp, areas_csv)
    app_id = env["GRIDWATCH_APP_ID"]
    worker = WorkerProcess(env, tmp / f"{app_id}.log").start()
    names = st["names"]
    lag = GroupLag(bootstrap, app_id, [names["readings"], names["supply"]])
    spy = None
    raw = tmp / f"{app_id}.pyspy.txt"
    hot: list[tuple[str, float]] = []
    try:
        assert worker.proc is not None
        pid = worker.proc.pid
        first = cpu0 = None
        deadline = time.monotonic() + 900
        while first is None:
            count = worker.metric_sum("gridwatch_processing_seconds_count") or 0
            if count > 0:
                first, cpu0 = time.time(), cpu_seconds(pid)
                if profile_s > 0 and (pyspy := py_spy()) is not None:
                    spy = subprocess.Popen(
                        [
                            pyspy,
                            "record",
                            "--format",
                            "raw",
                            "-o",
                            str(raw),
                            "-d",
                            str(int(profile_s)),
                            "--pid",
                            str(pid),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                break
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{worker.log_tail()}")
            time.sleep(0.1)
        processed = None
        # The worker's metrics are scraped once a second while it runs, not at every lag poll:
        # a scrape costs the worker CPU (its process collector reads /proc), 4.6% of its
        # non-idle samples on singles at four a second (py-spy, 2026-12-06), and the trivial
        # agent it is compared with is not scraped at all. Prometheus scrapes every 15 s.
        next_scrape = 0.0
        while True:
            if processed is None and time.monotonic() >= next_scrape:
                next_scrape = time.monotonic() + SCRAPE_EVERY_S
                if (worker.metric_sum("gridwatch_processing_seconds_count") or 0) >= st["messages"]:
                    processed = time.time()
            if lag.lag() == 0:
                break
            if spy is not None and spy.poll() is not None:
                break  # a profiling run ends with the profile; its figures are not reported
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker stalled:\n{worker.log_tail()}")
            time.sleep(0.25)
        committed = time.time()
        cpu1, hwm = cpu_seconds(pid), peak_rss_mb(pid)
        text = worker.metrics_text()
        qs = histogram_quantiles(text, "gridwatch_processing_seconds", (0.5, 0.99))
        accepted = worker.metric_sum("gridwatch_readings_total", {"outcome": "accepted"}) or 0
        rejected = worker.metric_sum("gridwatch_readings_rejected_total") or 0
        emitted = worker.metric_sum("gridwatch_area_windows_emitted_total") or 0
        time.sleep(0.5)  # let the last changelog writes land before sizing the topic
        changelog_bytes = topic_bytes(tmp, f"{app_id}-area-windows-changelog")
        detector_changelog_bytes = topic_bytes(tmp, f"{app_id}-detector-state-changelog")
        input_bytes = topic_bytes(tmp, names["readings"]) + topic_bytes(tmp, names["supply"])
        if spy is not None:
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
            hot = hot_spots(raw, kind)
            keep = Path(tempfile.gettempdir()) / "gw-throughput-profiles"
            keep.mkdir(exist_ok=True)
            if raw.exists():
                shutil.copy(raw, keep / f"worker-{kind}.pyspy.txt")  # collapsed stacks, for a closer look
    finally:
        lag.close()
        worker.stop()
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    r = row("gridwatch worker", kind, st, committed - first, (processed or committed) - first, cpu, hwm)
    r["processing_p50_ms"] = round(qs[0.5] * 1000, 3) if qs[0.5] is not None else None
    r["processing_p99_ms"] = round(qs[0.99] * 1000, 3) if qs[0.99] is not None else None
    r["latency_kind"] = "p50_ms/p99_ms: end to end from the latency run (filled in by main)"
    r["accepted_readings"], r["rejected_readings"], r["area_windows_emitted"] = accepted, rejected, emitted
    r["changelog_bytes"] = changelog_bytes
    r["detector_changelog_bytes"] = detector_changelog_bytes
    r["input_bytes"] = input_bytes
    r["changelog_over_input_bytes"] = round(changelog_bytes / input_bytes, 2) if input_bytes else None
    both = changelog_bytes + detector_changelog_bytes
    r["all_changelogs_over_input_bytes"] = round(both / input_bytes, 2) if input_bytes else None
    return r, hot


# --- (e) one worker vs two workers in one group ---------------------------------------------------


def system_cpu() -> tuple[float, float] | None:
    """(busy, all) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def run_group(
    bootstrap: str,
    st: dict[str, Any],
    topology: str,
    tmp: Path,
    areas_csv: Path,
    workers: int,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """``workers`` gridwatch workers in one fresh consumer group over a pre-filled set:
    readings/s from the first record any of them processes until the group's committed offsets
    equal the end offsets. Over that same span, the CPU seconds of the workers and of the
    broker (``broker_pid``, when it runs here) and how busy they kept the machine's CPUs."""
    from local.run import WorkerProcess

    envs = [worker_env(bootstrap, st, topology, f"group{workers}", tmp, areas_csv) for _ in range(workers)]
    app_id = envs[0]["GRIDWATCH_APP_ID"]
    for i, env in enumerate(envs[1:], 2):  # one group; own ports (from worker_env) and data dir
        env["GRIDWATCH_APP_ID"] = app_id
        env["GRIDWATCH_DATA_DIR"] = str(tmp / f"{app_id}-{i}")
    procs = [WorkerProcess(env, tmp / f"{app_id}-{i}.log").start() for i, env in enumerate(envs, 1)]
    names = st["names"]
    lag = GroupLag(bootstrap, app_id, [names["readings"], names["supply"]])
    firsts: list[float | None] = [None] * workers
    try:
        pids = [w.proc.pid for w in procs if w.proc is not None]
        cpu0 = {pid: cpu_seconds(pid) for pid in pids}
        span0: dict[int, float | None] = {}  # CPU seconds at the first record: workers', broker's
        box0 = box1 = None  # the whole machine's (busy, all) CPU seconds then and at the end
        watched = [*pids, *([broker_pid] if broker_pid else [])]
        deadline = time.monotonic() + 900
        while True:
            now = time.time()
            for i, w in enumerate(procs):
                if firsts[i] is None and (w.metric_sum("gridwatch_processing_seconds_count") or 0) > 0:
                    firsts[i] = now
                    if not span0:
                        span0 = {pid: cpu_seconds(pid) for pid in watched}
                        box0 = system_cpu()
            if any(f is not None for f in firsts) and lag.lag() == 0:
                break
            for w in procs:
                if not w.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"worker stalled or exited:\n{w.log_tail()}")
            time.sleep(0.1 if not any(firsts) else 0.25)
        committed = time.time()
        cpu1 = {pid: cpu_seconds(pid) for pid in pids}
        span1 = {pid: cpu_seconds(pid) for pid in span0}
        box1 = system_cpu()
        rss = [peak_rss_mb(pid) for pid in pids]
        processed = [w.metric_sum("gridwatch_processing_seconds_count") or 0 for w in procs]
    finally:
        lag.close()
        for w in procs:
            w.stop()
    first = min(f for f in firsts if f is not None)
    span = committed - first
    cpus = [cpu1[p] - cpu0[p] for p in cpu1 if cpu0.get(p) is not None and cpu1[p] is not None]
    used = {p: b - a for p, a in span0.items() if a is not None and (b := span1.get(p)) is not None}
    workers_span = sum(used[p] for p in pids if p in used)
    broker_span = used.get(broker_pid) if broker_pid else None
    machine = (os.cpu_count() or 1) * span if span > 0 else None
    box = (box1[0] - box0[0]) / (box1[1] - box0[1]) if box0 and box1 and box1[1] > box0[1] else None
    return {
        "workers": workers,
        "seconds": round(span, 3),
        "readings_per_s": round(st["readings"] / span) if span > 0 else None,
        "messages_processed_per_worker": [int(n) for n in processed],
        "worker_started_after_s": [round(f - first, 2) if f is not None else None for f in firsts],
        "cpu_s": round(sum(cpus), 2) if cpus else None,
        # from the first record to the committed end, as readings_per_s
        "workers_cpu_s_in_span": round(workers_span, 2),
        "broker_cpu_s_in_span": round(broker_span, 2) if broker_span is not None else None,
        "broker_cpu_share": round(broker_span / (workers_span + broker_span), 3)
        if broker_span is not None and workers_span + broker_span > 0
        else None,
        "machine_busy_share": round((workers_span + (broker_span or 0.0)) / machine, 3) if machine else None,
        "machine_busy_share_all_processes": round(box, 3) if box is not None else None,
        "peak_rss_mb": [round(r, 1) if r is not None else None for r in rss],
    }


def run_scaling(
    bootstrap: str, city: Any, tmp: Path, areas_csv: Path, broker_pid: int | None = None
) -> dict[str, Any]:
    """The same pre-filled batch set read by one worker, then by two in one group."""
    from streams.kafkaio import end_offsets

    data = prefill(bootstrap, city, f"scale-{uuid.uuid4().hex[:6]}", kinds=("batches",))
    st = data["sets"]["batches"]
    parts = {
        topic: dict(sorted(end_offsets(bootstrap, st["names"][topic]).items()))
        for topic in ("readings", "supply")
    }
    one = run_group(bootstrap, st, data["topology"], tmp, areas_csv, 1, broker_pid)
    print(f"    1 worker:  {one['readings_per_s']:,} readings/s ({one['seconds']:.1f}s)", flush=True)
    two = run_group(bootstrap, st, data["topology"], tmp, areas_csv, 2, broker_pid)
    print(
        f"    2 workers: {two['readings_per_s']:,} readings/s ({two['seconds']:.1f}s; second worker's "
        f"first record {max(x or 0 for x in two['worker_started_after_s']):.1f}s after the first's)",
        flush=True,
    )
    ratio = two["readings_per_s"] / one["readings_per_s"] if one["readings_per_s"] else None
    return {
        "message_kind": "batches",
        "messages": st["messages"],
        "readings": st["readings"],
        "messages_per_partition": parts,
        "one_worker": one,
        "two_workers": two,
        "two_workers_over_one": round(ratio, 4) if ratio is not None else None,
    }


def py_spy() -> str | None:
    """The py-spy executable: on PATH, or where pip put it (the interpreter's scripts or the
    user scripts directory, often not on PATH)."""
    import sysconfig

    found = shutil.which("py-spy")
    if found:
        return found
    for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")):
        candidate = Path(sysconfig.get_path("scripts", scheme)) / "py-spy"
        if candidate.exists():
            return str(candidate)
    return None


def topic_bytes(tmp: Path, topic: str) -> int:
    """Bytes of a topic's log segments in the local broker's data dir (before any compaction)."""
    data = tmp / "kafka" / "data"
    return sum(
        f.stat().st_size
        for d in data.glob(f"{topic}-*")
        if d.name.rsplit("-", 1)[0] == topic
        for f in d.glob("*.log")
    )


def _ours(frame: str) -> bool:
    where = frame.partition(" (")[2]
    if "site-packages" in where or "cli.py" in where or frame.startswith("run_worker "):
        return False
    return any(p in where for p in ("streams/", "models/", "topology.py"))


HOT_INCLUSIVE: dict[str, list[tuple[str, float]]] = {}  # gridwatch's own functions, inclusive time


# Leaves of a sample that is waiting, not working. A thread-pool worker blocked in the C
# ``SimpleQueue.get`` shows as ``_worker (concurrent/futures/thread.py)`` itself: the old
# classifier counted it as busy, 20-30% of the worker's profiles (issue #17).
_IDLE_LEAVES = (
    "EpollSelector.select", "_PollLikeSelector.select", "select (", "Condition.wait", "Event.wait"
)
_IDLE_FUNCS_IN = {
    "_worker": "concurrent/futures/thread.py", "get": "queue.py", "_wait_for_tstate_lock": "threading.py"
}


IDLE_LABEL = "(idle: event loop in select or threads waiting, excluded above)"


def is_idle(leaf: str) -> bool:
    """True when a py-spy leaf frame ``func (path:line)`` is a thread or event loop waiting."""
    if leaf.startswith(_IDLE_LEAVES):
        return True
    func, _, where = leaf.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    suffix = _IDLE_FUNCS_IN.get(func)
    return suffix is not None and path.endswith(suffix)


def hot_spots(raw: Path, kind: str, top: int = 5) -> list[tuple[str, float]]:
    """Self time per function from py-spy's collapsed stacks, as a share of the non-idle samples;
    a last entry gives the idle share (event loop in select) of all samples."""
    if not raw.exists():
        return []
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if is_idle(leaf):
            idle += int(n)  # the event loop or a thread waiting: not work
            continue
        # "func (path/file.py:123)" -> "func (file.py)"
        for frame in {
            f.split(" (")[0] + " (" + "/".join(Path(f.partition(" (")[2].rsplit(":", 1)[0]).parts[-2:]) + ")"
            for f in stack.split(";")
            if _ours(f)
        }:
            inclusive[frame] += int(n)
        func, _, where = leaf.partition(" (")
        where = where.rstrip(")").rsplit(":", 1)[0]
        short = "/".join(Path(where).parts[-2:]) if where else ""
        own[f"{func} ({short})"] += int(n)
        total += int(n)
    if not total:
        return []
    HOT_INCLUSIVE[kind] = [(k, v / total) for k, v in inclusive.most_common(top + 3)]
    return [(k, v / total) for k, v in own.most_common(top)] + [
        (IDLE_LABEL, idle / (total + idle))
    ]


# --- reporting ----------------------------------------------------------------------------------


def row(
    name: str,
    kind: str,
    st: dict[str, Any],
    span: float,
    processed_span: float,
    cpu: float | None,
    rss: float | None,
) -> dict[str, Any]:
    n = st["readings"]
    return {
        "name": name,
        "message_kind": kind,
        "messages": st["messages"],
        "readings": n,
        "seconds": round(span, 3),
        "readings_per_s": round(n / span) if span > 0 else None,
        "messages_per_s": round(st["messages"] / span) if span > 0 else None,
        "processed_readings_per_s": round(n / processed_span) if processed_span > 0 else None,
        "cpu_s": round(cpu, 2) if cpu is not None else None,
        "readings_per_cpu_s": round(n / cpu) if cpu else None,
        "p50_ms": None,
        "p99_ms": None,
        "peak_rss_mb": round(rss, 1) if rss is not None else None,
    }


def state_bytes_per_meter() -> int | None:
    try:
        from models.meter_anomaly import MeterAnomalyDetector  # type: ignore[attr-defined]

        return int(MeterAnomalyDetector.state_bytes_per_meter())
    except Exception:
        try:
            import models.meter_anomaly as ma

            for obj in vars(ma).values():
                if isinstance(obj, type) and hasattr(obj, "state_bytes_per_meter"):
                    return int(obj.state_bytes_per_meter())
        except Exception:
            pass
    return None


def hot_md(hot: dict[str, list[tuple[str, float]]]) -> list[str]:
    if not hot:
        return ["(not profiled)", ""]
    out: list[str] = []
    for kind, spots in hot.items():
        out += [f"### {kind}: self time", ""]
        out += [f"{i}. `{f}` - {s:.1%}" for i, (f, s) in enumerate(spots, 1)] or ["(no samples)"]
        out += ["", f"### {kind}: gridwatch's own functions, inclusive time", ""]
        out += [f"- `{f}` - {s:.1%}" for f, s in HOT_INCLUSIVE.get(kind, [])]
        out += [""]
    return out


def fmt(v: Any, nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and nd:
        return f"{v:,.{nd}f}"
    return f"{v:,.0f}" if isinstance(v, (int, float)) else str(v)


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        "| run | messages | readings/s | msgs/s | readings/s to last record | CPU s | readings/CPU s "
        "| end-to-end p50 ms | end-to-end p99 ms | processing p50 ms | processing p99 ms | peak RSS MB |"
    )
    lines = [head, "|" + " --- |" * 12]
    for r in runs:
        lines.append(
            f"| {r['name']} / {r['message_kind']} | {fmt(r['messages'])} | {fmt(r['readings_per_s'])} "
            f"| {fmt(r['messages_per_s'])} | {fmt(r['processed_readings_per_s'])} | {fmt(r['cpu_s'], 2)} "
            f"| {fmt(r['readings_per_cpu_s'])} | {fmt(r['p50_ms'], 1)} | {fmt(r['p99_ms'], 1)} "
            f"| {fmt(r.get('processing_p50_ms'), 3)} | {fmt(r.get('processing_p99_ms'), 3)} "
            f"| {fmt(r['peak_rss_mb'], 1)} |"
        )
    return "\n".join(lines)


def by_type(r: dict[str, Any]) -> dict[str, int]:
    return dict(r["anomaly_to_alert"]["by_type"])


def latency_md(latency: dict[str, Any]) -> list[str]:
    if not latency:
        return ["(not run: --no-latency)", ""]
    out = [
        "Full worker on fresh topics, a producer child sending at a steady rate (definitions: "
        "benchmarks/latency.py). (i) reading produced -> area result emitted: CreateTime of the "
        "input record that let the window close (the later of the first readings and the first "
        "supply record at or past window end + close_delay_s on the area's partition) -> the "
        "window's first lineloss record's timestamp. (ii) anomalous reading -> alert: the same, "
        "for the window each alert was found in. (iii) window close -> pass-rate metric: the "
        "gauges are set in the same call right after the lineloss records, so (i) is also that; "
        "the scraped figure adds up to one scrape period of sampling delay.",
        "",
        "| kind | readings/s target | achieved | worker CPU share | (i) p50 ms | (i) p99 ms | windows "
        "| (ii) p50 ms | (ii) p99 ms | alerts | (iii) scraped p50 ms | (iii) scraped p99 ms "
        "| backlog growth |",
        "|" + " --- |" * 13,
    ]
    for kind, r in latency.get("runs", {}).items():
        w, a = r["reading_to_result"], r["anomaly_to_alert"]
        m = r["window_close_to_pass_rate_metric"]["scraped"]
        out.append(
            f"| {kind} | {fmt(r['target_readings_per_s'])} | {fmt(r['achieved_readings_per_s'])} "
            f"| {fmt(r['worker_cpu_share'], 2)} | {fmt(w['p50_ms'], 1)} | {fmt(w['p99_ms'], 1)} "
            f"| {fmt(w['n'])} | {fmt(a['p50_ms'], 1)} | {fmt(a['p99_ms'], 1)} | {fmt(a['n'])} "
            f"| {fmt(m['p50_ms'], 1)} | {fmt(m['p99_ms'], 1)} | {fmt(r['backlog_growth'], 2)} |"
        )
    out.append("")
    for kind, r in latency.get("runs", {}).items():
        c = r["city"]
        out.append(
            f"- {kind}: {c['areas']} areas x {c['meters_per_area']} meters x {c['intervals']} intervals, "
            f"{r['readings']:,} readings in {r['messages']:,} messages over {r['produce_seconds']}s "
            f"(event time x{r['event_time_speedup']:,}); producer at most "
            f"{r['producer_max_behind_schedule_s']}s behind its schedule; "
            f"{r['reading_to_result']['idle_closed_windows_excluded']} idle-closed windows left out; "
            f"alerts by type: {', '.join(f'{k} {v}' for k, v in sorted(by_type(r).items()))}"
            f" ({r['anomaly_to_alert']['left_out']} left out)."
        )
    return [*out, ""]


def scaling_md(scaling: dict[str, Any]) -> list[str]:
    if not scaling:
        return ["(not run: --no-scaling)", ""]
    one, two = scaling["one_worker"], scaling["two_workers"]
    c = scaling.get("city", {})
    return [
        f"City: {c.get('areas')} areas x {c.get('meters_per_area')} meters x {c.get('intervals')} intervals. "
        f"{scaling['readings']:,} readings in {scaling['messages']:,} batch messages, pre-filled; "
        "readings/s from the first record either worker processed until the group's committed "
        "offsets = end offsets (a rebalance when the second worker joins is included).",
        "",
        "| workers | readings/s | seconds | CPU s (all workers) | workers / broker CPU s in the span "
        "| broker's share of that CPU | machine's CPUs busy: these / all processes "
        "| messages processed per worker | first record per worker, s after the first | peak RSS MB |",
        "|" + " --- |" * 10,
        *[
            f"| {g['workers']} | {fmt(g['readings_per_s'])} | {fmt(g['seconds'], 1)} | {fmt(g['cpu_s'], 2)} "
            f"| {fmt(g.get('workers_cpu_s_in_span'), 2)} / {fmt(g.get('broker_cpu_s_in_span'), 2)} "
            f"| {fmt(g.get('broker_cpu_share'), 3)} | {fmt(g.get('machine_busy_share'), 3)} / "
            f"{fmt(g.get('machine_busy_share_all_processes'), 3)} "
            f"| {', '.join(map(str, g['messages_processed_per_worker']))} "
            f"| {', '.join(map(str, g['worker_started_after_s']))} "
            f"| {', '.join(map(str, g['peak_rss_mb']))} |"
            for g in (one, two)
        ],
        "",
        f"two_workers_over_one: {fmt(scaling['two_workers_over_one'], 3)} (target >= 1.5). Messages per "
        f"partition: {scaling['messages_per_partition']}. The span is from the first record to the "
        "committed end; 'machine's CPUs busy' is the workers' and the broker's CPU seconds over the "
        "span times the CPUs, and of all processes from /proc/stat: near 1, the machine is saturated "
        "(by the workers and the broker, or by others too when the two differ).",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--baseline-child"]:
        baseline_child(argv[1], argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--areas", type=int, default=20)
    ap.add_argument("--meters", type=int, default=100, help="customer meters per area = readings per batch")
    ap.add_argument("--intervals", type=int, default=48, help="15-minute intervals (96 = one day)")
    ap.add_argument("--kafka-version", default=None, help="default: local.kafka.DEFAULT_VERSION")
    ap.add_argument(
        "--profile-s", type=float, default=15.0, help="py-spy a 2nd worker run on batches; 0: off"
    )
    ap.add_argument("--no-profile", action="store_true", help="same as --profile-s 0")
    ap.add_argument("--no-latency", action="store_true", help="skip the end-to-end latency runs")
    ap.add_argument("--latency-rate", type=float, default=20_000.0, help="readings/s, batches")
    ap.add_argument(
        "--latency-singles-rate",
        type=float,
        default=600.0,
        help="readings/s of the singles latency run; 0: off",
    )
    ap.add_argument("--latency-duration-s", type=float, default=30.0, help="producer time per latency run")
    ap.add_argument("--no-scaling", action="store_true", help="skip the one vs two workers run")
    ap.add_argument(
        "--scaling-intervals", type=int, default=288, help="intervals of the scaling run's batch set"
    )
    ap.add_argument("--scaling-areas", type=int, default=64, help="areas of the scaling run's city")
    ap.add_argument("--scaling-meters", type=int, default=50, help="meters per area, scaling run")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for throughput.json and .md")
    args = ap.parse_args(argv)
    if args.no_profile:
        args.profile_s = 0.0

    from local.kafka import DEFAULT_VERSION, LocalKafka

    version = args.kafka_version or DEFAULT_VERSION
    tmp = Path(tempfile.mkdtemp(prefix="gw-throughput-"))
    began = time.monotonic()
    broker = None
    try:
        print(f"starting Kafka {version} in {tmp}", flush=True)
        broker = LocalKafka.start(
            tmp / "kafka",
            version=version,
            overrides={"group.initial.rebalance.delay.ms": SCALING_REBALANCE_DELAY_MS},
        )
        bootstrap = broker.bootstrap
        city = build_city(args.areas, args.meters, args.intervals)
        areas_csv = tmp / "areas.csv"
        areas_csv.write_text(
            "area_id,area_class,loss_lower,loss_upper\n"
            + "".join(f"{a},{city.topology.area_class(a)},,\n" for a in city.area_ids)
        )
        run_id = f"bench-{uuid.uuid4().hex[:6]}"
        print(
            f"pre-filling {args.areas} areas x {args.meters} meters x {args.intervals} intervals", flush=True
        )
        data = prefill(bootstrap, city, run_id)
        runs: list[dict[str, Any]] = []
        for kind in ("batches", "singles"):
            st = data["sets"][kind]
            for label in ("baseline", "trivial", "worker"):
                print(f"  running {label} / {kind} ...", flush=True)
                if label == "baseline":
                    r = run_baseline(bootstrap, st, kind)
                elif label == "trivial":
                    r = run_trivial(bootstrap, st, kind, tmp)
                else:
                    r = run_worker(bootstrap, st, data["topology"], kind, tmp, areas_csv)[0]
                runs.append(r)
                print(
                    f"    {r['readings_per_s']:,} readings/s ({r['seconds']:.1f}s, CPU {r['cpu_s']}s, "
                    f"RSS {r['peak_rss_mb']} MB)",
                    flush=True,
                )
        hot: dict[str, list[tuple[str, float]]] = {}
        if args.profile_s > 0 and py_spy() is None:
            print("  py-spy not found (pip install py-spy): no hot spots this run", flush=True)
        elif args.profile_s > 0:
            for kind in ("batches", "singles"):
                print(f"  profiling worker / {kind} with py-spy ({args.profile_s:.0f}s max) ...", flush=True)
                hot[kind] = run_worker(
                    bootstrap,
                    data["sets"][kind],
                    data["topology"],
                    kind,
                    tmp,
                    areas_csv,
                    profile_s=args.profile_s,
                )[1]
        latency: dict[str, Any] = {}
        if not args.no_latency:
            import latency as lat

            lat_runs: dict[str, Any] = {}
            rates = {"batches": args.latency_rate, "singles": args.latency_singles_rate}
            for kind, rate in rates.items():
                if rate <= 0:
                    continue
                print(f"  latency / {kind} at {rate:,.0f} readings/s ...", flush=True)
                lr = lat.run_latency(
                    bootstrap,
                    tmp,
                    areas=args.areas,
                    meters=args.meters,
                    rate=rate,
                    duration_s=args.latency_duration_s,
                    message_kind=kind,
                    log=lambda m: print(m, flush=True),
                )
                lat_runs[kind] = lr
                w, a = lr["reading_to_result"], lr["anomaly_to_alert"]
                print(
                    f"    achieved {lr['achieved_readings_per_s']:,} readings/s; reading->result p50 "
                    f"{w['p50_ms']} ms p99 {w['p99_ms']} ms ({w['n']} windows); anomaly->alert p50 "
                    f"{a['p50_ms']} ms p99 {a['p99_ms']} ms ({a['n']} alerts)",
                    flush=True,
                )
            for r in runs:
                lr = lat_runs.get(r["message_kind"])
                if r["name"] == "gridwatch worker" and lr is not None:
                    r["p50_ms"] = lr["reading_to_result"]["p50_ms"]
                    r["p99_ms"] = lr["reading_to_result"]["p99_ms"]
                    r["latency_kind"] = (
                        f"p50_ms/p99_ms: end to end, reading produced -> area result emitted, at a steady "
                        f"{lr['achieved_readings_per_s']:,} readings/s (latency run); processing_*: per "
                        "record, this run"
                    )
                elif r["name"] == "gridwatch worker":
                    r["latency_kind"] = "no latency run for this kind; processing_*: per record, this run"
            head = lat_runs.get("batches") or next(iter(lat_runs.values()), None)
            if head is not None:
                latency = {
                    "message_kind": head["message_kind"],
                    "steady_readings_per_s": head["achieved_readings_per_s"],
                    "target_readings_per_s": head["target_readings_per_s"],
                    "reading_to_result": head["reading_to_result"],
                    "anomaly_to_alert": head["anomaly_to_alert"],
                    "window_close_to_pass_rate_metric": head["window_close_to_pass_rate_metric"],
                    "runs": lat_runs,
                }
        scaling: dict[str, Any] = {}
        if not args.no_scaling:
            print(
                f"  scaling: one vs two workers, {args.scaling_areas} areas x {args.scaling_meters} meters x "
                f"{args.scaling_intervals} intervals of batches ...",
                flush=True,
            )
            # Its own city: enough areas that the 4 partitions get near-equal shares (20 areas
            # hash 867 to 2,312 messages a partition, capping two workers near 1.8x).
            scity = build_city(args.scaling_areas, args.scaling_meters, args.scaling_intervals)
            scaling_csv = tmp / "scaling-areas.csv"
            scaling_csv.write_text(
                "area_id,area_class,loss_lower,loss_upper\n"
                + "".join(f"{a},{scity.topology.area_class(a)},,\n" for a in scity.area_ids)
            )
            broker_pid = broker.pid if broker is not None else None
            scaling = run_scaling(bootstrap, scity, tmp, scaling_csv, broker_pid)
            scaling["city"] = {
                "areas": args.scaling_areas,
                "meters_per_area": args.scaling_meters,
                "intervals": args.scaling_intervals,
            }
        by = {(r["name"].split(" ")[0], r["message_kind"]): r for r in runs}
        wb, bb = by[("gridwatch", "batches")], by[("baseline", "batches")]
        ws, ts = by[("gridwatch", "singles")], by[("trivial", "singles")]
        ratios = {
            "worker_over_baseline_batches": round(wb["readings_per_s"] / bb["readings_per_s"], 4),
            "worker_over_trivial_singles": round(ws["readings_per_s"] / ts["readings_per_s"], 4),
            "worker_over_trivial_batches": round(
                wb["readings_per_s"] / by[("trivial", "batches")]["readings_per_s"], 4
            ),
            "trivial_over_baseline_batches": round(
                by[("trivial", "batches")]["readings_per_s"] / bb["readings_per_s"], 4
            ),
            "worker_batches_over_500k_target": round(wb["readings_per_s"] / 500_000, 4),
        }
        if scaling:
            ratios["two_workers_over_one"] = scaling["two_workers_over_one"]
        result: dict[str, Any] = {
            "generated": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "kafka_version": version,
            "city": {
                "areas": args.areas,
                "meters_per_area": args.meters,
                "intervals": args.intervals,
                "readings": data["sets"]["batches"]["readings"],
                "messages": {k: v["messages"] for k, v in data["sets"].items()},
                "bytes": {k: v["bytes"] for k, v in data["sets"].items()},
            },
            "method": (
                "topics pre-filled, no producer while measuring; readings/s from the first record "
                "processed until committed offsets = end offsets (baseline: until all read); "
                f"commit interval {COMMIT_INTERVAL_S}s; worker p50_ms/p99_ms = end-to-end latency "
                "(reading produced -> area result emitted) from the latency run of the same message "
                "kind at a steady rate, processing_p50_ms/processing_p99_ms = per-record processing "
                "time from gridwatch_processing_seconds"
            ),
            "runs": runs,
            "profile": (
                f"py-spy record at 100 Hz on a separate worker run per kind, from the first record "
                f"for up to {args.profile_s:.0f}s (or until caught up); self time share of non-idle "
                "samples; not included in the measured runs"
            ),
            "ratios": ratios,
            "targets": TARGETS,
            "latency": latency,
            "scaling": scaling,
            "hot_spots": {
                k: [{"function": f, "self_share": round(s, 4)} for f, s in v] for k, v in hot.items()
            },
            "hot_spots_gridwatch_inclusive": {
                k: [{"function": f, "share": round(s, 4)} for f, s in v] for k, v in HOT_INCLUSIVE.items()
            },
            "state_bytes_per_meter": state_bytes_per_meter(),
            "total_seconds": round(time.monotonic() - began, 1),
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
        skipped = [
            flag
            for flag, on in (
                ("--no-profile", args.profile_s <= 0),
                ("--no-latency", args.no_latency),
                ("--no-scaling", args.no_scaling),
            )
            if on
        ]
        md = [
            "# gridwatch throughput",
            "",
            f"`python benchmarks/throughput.py --areas {args.areas} --meters {args.meters} "
            f"--intervals {args.intervals}{''.join(' ' + s for s in skipped)}` on {os.cpu_count()} CPUs, "
            f"Kafka {version}, {result['city']['readings']:,} readings "
            f"({result['city']['messages']['batches']:,} batch messages / "
            f"{result['city']['messages']['singles']:,} single messages), {result['generated']}.",
            "",
            result["method"] + ".",
            "",
            table(runs),
            "",
            "Batch runs are short at the default size (the batch set is read in well under 10 s), so the "
            "commit-bound end (up to one commit interval plus polling) weighs heavily on them: compare the "
            "'to last record' and 'readings/CPU s' columns, and use a larger --areas/--intervals for stable "
            "batch figures. The worker's processing p50/p99 are per consumed record (a batch is one "
            "record); its end-to-end p50/p99 come from the latency runs below. "
            "Interpretation and scaling: docs/scaling.md.",
            "",
            "## Ratios (targets: worker/baseline on batches >= 0.5, worker/trivial on singles >= 0.8, "
            "worker >= 500k readings/s on batches, two workers/one >= 1.5)",
            "",
            *[f"- {k}: {fmt(v, 3)}" for k, v in ratios.items()],
            "",
            *[
                f"Worker / {r['message_kind']}: window-table changelog {r['changelog_bytes'] / 1e6:.1f} MB "
                f"and detector-state changelog {r.get('detector_changelog_bytes', 0) / 1e6:.1f} MB "
                f"for {r['input_bytes'] / 1e6:.1f} MB of input (all as broker log bytes): "
                f"{r['changelog_over_input_bytes']}x windows, "
                f"{r.get('all_changelogs_over_input_bytes')}x both (target <= 0.5x on batches)."
                for r in runs
                if r.get("changelog_bytes") is not None
            ],
            "",
            f"state_bytes_per_meter (models.meter_anomaly): {result['state_bytes_per_meter']}",
            "",
            "## End-to-end latency (target: window close -> pass-rate metric p99 <= 1 s)",
            "",
            *latency_md(latency),
            "## One worker vs two workers in one consumer group",
            "",
            *scaling_md(scaling),
            "## Hot spots (py-spy, gridwatch worker)",
            "",
            result["profile"] + ".",
            "",
            *hot_md(hot),
        ]
        (args.out / "throughput.md").write_text("\n".join(md))
        print()
        print(table(runs))
        print()
        for k, v in ratios.items():
            print(f"{k}: {fmt(v, 3)}")
        for kind, spots in hot.items():
            print(f"\nhot spots, worker / {kind} (self time):")
            for f, s in spots:
                print(f"  {s:6.1%}  {f}")
        if latency:
            print("\n" + "\n".join(latency_md(latency)[2:-1]))
        print(f"\nwrote {args.out / 'throughput.json'} and throughput.md in {result['total_seconds']}s")
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
