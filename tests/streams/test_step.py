"""The batch step against the engine driven one record at a time (the oracle): the same results,
revisions, alerts and refusals, bit for bit, on simulator cities made messy with late readings,
corrections, readings under the wrong area (forwards) and bad records, whatever the chunk size."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.detection import Detection, window_intervals
from simulator.city import City, CitySpec, build, iso, messages
from streams import contracts
from streams.columnar import ColumnEngine
from streams.contracts import InvalidRecord, Reading
from streams.engine import REROUTED, LineLossEngine, Point
from streams.offline import run_records
from streams.step import BatchStep, Record, rerouted
from topology import MeterRecord, Role

START = datetime(2026, 3, 1, tzinfo=UTC)
SOURCES = ("readings", "supply")


def messy(city: City, seed: int, *, late: float = 0.05, corrections: float = 0.02) -> list[Record]:
    """The city's records with some delayed (late, some beyond the allowed lateness), some
    re-sent with another register (corrections), meters reported under a neighbour's key
    (forwards) and bad records of every kind."""
    rng = random.Random(seed)
    out: list[tuple[float, Record]] = []
    areas = city.area_ids
    for n, m in enumerate(messages(city)):
        value = m.value
        if value["kind"] == "batch" and len(areas) > 1 and rng.random() < 0.1:
            # One meter's reading under the next area's key: the engine forwards it.
            moved, value = value["readings"][0], {**value, "readings": value["readings"][1:]}
            other = areas[(areas.index(m.key) + 1) % len(areas)]
            single = {"kind": "reading", "v": 1, "area_id": other, "ts": value["ts"], **moved}
            out.append((n + 0.5, Record("readings", other.encode(), orjson.dumps(single))))
        delay = rng.choice((8, 40, 200, 900)) if rng.random() < late else 0  # in messages
        out.append((n + delay, Record(m.kind, m.key.encode(), orjson.dumps(value))))
        if value["kind"] == "batch" and rng.random() < corrections:
            fixed = [
                {**r, "register_kwh": r["register_kwh"] + rng.choice((0.0, 0.5))} for r in value["readings"]
            ]
            out.append(
                (
                    n + rng.randrange(1, 300),
                    Record(m.kind, m.key.encode(), orjson.dumps({**value, "readings": fixed})),
                )
            )
        if rng.random() < 0.03:
            out.append((n + 0.1, bad_record(rng, m.key, value)))
    out.sort(key=lambda pair: pair[0])
    return [r for _, r in out]


def bad_record(rng: random.Random, area: str, value: dict[str, Any]) -> Record:
    """A record breaking its contract, or a batch of known meters with one bad item."""
    ts = value["ts"]
    reading = {
        "kind": "reading",
        "v": 1,
        "area_id": area,
        "ts": ts,
        "meter_id": "nobody",
        "register_kwh": 1.0,
    }
    off_grid = iso(int(datetime.fromisoformat(ts).timestamp()) + 400)
    batch = {
        "kind": "batch",
        "v": 1,
        "area_id": area,
        "ts": ts,
        "readings": [
            {"meter_id": "x", "energy_kwh": -1},
            {"meter_id": "y"},
            {"meter_id": "z", "energy_kwh": 1},
        ],
    }
    choices = [
        Record("readings", area.encode(), b"{not json"),
        Record("readings", area.encode(), b""),
        Record("readings", b"elsewhere", orjson.dumps(reading)),
        Record("readings", area.encode(), orjson.dumps(reading)),  # unknown meter
        Record("readings", area.encode(), orjson.dumps({**reading, "ts": off_grid})),
        Record("readings", area.encode(), orjson.dumps(batch)),
    ]
    if value["kind"] == "batch":
        known = value["readings"][:20]
        for item in (
            {"meter_id": "bad id!", "energy_kwh": 1.0},
            known[0],
            {"meter_id": known[1]["meter_id"]},
        ):
            choices.append(
                Record("readings", area.encode(), orjson.dumps({**value, "readings": [*known, item]}))
            )
    return rng.choice(choices)


def oracle(
    city: City, records: list[Record], lateness: int, changes: dict[int, list[MeterRecord]] | None = None
) -> dict[str, Any]:
    """The engine and detectors driven record by record, as the worker drives them."""
    topology = city.topology
    detection = Detection(suspects=True)
    engine = LineLossEngine(
        topology,
        {},
        interval_s=900,
        window_s=900,
        allowed_lateness_s=lateness,
        close_delay_s=900,
        min_completeness=0.98,
        sources=SOURCES,
        track_closed=True,
    )
    results: list[tuple[dict[str, Any], int]] = []
    alerts: list[dict[str, Any]] = []
    refused: Counter[str] = Counter()

    def emit(out_results: Any) -> None:
        results.extend((r.to_dict(), engine.revision(r)) for r in out_results)
        for closed in engine.pop_closed():
            r = closed.result
            alerts.extend(
                detection.step(
                    window_intervals(
                        detection,
                        r.area_id,
                        r.window_start,
                        closed.points,
                        topology,
                        interval_s=900,
                        window_s=900,
                    )
                )
            )

    def ingest(area: str, ts: int, points: list[Point], role: Role, source: str) -> None:
        out = engine.ingest(0, area, ts, points, role, source=source)
        refused.update(r.reason for r in out.refused)
        emit(out.results)
        for fwd in out.forwards:
            flagged = [
                Point(p.meter_id, p.register_kwh, p.energy_kwh, (*p.flags, REROUTED)) for p in fwd.points
            ]
            ingest(fwd.area_id, fwd.ts, flagged, role, source)

    for n, rec in enumerate(records):
        for change in (changes or {}).get(n, []):
            topology.apply(change)
        role = Role.SUPPLY if rec.source == "supply" else Role.CUSTOMER
        try:
            msg = contracts.decode_readings(rec.value)
        except InvalidRecord as exc:
            refused[exc.reason] += 1
            continue
        if rec.key is not None and rec.key.decode() != msg.area_id:
            refused["key_mismatch"] += 1
            continue
        t = msg.ts.timestamp()
        if abs(t - round(t / 900) * 900) > 120:
            refused["off_grid"] += 1
            continue
        ts = int(round(t / 900) * 900)
        if isinstance(msg, Reading):
            points = [Point(msg.meter_id, msg.register_kwh, msg.energy_kwh, tuple(msg.flags))]
        else:
            points = [Point(v.meter_id, v.register_kwh, v.energy_kwh, tuple(v.flags)) for v in msg.values]
            refused.update(r.error.reason for r in msg.refused)
        ingest(msg.area_id, ts, points, role, rec.source)
    for source in SOURCES:
        engine.mark_idle(0, source)
    emit(engine.flush_idle(0))
    return {"results": results, "alerts": alerts, "refused": refused}


def stepped(
    city: City,
    records: list[Record],
    lateness: int,
    chunk: int,
    changes: dict[int, list[MeterRecord]] | None = None,
    store: dict[str, Any] | None = None,
) -> dict[str, Any]:
    step = BatchStep(
        city.topology,
        Detection(suspects=True),
        sources=SOURCES,
        supply_sources=frozenset({"supply"}),
        allowed_lateness_s=lateness,
        forward_inline=True,
        store=store,
    )
    results: list[tuple[dict[str, Any], int]] = []
    alerts: list[dict[str, Any]] = []
    refused: Counter[str] = Counter()
    cuts = sorted({0, len(records), *range(0, len(records), chunk), *(changes or {})})
    outs = []
    for a, b in itertools.pairwise(cuts):
        for change in (changes or {}).get(a, []):
            city.topology.apply(change)
        outs.append(step.step(records[a:b]))
    outs.append(step.close_idle(0, SOURCES))
    for out in outs:
        results.extend((r.to_dict(), rev) for r, rev in out.results)
        alerts.extend(out.alerts)
        refused.update(d.reason for d in out.dead_letters)
        refused.update(r.reason for r in out.refused)
    return {"results": results, "alerts": alerts, "refused": refused}


def city(areas: int, days: float, seed: int) -> City:
    spec = CitySpec(
        areas=areas,
        meters_per_area=30,
        days=days,
        start=START,
        seed=seed,
        theft_areas=(0,),
        outage_areas=(1,) if areas > 1 else (),
    )
    return build(spec)


@pytest.fixture(scope="module")
def town() -> City:
    return city(4, 1.5, 3)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_step_equals_the_engine_record_by_record(town: City, chunk: int) -> None:
    records = messy(town, seed=11)
    want = oracle(town, records, lateness=7200)
    got = stepped(town, records, lateness=7200, chunk=chunk)
    # The messy stream exercises what it is meant to: revisions, refusals of every kind, alerts.
    assert max(rev for _, rev in want["results"]) >= 1
    assert {
        "late",
        "unknown_meter",
        "key_mismatch",
        "off_grid",
        "json",
        "empty",
        "schema",
        "batch_repeat",
    } <= set(want["refused"])
    assert want["alerts"]
    assert got == want


def test_step_over_a_store_equals_the_engine(town: City) -> None:
    """With a store (the worker's case) the step keeps LineLossEngine's windows, and its store."""
    records = messy(town, seed=11)
    store: dict[str, Any] = {}
    got = stepped(town, records, lateness=7200, chunk=1000, store=store)
    assert got == oracle(town, records, lateness=7200)
    assert store and all(isinstance(v, dict) for v in store.values())


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), late=st.floats(0.0, 0.2), lateness=st.sampled_from([1800, 7200]))
def test_step_equals_the_engine_on_random_messes(seed: int, late: float, lateness: int) -> None:
    c = city(2, 0.75, seed % 50)
    records = messy(c, seed, late=late)
    assert stepped(c, records, lateness, chunk=100) == oracle(c, records, lateness)


def test_offline_run_is_the_step_in_chunks(town: City) -> None:
    records = messy(town, seed=5)
    want = oracle(town, records, lateness=7200)
    run = run_records(
        [(r.source, r.key, r.value or b"") for r in records], town.topology, Detection(suspects=True)
    )
    latest = {}
    for result, _ in want["results"]:
        latest[f"{result['area_id']}|{int(datetime.fromisoformat(result['window_start']).timestamp())}"] = (
            result
        )
    assert {k: r.to_dict() for k, r in run.results.items()} == latest
    assert run.alerts == want["alerts"]
    assert run.refused == dict(want["refused"])


def test_forwards_are_returned_flagged_when_not_applied_inline(town: City) -> None:
    records = messy(town, seed=11)
    step = BatchStep(town.topology, None, sources=SOURCES, supply_sources=frozenset({"supply"}))
    out = step.step(records[:2000])
    assert out.forwards, "readings under a neighbour's key are forwarded"
    for source, fwd in out.forwards:
        assert source == "readings"
        meter = fwd.points[0].meter_id
        assert town.topology.area_at_ts(meter, fwd.ts) == fwd.area_id
        assert all(REROUTED in p.flags for p in fwd.points)
    assert out.counts["rerouted"] == sum(len(f.points) for _, f in out.forwards)


def test_rerouted_keeps_the_flag_cap() -> None:
    full = Point("m", 1.0, None, tuple(f"f{i}" for i in range(contracts.MAX_FLAGS)))
    flagged = rerouted(full)
    assert len(flagged.flags) == contracts.MAX_FLAGS and flagged.flags[-1] == REROUTED
    assert rerouted(flagged) == flagged


def test_wall_clock_checks_only_with_now(town: City) -> None:
    first = next(messages(town))
    rec = Record(first.kind, first.key.encode(), orjson.dumps(first.value))
    kw: dict[str, Any] = {
        "sources": SOURCES,
        "supply_sources": frozenset({"supply"}),
        "max_past": timedelta(days=1),
        "max_future": timedelta(minutes=5),
    }
    out = BatchStep(town.topology, None, **kw).step([rec], now=START + timedelta(days=30))
    assert [d.reason for d in out.dead_letters] == ["too_old"]
    out = BatchStep(town.topology, None, **kw).step([rec])
    assert out.dead_letters == [] and out.counts["accepted"] == len(first.value["readings"])


def moves(c: City) -> tuple[list[MeterRecord], list[MeterRecord]]:
    """Archive changes: known before the run (a meter moved, a multiplier fixed), and applied
    halfway through it (another meter moved back in time, one moved ahead)."""
    a, b = c.area_ids[0], c.area_ids[1]
    m = c.customers[a]

    def rec(meter: str, area: str, hours: float, multiplier: float = 1.0) -> MeterRecord:
        return MeterRecord(
            meter, area, Role.CUSTOMER, multiplier, "residential", True, START + timedelta(hours=hours)
        )

    before = [rec(m[0], b, 6), rec(m[1], a, 9, multiplier=2.0), rec(m[2], b, 12), rec(m[2], a, 20)]
    halfway = [rec(m[3], b, 3), rec(m[4], b, 30)]
    return before, halfway


@pytest.mark.parametrize("chunk", [1, 1000])
def test_step_equals_the_engine_when_meters_move(chunk: int) -> None:
    runs = []
    for run in (oracle, stepped):
        c = city(4, 1.5, 3)
        before, halfway = moves(c)
        for r in before:
            c.topology.apply(r)
        records = messy(c, seed=13)
        changes = {len(records) // 2: halfway}
        if run is oracle:
            runs.append(oracle(c, records, 7200, changes))
        else:
            runs.append(stepped(c, records, 7200, chunk, changes))
    want, got = runs
    assert want["results"] and want["alerts"]
    assert got == want


def test_unknown_meters_do_not_grow_the_index(town: City) -> None:
    step = BatchStep(town.topology, None, sources=SOURCES, supply_sources=frozenset({"supply"}))
    area = town.area_ids[0]
    ts = iso(int(START.timestamp()) + 900)
    items = [{"meter_id": f"ghost-{i}", "register_kwh": 1.0} for i in range(50)]
    batch = {"kind": "batch", "v": 1, "area_id": area, "ts": ts, "readings": items}
    out = step.step([Record("readings", area.encode(), orjson.dumps(batch))] * 3)
    assert [r.reason for r in out.refused] == ["unknown_meter"] * 150
    assert isinstance(step.engine, ColumnEngine) and step.engine._index.ids == {}


def test_checked_batches_fall_back_for_their_reasons(town: City) -> None:
    area = town.area_ids[0]
    known = town.customers[area][:20]
    ts = iso(int(START.timestamp()) + 900)

    def batch(items: list[dict[str, Any]]) -> bytes:
        return orjson.dumps({"kind": "batch", "v": 1, "area_id": area, "ts": ts, "readings": items})

    good = [{"meter_id": m, "register_kwh": 1.0} for m in known]
    checked = set(known).issuperset
    decoded = contracts.decode_checked(batch(good), checked)
    assert decoded is not None and [v.meter_id for v in decoded.values] == known
    assert (
        contracts.decode_checked(batch([*good, {"meter_id": "bad id!", "register_kwh": 1.0}]), checked)
        is None
    )
    assert contracts.decode_checked(batch([*good, good[0]]), checked) is None  # a repeat
    assert contracts.decode_checked(batch([*good[1:], {"meter_id": known[0]}]), checked) is None  # no energy
    assert contracts.decode_checked(batch(good), set(known[1:]).issuperset) is None  # not vouched for
    single = {"kind": "reading", "v": 1, "area_id": area, "ts": ts, "meter_id": known[0], "register_kwh": 1.0}
    # A single reading's one id is checked in full: decoded as decode_readings does, or None.
    assert contracts.decode_checked(orjson.dumps(single), checked) == contracts.decode_readings(
        orjson.dumps(single)
    )
    assert contracts.decode_checked(orjson.dumps({**single, "register_kwh": None}), checked) is None
    assert contracts.decode_checked(orjson.dumps({**single, "meter_id": "bad id!"}), checked) is None
    assert contracts.decode_checked(b"", checked) is None


def test_a_steps_windows_learned_together_equal_one_window_at_a_time(town: City) -> None:
    """The worker hands a step's first-closed windows to the detectors together
    (``Detection.step_by_area``, the meter detector over their areas in one call): each area's
    alert records and its saved state equal those of learning the windows one at a time."""
    step = BatchStep(
        town.topology,
        None,
        sources=SOURCES,
        supply_sources=frozenset({"supply"}),
        forward_inline=True,
        keep_closed=True,
    )
    together, alone = Detection(suspects=True), Detection(suspects=True)
    got: dict[str, list[dict[str, Any]]] = {}
    want: dict[str, list[dict[str, Any]]] = {}
    meters: dict[str, list[str]] = {}

    def intervals(det: Detection, window: Any) -> list[Any]:
        r = window.result
        return window_intervals(
            det, r.area_id, r.window_start, window.points, town.topology, interval_s=900, window_s=900
        )

    records = messy(town, 5)
    outs = (step.step(records[a : a + 500]) for a in range(0, len(records), 500))
    rounds = 0
    for out in itertools.chain(outs, [step.close_idle(0, SOURCES)]):
        batch = [iv for w in out.closed for iv in intervals(together, w)]
        rounds += len({iv.area_id for iv in batch}) > 1
        for area, recs in together.step_by_area(batch).items():
            got.setdefault(area, []).extend(recs)
        for w in out.closed:
            ivs = intervals(alone, w)
            want.setdefault(w.result.area_id, []).extend(alone.step(ivs))
            if ivs:
                meters[w.result.area_id] = [alone.meter_name(int(i)) for i in ivs[0].meters]
    got = {a: r for a, r in got.items() if r}
    want = {a: r for a, r in want.items() if r}
    assert rounds > 0 and sum(map(len, want.values())) > 0
    assert got == want
    for area, names in meters.items():
        assert together.snapshot_area(area, names) == alone.snapshot_area(area, names)
