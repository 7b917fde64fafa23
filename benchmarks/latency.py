"""End-to-end latency of the gridwatch worker on a real broker, at a steady input rate.

    python benchmarks/latency.py                          # ~20k readings/s of batches for 30 s
    python benchmarks/latency.py --rate 20000 --duration-s 60 --out /tmp/gw-latency
    (benchmarks/throughput.py runs this too, unless --no-latency)

Starts its own Kafka broker (local.kafka.LocalKafka; throughput.py passes its own), builds a
deterministic city (simulator.city) with injected anomalies (stopped meters, register rollbacks,
a collection outage), starts the full worker (``gridwatch worker``, local.run.WorkerProcess)
and waits until its consumer group is Stable. Only then a producer child process sends the city's
readings, pre-encoded, at a paced steady rate: message i is due at
``t0 + (readings before i) / rate``, so readings/s is steady and a batch of 100 readings waits
100 x as long as a single one. Event time runs far faster than wall clock (at 20k readings/s and
20 areas x 100 meters, ten 15-minute intervals per second: a day in ~10 s), and the city ends
one interval before now (simulator.city.aligned_start), so every reading is within the
worker's accepted range (contracts.check_time: Settings.max_past_s = 35 days back,
max_future_s = 1 h ahead). The run is refused if the city would reach further back than
max_past_s.

Timestamps: every input record's timestamp is its CreateTime, set by the producer when it
hands the record to its client (kafka-python ``send``; read back from the RecordMetadata);
every output record's timestamp is the CreateTime set by the worker's producer (aiokafka stamps
a record when the worker's ``send`` appends it; Faust's stream_publish_on_commit is off, so
outputs are not held until a commit). Both clocks are this machine's.

(i) reading produced -> area result emitted. A window [s, s + window_s) is closed by the engine
    (streams/engine.py ``_advance``) once its partition's watermark reaches
    ``s + window_s + close_delay_s``; the watermark is the minimum, over the two input topics
    (readings, supply), of the newest event time seen on that partition. The record that lets
    the window close is therefore, on the area's partition, the LATER-produced of: the first
    readings-topic record and the first supply-topic record whose event time is at or past that
    close point (event time never goes back within a topic-partition here, so "first" is well
    defined). latency = timestamp of the window's first lineloss record (revision 0) minus
    that record's CreateTime. Windows with no such record (the last ones, closed by the idle
    timer after the stream stops) are left out and counted as ``idle_closed``.
(ii) anomalous reading -> alert. An alert is emitted in the same call that emits the results of
    the window it was found in (streams/app.py ``_emit`` -> ``_detect``); its ``at`` is the end
    of the interval learned, so its window is ``window_of(at)``. Its area is ``evidence.area_id``
    when the alert carries one, else the area of its meter (or the area itself, for area
    alerts). latency = alert timestamp minus the CreateTime of the record that closed that
    area-window, as in (i). Every alert record counts (opened and resolved, all types). The
    anomaly itself usually starts a few intervals earlier (detectors need evidence): that
    detection delay is event time, reported in intervals by the detection benchmark, not here.
(iii) window close -> pass-rate metric. The worker updates the pass-rate gauges in the same
    ``_emit`` call that sends the window's lineloss records, right after them
    (``metrics.observe_window``), so (i) is also the time from window close to the pass-rate
    metric. As an outside check the metrics endpoint is scraped at ``--scrape-hz`` (default 10)
    and, for every window start W, the first scrape at which
    ``gridwatch_latest_window_start_seconds >= W`` is compared with the earliest CreateTime,
    over partitions, of a record that closed W: this includes up to one scrape period of
    sampling delay and the scrape itself, and is reported separately (target p99 <= 1 s).

Percentiles are nearest-rank over all windows (alerts) of the run. Figures depend on the
machine: with 2 cores the broker, the producer and the worker share them, and a worker that
cannot sustain the rate shows a growing backlog, i.e. latencies growing over the run (reported
as ``backlog_growth``: p50 of the last fifth of windows over that of the first fifth).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "benchmarks"))  # throughput.py's helpers (process accounting, lag)

INTERVAL = 900
DEFAULT_RATE = 20_000.0  # readings/s, the steady load


# --- pure helpers (tests/benchmarks/test_latency.py) ---------------------------------------------


def pacing_schedule(readings: Sequence[int], rate: float) -> list[float]:
    """Due time of each message, in seconds after the first, for a steady ``rate`` readings/s:
    a message is due once the readings before it have had their time.

    >>> pacing_schedule([100, 1, 100, 1], 1000)
    [0.0, 0.1, 0.101, 0.201]
    """
    out: list[float] = []
    before = 0
    for n in readings:
        out.append(round(before / rate, 9))
        before += n
    return out


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) or None for no values.

    >>> percentile([5, 1, 3, 2, 4], 50), percentile([5, 1, 3, 2, 4], 99), percentile([], 50)
    (3, 5, None)
    """
    xs = sorted(values)
    if not xs:
        return None
    rank = max(1, math.ceil(q / 100 * len(xs)))
    return xs[rank - 1]


