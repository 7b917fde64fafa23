"""The worker on the real broker: every area-window result and every window's pass rate equal a
plain batch recomputation of the same data, through duplicates, re-sends, reordering, malformed
records, and a SIGKILL mid-stream."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from worker_env import committed_lag, settings_for, worker_env

from local.run import WorkerProcess
from models.lineloss import LossState, judge, pass_rate
from simulator.city import City, CitySpec, aligned_start, build, messages
from simulator.faults import Faulted, FaultSpec, apply_faults
from streams.kafkaio import create_topics, produce, read_topic
from streams.settings import Settings
from streams.topics import topic_specs
from topology import Role

INTERVAL = 900
AREAS, METERS, DAYS = 40, 50, 1.0


@dataclass
class Scenario:
    city: City
    faulted: Faulted
    expected: dict[tuple[str, int], dict[str, object]]
    resent_duplicates: int  # readings in the outage re-send that had arrived the first time


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    start = aligned_start(datetime.now(UTC), DAYS, INTERVAL)
    spec = CitySpec(
        areas=AREAS, meters_per_area=METERS, days=DAYS, start=start, seed=3,
        theft_areas=(1, 5), negative_areas=(2,), outage_areas=(3, 8), outage_intervals=6,
    )
    city = build(spec)
    msgs = list(messages(city))
    faulted = apply_faults(msgs, FaultSpec(seed=5), INTERVAL)
    # The outage's silent data is re-sent by the concentrator a few intervals later (within
    # the allowed lateness): windows first closed incomplete must be corrected to complete.
    resend = [
        (m.kind, m.key.encode(), orjson.dumps(m.value))
        for m in messages(_without_outage(city))
        if m.kind == "readings" and any((r["meter_id"], _k(city, m.ts)) in city.missing
                                        for r in m.value.get("readings", []))
    ]
    outage_end = city.times[len(city.times) // 2 + spec.outage_intervals]
    resend_ts = outage_end + 2 * INTERVAL
    insert_at = next(
        i for i, (_, _, value) in enumerate(faulted.records)
        if value.startswith(b"{") and _ts_of(value) >= resend_ts
    )
    faulted.records[insert_at:insert_at] = resend
    resent = sum(len(orjson.loads(v)["readings"]) for _, _, v in resend)
    return Scenario(city, faulted, batch_recompute(city), resent - len(city.missing))


def _ts_of(value: bytes) -> int:
    try:
        ts = orjson.loads(value).get("ts", "")
        return int(datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp())
    except (orjson.JSONDecodeError, ValueError, AttributeError):
        return 0


def _k(city: City, ts: int) -> int:
    return (ts - city.times[0]) // INTERVAL


def _without_outage(city: City) -> City:
    return City(city.spec, city.topology, city.area_ids, city.customers, city.supply, city.registers, set())


def batch_recompute(city: City) -> dict[tuple[str, int], dict[str, object]]:
    """Line loss of every area-window straight from the registers the city reported, written
    independently of the engine: energy = register at window end - register at window start."""
    times = city.times
    bounds_of = city.topology.bounds_for
    out: dict[tuple[str, int], dict[str, object]] = {}
    # Windows: the one ending at times[0] (start registers only: incomplete) and one per step.
    for area_id in city.area_ids:
        supply_id = city.supply[area_id]
        for k in range(0, len(times)):
            start = times[k] - INTERVAL
            reg = city.registers
            reported = 0
            sales = 0.0
            for m in city.customers[area_id]:
                # the outage data is re-sent within lateness, so in the end everything counts
                if k >= 1:
                    sales += (reg[m][k] - reg[m][k - 1]) * 1.0
                    reported += 1
            supply = (reg[supply_id][k] - reg[supply_id][k - 1]) * 5.0 if k >= 1 else 0.0
            supplies_reported = 1 if k >= 1 else 0
            state, loss_rate = judge(
                supply_kwh=round(supply, 6), sales_kwh=round(sales, 6),
                customers_expected=len(city.customers[area_id]), customers_reported=reported,
                supplies_expected=1, supplies_reported=supplies_reported,
                bounds=bounds_of(area_id), min_completeness=0.98,
            )
            out[(area_id, start)] = {
                "state": state.value, "loss_rate": loss_rate, "customers_reported": reported,
                "supply_kwh": round(supply, 6) if k >= 1 else 0.0, "sales_kwh": round(sales, 6),
            }
    return out


def _areas_csv(city: City, tmp: Path) -> str:
    """The city's area classes as a deployment configures them (GRIDWATCH_AREAS_CSV): without
    it every area would be judged against the default class's bounds."""
    path = tmp / "areas.csv"
    rows = [f"{a},{city.topology.area_class(a)},," for a in city.area_ids]
    path.write_text("area_id,area_class,loss_lower,loss_upper\n" + "\n".join(rows) + "\n")
    return str(path)


