"""Partitions move between two workers: each holds the archive of its own partitions' areas only
(fewer meters than the city), builds it again when a rebalance moves partitions, and forwards a
moved meter's readings to the worker of its new area; readings sent under an area their meter was
never in reach the worker that holds the meter through the meter directory; the final area-window
results equal a batch recomputation of the same data (streams.offline)."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from test_crash_kafka import FIELDS, _final_results
from worker_env import areas_csv, settings_for, worker_env

from local.run import WorkerProcess, free_port
from models.detection import Detection
from simulator.city import CitySpec, aligned_start, build, messages
from streams.kafkaio import create_topics, produce, read_topic
from streams.offline import run_records
from streams.topics import topic_specs
from streams.topology_feed import area_partition
from topology import MeterRecord, Role

INTERVAL = 900
# Forwards reach the other partition whenever its worker gets to them; in a replay that
# partition may be hours ahead in event time. A lateness of two days keeps every forward in
# time here, in the workers and in the recomputation alike.
LATENESS = 2 * 86400


def _wait(what: str, cond: Any, workers: list[WorkerProcess], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        for w in workers:
            assert w.alive(), f"worker died while waiting for {what}:\n{w.log_tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "\n".join(
            w.log_tail() for w in workers
        )
        time.sleep(0.5)


def test_partitions_move_between_two_workers_and_results_match_batch(kafka_broker, tmp_path: Path) -> None:
    start = aligned_start(datetime.now(UTC), 1.0, INTERVAL)
    city = build(CitySpec(areas=12, meters_per_area=20, days=1.0, start=start, seed=7))
    env = worker_env(
        kafka_broker.bootstrap,
        tmp_path,
        areas_csv=areas_csv(city, tmp_path),
        allowed_lateness_s=str(LATENESS),
        detect="false",
        archive_shard="true",  # each worker holds its own partitions' meters only
    )
    s = settings_for(env)
    # Two meters of one area move to an area of another partition halfway through: their
    # readings keep coming under the old area and are forwarded across partitions.
    old_area = city.area_ids[0]
    old_partition = area_partition(old_area, s.partitions)
    new_area = next(a for a in city.area_ids if area_partition(a, s.partitions) != old_partition)
    moved_at = datetime.fromtimestamp(city.times[len(city.times) // 2], UTC)
    moved = city.customers[old_area][:2]
    for meter_id in moved:
        record = MeterRecord(meter_id, new_area, Role.CUSTOMER, 1.0, "residential", True, moved_at)
        city.topology.apply(record)
    total_meters = city.topology.meter_count()

    # For each ordered pair of partitions with areas, one meter of the first reported under an
    # area of the second all day (a concentrator that lists it wrongly): whichever partitions
    # each worker holds while they share, some of these cross from one worker to the other.
    by_partition: dict[int, list[str]] = {}
    for area in city.area_ids:
        if area not in (old_area, new_area):
            by_partition.setdefault(area_partition(area, s.partitions), []).append(area)
    strays: dict[str, str] = {}  # meter -> the area it is reported under
    spare = {a: [m for m in city.customers[a] if m not in moved] for a in city.area_ids}
    for p, home_areas in by_partition.items():
        for q, wrong_areas in by_partition.items():
            if p != q:
                strays[spare[home_areas[0]].pop()] = wrong_areas[0]
    msgs = [(m.kind, m.key.encode(), orjson.dumps(m.value)) for m in _misreport(messages(city), strays)]
    oracle = run_records(msgs, city.topology, Detection(), allowed_lateness_s=LATENESS)
    want = {r.key(): r.to_dict() for r in oracle.results.values()}
    assert any(r.area_id == new_area and r.customers_reported for r in oracle.results.values())

    create_topics(s.bootstrap, topic_specs(s))
    produce(
        s.bootstrap,
        [(s.topic_topology, r.topic_key(), orjson.dumps(r.to_dict())) for r in city.topology.records()],
    )
    topic = {"readings": s.topic_readings, "supply": s.topic_supply}
    third = len(msgs) // 3
    phases = [msgs[:third], msgs[third : 2 * third], msgs[2 * third :]]

    env_b = {
        **env,
        "GRIDWATCH_METRICS_PORT": str(free_port()),
        "GRIDWATCH_WEB_PORT": str(free_port()),
        "GRIDWATCH_DATA_DIR": str(tmp_path / "worker-b"),
    }
    a = WorkerProcess(env, tmp_path / "a.log").start()
    b = WorkerProcess(env_b, tmp_path / "b.log")
    try:
        # Alone, A holds every partition, so the whole city.
        produce(s.bootstrap, [(topic[k], key, value) for k, key, value in phases[0]])
        _wait("A to load and work", lambda: (a.metric_sum("gridwatch_messages_total") or 0) > 0, [a])
        assert a.metric("gridwatch_topology_meters") == total_meters

        # B joins: the partitions are split, each worker holds the meters of its own areas.
        b.start()
        shared: dict[str, float] = {}

        def split() -> bool:
            na, nb = a.metric("gridwatch_topology_meters"), b.metric("gridwatch_topology_meters")
            if na is None or nb is None or not (0 < na < total_meters and 0 < nb < total_meters):
                return False
            shared.update(a=na, b=nb)
            return True

        _wait("A and B to hold a share of the archive each", split, [a, b])
        assert shared["a"] + shared["b"] >= total_meters  # every meter somewhere (moved: twice)
        produce(s.bootstrap, [(topic[k], key, value) for k, key, value in phases[1]])
        _wait("B to work", lambda: (b.metric_sum("gridwatch_messages_total") or 0) > 0, [a, b])

        def directed() -> bool:
            sent = (w.metric_sum("gridwatch_readings_total", {"outcome": "directed"}) for w in (a, b))
            return sum(n or 0 for n in sent) > 0

        _wait("a reading directed to the other worker's partition", directed, [a, b])

        # A leaves: B takes every partition and builds the whole archive.
        a.stop()
        produce(s.bootstrap, [(topic[k], key, value) for k, key, value in phases[2]])
        _wait("B to hold every meter", lambda: b.metric("gridwatch_topology_meters") == total_meters, [b])

        def matches() -> bool:
            final = _final_results(s.bootstrap, s.topic_lineloss)
            return all(k in final and all(final[k][f] == w[f] for f in FIELDS) for k, w in want.items())

        _wait("results equal to the batch recomputation", matches, [b], timeout=300)
        time.sleep(3.0)  # anything extra would follow closely
        final = _final_results(s.bootstrap, s.topic_lineloss)
        assert set(final) == set(want)
        for k, w in want.items():
            assert {f: final[k][f] for f in FIELDS} == {f: w[f] for f in FIELDS}, k
        values = [rec.value or b"" for rec in read_topic(s.bootstrap, s.topic_readings, idle_s=1.0)]
        rerouted = sum(1 for v in values if b"rerouted" in v)
        assert rerouted > 0  # the moved meters' readings crossed partitions
        assert sum(1 for v in values if b"directed" in v) > 0  # and the strays', by the directory
        dead = read_topic(s.bootstrap, s.topic_deadletter, idle_s=1.0)
        assert not [d for d in dead if orjson.loads(d.value or b"{}").get("reason") == "unknown_meter"]
        print(
            f"\nshared phase: A held {shared['a']:.0f}, B {shared['b']:.0f} of {total_meters} meters; "
            f"{len(want)} area-windows equal; {rerouted} readings forwarded, "
            f"{sum(1 for v in values if b'directed' in v)} directed ({len(strays)} meters under a wrong area)"
        )
    finally:
        a.stop()
        b.stop()


def _misreport(msgs: Any, strays: dict[str, str]) -> Any:
    """``msgs`` with each stray meter's readings taken out of its area's batch and sent alone
    under the wrong area, at the same interval end."""
    for m in msgs:
        value = m.value
        if m.kind == "readings" and value.get("kind") == "batch":
            moved = [r for r in value["readings"] if r["meter_id"] in strays]
            if moved:
                kept = [r for r in value["readings"] if r["meter_id"] not in strays]
                if kept:
                    yield replace(m, value={**value, "readings": kept})
                for r in moved:
                    wrong = strays[r["meter_id"]]
                    single = {"kind": "reading", "v": 1, "area_id": wrong, "ts": value["ts"], **r}
                    yield replace(m, key=wrong, value=single)
                continue
        yield m