class InputIndex:
    """Per (source topic, partition): event times and CreateTimes (ms) of the produced records,
    in offset order; answers "which record let the watermark reach this point"."""

    def __init__(self, sources: Sequence[str]) -> None:
        self.sources = tuple(sources)
        self._ts: dict[tuple[str, int], list[int]] = {}
        self._ct: dict[tuple[str, int], list[int]] = {}

    def add(self, source: str, partition: int, event_ts: int, create_ms: int) -> None:
        """Records of one topic-partition must be added in offset order."""
        ts = self._ts.setdefault((source, partition), [])
        if ts and event_ts < ts[-1]:
            raise ValueError(f"event time goes back on {source}[{partition}]: {event_ts} < {ts[-1]}")
        ts.append(event_ts)
        self._ct.setdefault((source, partition), []).append(create_ms)

    def first_at_or_after(self, source: str, partition: int, point: int) -> int | None:
        """CreateTime of the first record of source[partition] with event time >= point."""
        ts = self._ts.get((source, partition), [])
        i = bisect_left(ts, point)
        return self._ct[(source, partition)][i] if i < len(ts) else None

    def close_ms(self, partition: int, point: int) -> int | None:
        """CreateTime of the record after which every source of ``partition`` has reached
        ``point`` (the later of each source's first such record); None if one never does."""
        got = [self.first_at_or_after(src, partition, point) for src in self.sources]
        return None if any(g is None for g in got) else max(g for g in got if g is not None)

    def partitions(self) -> set[int]:
        return {p for _, p in self._ts}


def close_point(window_start: int, *, window_s: int, close_delay_s: int) -> int:
    """The watermark at which the engine first closes the window starting at window_start.

    >>> close_point(0, window_s=900, close_delay_s=900)
    1800
    """
    return window_start + window_s + close_delay_s


def window_latencies(
    results: Iterable[tuple[str, int, int, int]],
    area_partition: Mapping[str, int],
    index: InputIndex,
    *,
    window_s: int,
    close_delay_s: int,
) -> tuple[list[tuple[int, float]], int]:
    """(window start, latency ms) per first-revision result (area, window_start, revision,
    timestamp_ms), in input order; and how many had no closing record (idle-closed)."""
    out: list[tuple[int, float]] = []
    idle = 0
    seen: set[tuple[str, int]] = set()
    for area, start, revision, ts_ms in results:
        if revision != 0 or (area, start) in seen:
            continue
        seen.add((area, start))
        closed = index.close_ms(
            area_partition[area], close_point(start, window_s=window_s, close_delay_s=close_delay_s)
        )
        if closed is None:
            idle += 1
            continue
        out.append((start, float(ts_ms - closed)))
    return out, idle


def alert_area(alert: Mapping[str, Any], meter_area: Mapping[str, str]) -> str | None:
    """The area whose window emitted an alert record.

    >>> alert_area({"entity_kind": "meter", "entity_id": "m1", "evidence": {}}, {"m1": "A1"})
    'A1'
    >>> alert_area({"entity_kind": "meter", "entity_id": "m1", "evidence": {"area_id": "A2"}}, {})
    'A2'
    >>> alert_area({"entity_kind": "area", "entity_id": "A3", "evidence": {}}, {})
    'A3'
    """
    ev = alert.get("evidence") or {}
    if isinstance(ev, dict) and isinstance(ev.get("area_id"), str):
        return str(ev["area_id"])
    if alert.get("entity_kind") == "area":
        return str(alert["entity_id"])
    return meter_area.get(str(alert.get("entity_id")))