def _publish(env: dict[str, str], sc: Scenario) -> Settings:
    s = settings_for(env)
    create_topics(s.bootstrap, topic_specs(s))
    topo = [
        (s.topic_topology, r.topic_key(), orjson.dumps(r.to_dict()))
        for r in sc.city.topology.records()
    ]
    produce(s.bootstrap, topo)
    return s


def _records(s: Settings, sc: Scenario) -> list[tuple[str, bytes, bytes]]:
    """The faulted stream without its late re-sends (those are :func:`_late_records`)."""
    topic = {"readings": s.topic_readings, "supply": s.topic_supply}
    late = set(_late_values(sc))
    return [(topic[kind], key, value) for kind, key, value in sc.faulted.records if value not in late]


def _late_values(sc: Scenario) -> list[bytes]:
    return [orjson.dumps(m.value) for m in sc.faulted.late]


def _late_records(s: Settings, sc: Scenario) -> list[tuple[str, bytes, bytes]]:
    """The re-sends with altered registers, 40 intervals after their time.

    They are late only against the partition's watermark, the slower of its two topics: a
    window waiting for its supply reading stays open however far the readings topic has run
    ahead, and a correction for it is accepted (docs/design.md, "Watermarks and lateness").
    Appended to the produced stream they were late or not by how far the supply topic lagged
    when the readings consumer reached them; a restart can leave it 10 h behind (CI saw
    A0001's re-send accepted that way). Produced once the worker has caught up on everything
    else, they are late by construction, and the worker must refuse them.
    """
    topic = {"readings": s.topic_readings, "supply": s.topic_supply}
    late = set(_late_values(sc))
    records = [(topic[kind], key, value) for kind, key, value in sc.faulted.records if value in late]
    assert len(records) == len(sc.faulted.late)
    return records


def _refuse_late(s: Settings, sc: Scenario, worker: WorkerProcess) -> dict:
    """Produce the late re-sends after the main stream, wait until the worker has read them,
    and return the final results then."""
    produce(s.bootstrap, _late_records(s, sc))
    return _wait_complete(s, sc, worker)


def _final_results(s: Settings) -> dict[tuple[str, int], dict[str, object]]:
    final = {}
    for rec in read_topic(s.bootstrap, s.topic_lineloss):
        v = orjson.loads(rec.value or b"{}")
        start = int(datetime.fromisoformat(str(v["window_start"]).replace("Z", "+00:00")).timestamp())
        final[(str(v["area_id"]), start)] = v
    return final


def _wait(
    cond: Callable[[], bool],
    timeout: float,
    worker: WorkerProcess,
    what: str,
    progress: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        assert worker.alive(), f"worker died while waiting for {what}:\n{worker.log_tail()}"
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what} ({progress()}):\n{worker.log_tail()}")