def alert_latencies(
    alerts: Iterable[tuple[dict[str, Any], int]],
    meter_area: Mapping[str, str],
    area_partition: Mapping[str, int],
    index: InputIndex,
    *,
    interval_s: int,
    window_s: int,
    close_delay_s: int,
) -> tuple[list[float], int]:
    """Latency ms per alert record (value, timestamp_ms); and how many were left out (their
    window was idle-closed, or their area is unknown)."""
    from models.windows import window_of

    out: list[float] = []
    skipped = 0
    for alert, ts_ms in alerts:
        area = alert_area(alert, meter_area)
        at = int(datetime.fromisoformat(str(alert["at"]).replace("Z", "+00:00")).timestamp())
        start = window_of(at, interval_s=interval_s, window_s=window_s)
        point = close_point(start, window_s=window_s, close_delay_s=close_delay_s)
        closed = index.close_ms(area_partition[area], point) if area in area_partition else None
        if closed is None:
            skipped += 1
            continue
        out.append(float(ts_ms - closed))
    return out, skipped


def first_seen(samples: Sequence[tuple[float, float]], starts: Iterable[int]) -> dict[int, float]:
    """For each window start, the first sample time (samples: (time, gauge), in time order)
    at which the gauge had reached it.

    >>> first_seen([(1.0, 0), (2.0, 900), (3.0, 2700)], [900, 1800, 2700, 3600])
    {900: 2.0, 1800: 3.0, 2700: 3.0}
    """
    out: dict[int, float] = {}
    pending = sorted(set(starts))
    i = 0
    for t, value in samples:
        while i < len(pending) and pending[i] <= value:
            out[pending[i]] = t
            i += 1
    return out


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": round(v, 1) if (v := percentile(values, 50)) is not None else None,
        "p99_ms": round(v, 1) if (v := percentile(values, 99)) is not None else None,
        "max_ms": round(max(values), 1) if values else None,
    }


# --- data ---------------------------------------------------------------------------------------