def _wait_complete(s: Settings, sc: Scenario, worker: WorkerProcess, timeout: float = 300) -> dict:
    def caught_up() -> bool:
        lag = committed_lag(s, [s.topic_readings, s.topic_supply])
        return lag == 0 and len(_final_results(s)) >= len(sc.expected)

    def progress() -> str:
        lag = committed_lag(s, [s.topic_readings, s.topic_supply])
        return f"lag={lag}, results={len(_final_results(s))} of {len(sc.expected)}"

    _wait(caught_up, timeout, worker, "all area-windows", progress)
    # corrections from re-sent data follow within the idle close; wait for results to settle
    last, stable = None, 0
    while stable < 3:
        time.sleep(2.0)
        now = _final_results(s)
        stable = stable + 1 if now == last else 0
        last = now
    assert last is not None
    return last


def _assert_equal_to_batch(final: dict, expected: dict) -> None:
    assert set(final) == set(expected)
    mismatches = []
    for key, exp in expected.items():
        got = final[key]
        same = (
            got["state"] == exp["state"]
            and got["customers_reported"] == exp["customers_reported"]
            and got["sales_kwh"] == pytest.approx(exp["sales_kwh"], abs=1e-5)
            and (
                got["state"] == "incomplete"
                or got["supply_kwh"] == pytest.approx(exp["supply_kwh"], abs=1e-5)
            )
            and (exp["loss_rate"] is None) == (got["loss_rate"] is None)
            and (exp["loss_rate"] is None or got["loss_rate"] == pytest.approx(exp["loss_rate"], abs=1e-9))
        )
        if not same:
            mismatches.append((key, {k: got[k] for k in exp}, exp))
    assert not mismatches, f"{len(mismatches)} area-windows differ, e.g. {mismatches[:3]}"


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses listening on ``port`` (from /proc/net/tcp; state 0A is LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(".".join(str(int(addr_hex[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def _pass_rates(results: dict) -> dict[int, tuple[int, int]]:
    by_window: dict[int, list[str]] = defaultdict(list)
    for (_, start), v in results.items():
        by_window[start].append(str(v["state"]))
    rates = {}
    for start, states in by_window.items():
        judged = [st for st in states if st in ("qualified", "high_loss", "negative_loss")]
        rates[start] = (states.count("qualified"), len(judged))
    return rates


def test_worker_matches_batch_recomputation(kafka_broker, scenario: Scenario, tmp_path: Path) -> None:
    env = worker_env(kafka_broker.bootstrap, tmp_path, areas_csv=_areas_csv(scenario.city, tmp_path))
    s = _publish(env, scenario)
    produced = produce(s.bootstrap, _records(s, scenario))
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    started = time.monotonic()
    try:
        _wait_complete(s, scenario, worker)
        elapsed = time.monotonic() - started
        final = _refuse_late(s, scenario, worker)
        # the web server and the metrics endpoint listen on loopback only by default
        assert listening_addresses(int(env["GRIDWATCH_WEB_PORT"])) == {"127.0.0.1"}
        assert listening_addresses(int(env["GRIDWATCH_METRICS_PORT"])) == {"127.0.0.1"}
        accepted = sum(
            worker.metric("gridwatch_readings_total", {"outcome": "accepted", "role": r}) or 0
            for r in ("customer", "supply")
        )
        duplicates = worker.metric("gridwatch_readings_total", {"outcome": "duplicate", "role": "customer"})
        print(f"\n[integration] {produced} records, {accepted:.0f} readings accepted in {elapsed:.1f}s "
              f"(incl. start-up): {accepted / elapsed:.0f} readings/s")
        _assert_equal_to_batch(final, scenario.expected)
        # each window's pass rate, from the worker's results, equals the batch's
        assert _pass_rates(final) == _pass_rates(scenario.expected)
        # the injected areas show what they should most of the time
        states = Counter((a, str(v["state"])) for (a, _), v in final.items())
        assert states[("A0001", "high_loss")] >= 90 and states[("A0005", "high_loss")] >= 90
        assert states[("A0002", "negative_loss")] >= 90
        # the worker's own pass-rate gauge agrees with the batch for the latest window
        latest = max(start for _, start in scenario.expected)
        q, j = _pass_rates(scenario.expected)[latest]
        assert worker.metric("gridwatch_areas_judged") == j
        assert worker.metric("gridwatch_pass_ratio") == pytest.approx(q / j)
        assert duplicates == scenario.faulted.duplicate_readings["readings"] + scenario.resent_duplicates
        # every malformed and late record reached the dead-letter topic with a reason
        dead = [orjson.loads(r.value or b"{}") for r in read_topic(s.bootstrap, s.topic_deadletter)]
        reasons = Counter(d["reason"] for d in dead)
        late_readings = sum(len(m.value["readings"]) for m in scenario.faulted.late)
        assert reasons["late"] == late_readings
        assert sum(n for r, n in reasons.items() if r != "late") == len(scenario.faulted.malformed)
        assert all(d["detail"] and d["source"]["topic"] for d in dead)
        rejected = worker.metric("gridwatch_readings_rejected_total", {"reason": "json"})
        assert rejected is not None and rejected > 0
    finally:
        worker.stop()


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(
    kafka_broker, scenario: Scenario, tmp_path: Path
) -> None:
    env = worker_env(kafka_broker.bootstrap, tmp_path, areas_csv=_areas_csv(scenario.city, tmp_path))
    s = _publish(env, scenario)
    produce(s.bootstrap, _records(s, scenario))
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        # kill once a third of the results are out, well inside the stream
        _wait(lambda: len(_final_results(s)) >= len(scenario.expected) // 3, 300, worker, "a third")
        worker.kill()
        assert not worker.alive()
        worker.start()
        _wait_complete(s, scenario, worker)
        final = _refuse_late(s, scenario, worker)
        _assert_equal_to_batch(final, scenario.expected)
        assert _pass_rates(final) == _pass_rates(scenario.expected)
    finally:
        worker.stop()


def test_batch_recompute_sees_the_injected_states(scenario: Scenario) -> None:
    """Guard for the oracle itself: thefts, the under-reading supply meter and the first
    window's missing start registers show as they must."""
    states = Counter((a, str(v["state"])) for (a, _), v in scenario.expected.items())
    assert states[("A0001", LossState.HIGH_LOSS.value)] >= 90
    assert states[("A0002", LossState.NEGATIVE_LOSS.value)] >= 90
    assert sum(n for (_, st), n in states.items() if st == "incomplete") == AREAS
    first = min(start for _, start in scenario.expected)
    assert pass_rate(first, []).judged == 0
    assert Role.SUPPLY.value == "supply"


def test_broker_restart_mid_stream_loses_nothing(scenario: Scenario, tmp_path: Path) -> None:
    """The broker stops (SIGTERM, controlled shutdown) with half the stream produced and comes
    back 5 s later; the worker reconnects by itself and the final results equal the batch."""
    import os

    from local.kafka import DEFAULT_VERSION, LocalKafka

    version = os.environ.get("GRIDWATCH_KAFKA_VERSION", DEFAULT_VERSION)
    broker = LocalKafka.start(tmp_path / "kafka", version=version)
    worker = None
    try:
        env = worker_env(broker.bootstrap, tmp_path, areas_csv=_areas_csv(scenario.city, tmp_path))
        s = _publish(env, scenario)
        records = _records(s, scenario)
        half = len(records) // 2
        produce(s.bootstrap, records[:half])
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        _wait(lambda: len(_final_results(s)) >= len(scenario.expected) // 4, 300, worker, "a quarter")
        broker.stop()
        time.sleep(5)
        assert worker.alive(), f"worker died with the broker down:\n{worker.log_tail()}"
        broker.restart()
        produce(s.bootstrap, records[half:])
        _wait_complete(s, scenario, worker)
        final = _refuse_late(s, scenario, worker)
        _assert_equal_to_batch(final, scenario.expected)
        assert _pass_rates(final) == _pass_rates(scenario.expected)
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()