def build_city(
    areas: int, meters: int, intervals: int, *, seed: int = 11
) -> tuple[Any, list[dict[str, Any]]]:
    """A city ending one interval before now, with anomalies injected in its second half:
    in every fourth area (from the 2nd) the biggest consumer stops, in every fourth (from the
    4th) a meter's register restarts low, and a quarter of area 2's meters go silent."""
    import numpy as np

    from simulator.city import CitySpec, aligned_start, build

    days = intervals * INTERVAL / 86400
    start = aligned_start(datetime.now(UTC), days, INTERVAL)
    outage = (2,) if areas > 2 else ()
    city = build(
        CitySpec(
            areas=areas,
            meters_per_area=meters,
            days=days,
            start=start,
            seed=seed,
            outage_areas=outage,
            outage_intervals=max(4, intervals // 20),
        )
    )
    injected: list[dict[str, Any]] = []
    n = len(city.times) - 1
    for a, area in enumerate(city.area_ids):
        at = n // 2 + (a * 7) % max(1, n // 3)
        if a % 4 == 1:
            ms = city.customers[area]
            stopped = max(ms, key=lambda m: city.registers[m][-1] - city.registers[m][0])
            reg = city.registers[stopped]
            reg[at:] = reg[at]
            injected.append({"kind": "stopped_meter", "meter": stopped, "area": area, "interval": at})
        elif a % 4 == 3 and len(city.customers[area]) > 7:
            swapped = city.customers[area][7]
            reg = city.registers[swapped]
            reg[at:] = np.round(reg[at:] - reg[at] + 3.0, 2)
            injected.append({"kind": "register_rollback", "meter": swapped, "area": area, "interval": at})
    for area_idx in outage:
        injected.append({"kind": "collection_outage", "area": city.area_ids[area_idx], "interval": n // 2})
    return city, injected


def topic_names(prefix: str) -> dict[str, str]:
    return {
        "readings": f"{prefix}.readings",
        "supply": f"{prefix}.supply",
        "topology": f"{prefix}.topology",
        "lineloss": f"{prefix}.lineloss",
        "deadletter": f"{prefix}.deadletter",
        "alerts": f"{prefix}.alerts",
        "alerts_deadletter": f"{prefix}.alerts-deadletter",
        "inspections": f"{prefix}.inspections",
    }


def worker_env(
    bootstrap: str, names: dict[str, str], app_id: str, tmp: Path, areas_csv: Path
) -> dict[str, str]:
    """Production Faust timings (commit every 2.8 s etc.); idle close at 3 s so the stream's
    last windows close soon after it stops (they are not measured)."""
    from local.run import free_port

    return {
        "GRIDWATCH_BOOTSTRAP": bootstrap,
        "GRIDWATCH_APP_ID": app_id,
        "GRIDWATCH_TOPIC_READINGS": names["readings"],
        "GRIDWATCH_TOPIC_SUPPLY": names["supply"],
        "GRIDWATCH_TOPIC_TOPOLOGY": names["topology"],
        "GRIDWATCH_TOPIC_LINELOSS": names["lineloss"],
        "GRIDWATCH_TOPIC_DEADLETTER": names["deadletter"],
        "GRIDWATCH_TOPIC_ALERTS": names["alerts"],
        "GRIDWATCH_TOPIC_ALERTS_DEADLETTER": names["alerts_deadletter"],
        "GRIDWATCH_TOPIC_INSPECTIONS": names["inspections"],
        "GRIDWATCH_METRICS_PORT": str(free_port()),
        "GRIDWATCH_WEB_PORT": str(free_port()),
        "GRIDWATCH_DATA_DIR": str(tmp / app_id),
        "GRIDWATCH_AREAS_CSV": str(areas_csv),
        "GRIDWATCH_IDLE_CLOSE_S": "3",
    }


def settings_for(env: Mapping[str, str]) -> Any:
    from streams.settings import Settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return Settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- the producer child -------------------------------------------------------------------------


def producer_child(bootstrap: str, plan_path: str, out_path: str) -> None:
    """Send the planned records at their due times; write what was sent (partition, event
    time, CreateTime from the record metadata) and how well the pace was kept."""
    from kafka import KafkaProducer

    with open(plan_path, "rb") as f:
        plan = pickle.load(f)
    records: list[tuple[str, bytes, bytes, int, int]] = plan["records"]  # topic, key, value, n, ts
    due = pacing_schedule([r[3] for r in records], plan["rate"])
    prod = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=1,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    # A few unmeasured records would warm the connection; the worker's partitions get their
    # first records at t0 instead, which is part of the measured run.
    futures = []
    behind = 0.0
    t0 = time.monotonic() + 0.2
    first_send = time.time()
    for (topic, key, value, _, _), d in zip(records, due, strict=True):
        delay = t0 + d - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            behind = max(behind, -delay)
        futures.append(prod.send(topic, key=key, value=value))
    last_send = time.time()
    prod.flush()
    sent = []
    for (topic, _, _, n, ts), fut in zip(records, futures, strict=True):
        md = fut.get(timeout=60)
        sent.append((topic, md.partition, md.offset, ts, md.timestamp, n))
    prod.close()
    with open(out_path, "w") as f:
        json.dump(
            {
                "first_send": first_send,
                "last_send": last_send,
                "planned_s": due[-1] if due else 0.0,
                "max_behind_s": round(behind, 4),
                "sent": sent,
            },
            f,
        )


# --- the run ------------------------------------------------------------------------------------


class Scraper(threading.Thread):
    """Polls the worker's latest-window gauge at hz; samples are (unix time, gauge)."""

    def __init__(self, port: int, hz: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.period = 1.0 / hz
        self.samples: list[tuple[float, float]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        key = "gridwatch_latest_window_start_seconds "
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    text = resp.read().decode()
                got = time.time()
                for line in text.splitlines():
                    if line.startswith(key):
                        self.samples.append((got, float(line[len(key) :])))
                        break
            except OSError:
                pass
            self.stop_event.wait(max(0.0, self.period - (time.monotonic() - started)))


def _group_state(admin: Any, group: str) -> tuple[str | None, int]:
    try:
        desc = admin.describe_groups([group]).get(group) or {}
    except Exception:
        return None, 0
    return desc.get("group_state") or desc.get("state"), len(desc.get("members") or [])


def _ts(value: bytes) -> int:
    import orjson

    return int(datetime.fromisoformat(str(orjson.loads(value)["ts"]).replace("Z", "+00:00")).timestamp())


def run_latency(
    bootstrap: str,
    tmp: Path,
    *,
    areas: int = 20,
    meters: int = 100,
    rate: float = DEFAULT_RATE,
    duration_s: float = 30.0,
    message_kind: str = "batches",
    scrape_hz: float = 10.0,
    seed: int = 11,
    log: Any = print,
) -> dict[str, Any]:
    """One latency run against the broker at ``bootstrap``; returns the result section."""
    import orjson

    from local.run import WorkerProcess
    from simulator.city import messages
    from streams.kafkaio import create_topics, produce, read_topic
    from streams.topics import topic_specs

    batches = message_kind == "batches"
    per_interval = areas * (meters + 1)  # customer readings + one supply reading per area
    intervals = max(8, round(rate * duration_s / per_interval))
    city, injected = build_city(areas, meters, intervals, seed=seed)
    run_id = f"lat-{message_kind}-{uuid.uuid4().hex[:6]}"
    names = topic_names(run_id)
    areas_csv = tmp / f"{run_id}-areas.csv"
    areas_csv.write_text(
        "area_id,area_class,loss_lower,loss_upper\n"
        + "".join(f"{a},{city.topology.area_class(a)},,\n" for a in city.area_ids)
    )
    env = worker_env(bootstrap, names, f"bench-latency-{run_id}", tmp, areas_csv)
    s = settings_for(env)
    span_s = city.times[-1] - city.times[0]
    if span_s + 2 * INTERVAL > s.max_past_s:
        raise ValueError(
            f"the city spans {span_s / 86400:.1f} days of event time, more than max_past_s "
            f"({s.max_past_s / 86400:.0f} days): lower --rate or --duration-s, or raise --meters"
        )
    create_topics(bootstrap, topic_specs(s))
    produce(
        bootstrap,
        [(names["topology"], r.topic_key(), orjson.dumps(r.to_dict())) for r in city.topology.records()],
    )
    topic_of = {"readings": names["readings"], "supply": names["supply"]}
    records = []
    for m in messages(city, batches=batches):
        n = len(m.value["readings"]) if m.value["kind"] == "batch" else 1  # type: ignore[arg-type]
        records.append((topic_of[m.kind], m.key.encode(), orjson.dumps(m.value), n, m.ts))
    total_readings = sum(r[3] for r in records)
    plan = tmp / f"{run_id}.plan.pickle"
    plan.write_bytes(pickle.dumps({"records": records, "rate": rate}))
    sent_path = tmp / f"{run_id}.sent.json"
    log(
        f"  latency/{message_kind}: {areas} areas x {meters} meters x {intervals} intervals = "
        f"{total_readings:,} readings in {len(records):,} messages at {rate:,.0f} readings/s "
        f"(~{total_readings / rate:.0f}s; event time x{INTERVAL * rate / per_interval:,.0f})"
    )

    from kafka import KafkaAdminClient
    from throughput import GroupLag, cpu_seconds, histogram_quantiles, peak_rss_mb

    worker = WorkerProcess(env, tmp / f"{run_id}.worker.log").start()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    scraper = Scraper(worker.metrics_port, scrape_hz) if scrape_hz > 0 else None
    try:
        deadline = time.monotonic() + 120
        while True:  # topology loaded, group joined: nothing of the start is measured
            state, members = _group_state(admin, s.app_id)
            loaded = worker.metric("gridwatch_topology_meters") or 0
            if state == "Stable" and members >= 1 and loaded >= len(city.registers):
                break
            if not worker.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{worker.log_tail()}")
            time.sleep(0.2)
        time.sleep(1.0)
        assert worker.proc is not None
        pid = worker.proc.pid
        if scraper is not None:
            scraper.start()
        cpu0 = cpu_seconds(pid)
        child = subprocess.run(
            [sys.executable, __file__, "--producer-child", bootstrap, str(plan), str(sent_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=duration_s * 10 + 300,
        )
        if child.returncode != 0:
            raise RuntimeError(f"producer failed:\n{child.stderr[-3000:]}")
        sent_info = json.loads(sent_path.read_text())
        # Caught up: every input record processed (committed) and the last windows idle-closed.
        deadline = time.monotonic() + 600
        lag = GroupLag(bootstrap, s.app_id, [names["readings"], names["supply"]])
        try:
            while lag.lag() != 0:  # None (broker busy) counts as not yet
                if not worker.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"worker stalled:\n{worker.log_tail()}")
                time.sleep(0.25)
        finally:
            lag.close()
        caught_up = time.time()
        cpu1, rss = cpu_seconds(pid), peak_rss_mb(pid)
        want = len(city.area_ids) * len(city.times)
        stable_since, last = time.monotonic(), -1.0
        while time.monotonic() - stable_since < 5 and time.monotonic() < deadline:
            emitted = worker.metric_sum("gridwatch_area_windows_emitted_total") or 0
            if emitted != last:
                last, stable_since = emitted, time.monotonic()
            if emitted >= want:
                break
            time.sleep(0.5)
        processing = {
            "accepted_readings": worker.metric_sum("gridwatch_readings_total", {"outcome": "accepted"}) or 0,
            "rejected_readings": worker.metric_sum("gridwatch_readings_rejected_total") or 0,
        }
        qs = histogram_quantiles(worker.metrics_text(), "gridwatch_processing_seconds", (0.5, 0.99))
    finally:
        if scraper is not None:
            scraper.stop_event.set()
            scraper.join(5)
        admin.close()
        worker.stop()

    # --- analysis -------------------------------------------------------------------------------
    index = InputIndex((names["readings"], names["supply"]))
    area_partition: dict[str, int] = {}
    ct_by_topic: dict[str, list[int]] = {}
    for topic, partition, _offset, ts, ct, _n in sorted(sent_info["sent"], key=lambda r: (r[0], r[1], r[2])):
        index.add(topic, partition, ts, ct)
        ct_by_topic.setdefault(topic, []).append(ct)
    for (topic, key, _v, _n, _ts), (_t, partition, *_rest) in zip(records, sent_info["sent"], strict=True):
        if topic == names["readings"]:
            area_partition.setdefault(key.decode(), partition)
    lineloss = []
    for rec in read_topic(bootstrap, names["lineloss"], idle_s=1.0, timeout_s=120):
        v = orjson.loads(rec.value)
        start = int(datetime.fromisoformat(str(v["window_start"]).replace("Z", "+00:00")).timestamp())
        lineloss.append((v["area_id"], start, int(v.get("revision", 0)), rec.timestamp_ms))
    lineloss.sort(key=lambda r: r[3])
    lat_windows, idle = window_latencies(
        lineloss, area_partition, index, window_s=s.window_s, close_delay_s=s.close_delay_s
    )
    meter_area = {m: a for a, ms in city.customers.items() for m in ms}
    meter_area.update({m: a for a, m in city.supply.items()})
    alerts = [
        (orjson.loads(rec.value), rec.timestamp_ms)
        for rec in read_topic(bootstrap, names["alerts"], idle_s=1.0, timeout_s=120)
    ]
    lat_alerts, alerts_skipped = alert_latencies(
        alerts,
        meter_area,
        area_partition,
        index,
        interval_s=s.interval_s,
        window_s=s.window_s,
        close_delay_s=s.close_delay_s,
    )
    # (iii) scraped pass-rate gauge: first scrape showing window W vs the earliest close of W
    metric_lat: list[float] = []
    if scraper is not None:
        starts = sorted({w for w, _ in lat_windows})
        seen = first_seen(scraper.samples, starts)
        for w in starts:
            point = close_point(w, window_s=s.window_s, close_delay_s=s.close_delay_s)
            closes = [c for p in index.partitions() if (c := index.close_ms(p, point)) is not None]
            if w in seen and closes:
                metric_lat.append(seen[w] * 1000 - min(closes))
    window_ms = [v for _, v in lat_windows]
    fifth = max(1, len(window_ms) // 5)
    first_p50 = percentile(window_ms[:fifth], 50)
    last_p50 = percentile(window_ms[-fifth:], 50)
    all_ct = sorted(c for cts in ct_by_topic.values() for c in cts)
    produce_span = (all_ct[-1] - all_ct[0]) / 1000 if len(all_ct) > 1 else 0.0
    achieved = total_readings / produce_span if produce_span > 0 else None
    counts: dict[str, int] = {}
    for a, _ in alerts:
        counts[f"{a['type']}/{a['event']}"] = counts.get(f"{a['type']}/{a['event']}", 0) + 1
    return {
        "message_kind": message_kind,
        "city": {"areas": areas, "meters_per_area": meters, "intervals": intervals},
        "messages": len(records),
        "readings": total_readings,
        "target_readings_per_s": rate,
        "achieved_readings_per_s": round(achieved) if achieved else None,
        "produce_seconds": round(produce_span, 2),
        "producer_max_behind_schedule_s": sent_info["max_behind_s"],
        "event_time_speedup": round(INTERVAL * rate / per_interval),
        "worker_cpu_s": round(cpu1 - cpu0, 2) if cpu0 is not None and cpu1 is not None else None,
        "worker_cpu_share": (
            round((cpu1 - cpu0) / (caught_up - sent_info["first_send"]), 3)
            if cpu0 is not None and cpu1 is not None
            else None
        ),
        "peak_rss_mb": round(rss, 1) if rss is not None else None,
        "processing_p50_ms": round(qs[0.5] * 1000, 3) if qs[0.5] is not None else None,
        "processing_p99_ms": round(qs[0.99] * 1000, 3) if qs[0.99] is not None else None,
        **processing,
        "reading_to_result": {**summary(window_ms), "idle_closed_windows_excluded": idle},
        "backlog_growth": round(last_p50 / first_p50, 2) if first_p50 and last_p50 else None,
        "reading_to_result_p50_ms_by_fifth": [
            percentile(window_ms[i * len(window_ms) // 5 : (i + 1) * len(window_ms) // 5], 50)
            for i in range(5)
        ],
        "anomaly_to_alert": {**summary(lat_alerts), "left_out": alerts_skipped, "by_type": counts},
        "window_close_to_pass_rate_metric": {
            "same_code_path_as_reading_to_result": True,
            "scraped": {**summary(metric_lat), "scrape_hz": scrape_hz},
            "target_p99_ms": 1000,
        },
        "injected": injected,
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--producer-child"]:
        producer_child(argv[1], argv[2], argv[3])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--areas", type=int, default=20)
    ap.add_argument("--meters", type=int, default=100, help="customer meters per area = readings per batch")
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE, help="readings/s, steady")
    ap.add_argument("--duration-s", type=float, default=30.0, help="how long the producer runs")
    ap.add_argument("--kind", choices=("batches", "singles"), default="batches")
    ap.add_argument("--scrape-hz", type=float, default=10.0, help="pass-rate gauge scrapes/s; 0: off")
    ap.add_argument("--kafka-version", default=None, help="default: local.kafka.DEFAULT_VERSION")
    ap.add_argument("--out", type=Path, default=None, help="write latency.json here (a directory)")
    args = ap.parse_args(argv)

    from local.kafka import DEFAULT_VERSION, LocalKafka

    tmp = Path(tempfile.mkdtemp(prefix="gw-latency-"))
    broker = None
    try:
        version = args.kafka_version or DEFAULT_VERSION
        print(f"starting Kafka {version} in {tmp}", flush=True)
        broker = LocalKafka.start(tmp / "kafka", version=version)
        result = run_latency(
            broker.bootstrap,
            tmp,
            areas=args.areas,
            meters=args.meters,
            rate=args.rate,
            duration_s=args.duration_s,
            message_kind=args.kind,
            scrape_hz=args.scrape_hz,
            log=lambda m: print(m, flush=True),
        )
        result = {"kafka_version": version, **result}
        text = json.dumps(result, indent=2)
        print(text)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "latency.json").write_text(text + "\n")
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
