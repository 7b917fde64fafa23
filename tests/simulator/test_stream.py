"""The simulated stream: contracts, arrival order, concentrator re-sends, labelled transport faults,
the files it is written to, pacing, and the ``gridwatch simulate`` command."""

from __future__ import annotations

import base64
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from cli import app
from simulator.anomalies import AnomalySpec
from simulator.faults import TransportSpec
from simulator.files import JsonlSink, read_labels
from simulator.run import simulate
from simulator.stream import Delivery, Streamer
from simulator.synth import Sim, SimSpec
from streams.contracts import DecodedBatch, InvalidRecord, Reading, decode_readings
from topology import parse_time

CLEAN = AnomalySpec.only({})
NO_FAULTS = TransportSpec.none()


def run(spec: SimSpec) -> tuple[Sim, list[Delivery], list[dict[str, Any]]]:
    sim = Sim.build(spec)
    streamer = Streamer(sim)
    out: list[Delivery] = []
    for chunk in sim.chunks():
        for batch in streamer.feed(chunk):
            out.extend(batch)
    out.extend(streamer.flush())
    return sim, out, sim.labels() + streamer.labels


@pytest.mark.parametrize("batches", [True, False])
def test_records_satisfy_the_reading_contract(batches: bool) -> None:
    spec = SimSpec(
        seed=3,
        areas=3,
        days=0.25,
        batches=batches,
        anomalies=AnomalySpec.only({"wrong_mapping": 1}),
        transport=NO_FAULTS,
    )
    sim, out, labels = run(spec)
    g = sim.grid
    assert [d.at for d in out] == sorted(d.at for d in out)
    readings = 0
    for d in out:
        msg = decode_readings(d.value)
        assert msg.area_id == d.key and int(msg.ts.timestamp()) == d.ts == d.at
        if isinstance(msg, DecodedBatch):
            assert msg.refused == []
            ids = [v.meter_id for v in msg.values]
        else:
            assert isinstance(msg, Reading)
            ids = [msg.meter_id]
            assert (d.kind == "supply") == (msg.meter_id in g.supply_ids)
        # a concentrator reads the meters on its own transformer, whatever the archive says
        a = g.area_ids.index(d.key)
        assert all(m == g.supply_ids[a] or g.meter_area[g.meter_ids.index(m)] == a for m in ids)
        assert ids == d.meter_ids
        readings += len(ids)
    assert readings == (g.meters + len(g.area_ids)) * (spec.steps + 1)
    per_read = len(g.area_ids) * (2 if batches else 1) + (0 if batches else g.meters)
    assert len(out) == per_read * (spec.steps + 1)


def test_concentrator_outage_is_resent_in_one_go() -> None:
    spec = SimSpec(
        seed=8,
        areas=3,
        days=1.0,
        anomalies=AnomalySpec.only({"concentrator_outage": 1}, outage_hours=(2.0, 3.0)),
        transport=NO_FAULTS,
    )
    sim, out, labels = run(spec)
    (label,) = [lab for lab in labels if lab["type"] == "concentrator_outage"]
    start, end = (int(parse_time(label[k]).timestamp()) for k in ("start", "end"))
    resent = int(parse_time(label["parameters"]["resent_at"]).timestamp())
    assert 2 <= label["parameters"]["hours"] <= 3 and resent > end
    held = [d for d in out if d.key == label["entity"] and start < d.ts <= end]
    assert len(held) == 2 * (end - start) // spec.interval_s  # readings batch and supply, per read
    assert all(d.at == resent for d in held)
    assert all(d.at == d.ts for d in out if d not in held)
    # re-sent after everything published before resent_at
    first_resent = out.index(held[0])
    assert all(d.at <= resent for d in out[:first_resent])


def test_transport_faults_are_labelled() -> None:
    spec = SimSpec(
        seed=2,
        areas=4,
        days=0.5,
        anomalies=CLEAN,
        transport=TransportSpec(duplicate_rate=0.05, reorder_rate=0.05, malformed_rate=0.03),
    )
    sim, out, labels = run(spec)
    by_type = Counter(lab["type"] for lab in labels)
    assert by_type["duplicate"] > 0 and by_type["out_of_order"] > 0 and by_type["malformed"] > 0
    good = [d for d in out if d.meter_ids is not None]
    copies = Counter((d.kind, d.key, d.value) for d in good)
    assert sum(n - 1 for n in copies.values()) == by_type["duplicate"]
    # every reordered record arrives after records of a later interval on its topic
    for lab in (x for x in labels if x["type"] == "out_of_order"):
        ts = int(parse_time(lab["start"]).timestamp())
        topic = [d for d in good if d.kind == lab["parameters"]["topic"]]
        pos = next(i for i, d in enumerate(topic) if d.key == lab["area_id"] and d.ts == ts)
        assert topic[pos].at - ts == lab["parameters"]["delay_s"] > spec.interval_s
        if ts < sim.time(spec.steps):  # the last read has no later interval to overtake it
            assert any(d.ts > ts for d in topic[:pos])
    # malformed records are refused for the reason their label gives
    reasons = Counter()
    for d in out:
        if d.meter_ids is None:
            try:
                msg = decode_readings(d.value)
                assert isinstance(msg, Reading) and msg.meter_id == "X-unknown"
                reasons["unknown_meter"] += 1
            except InvalidRecord as exc:
                reasons[exc.reason] += 1
    assert reasons == Counter(lab["parameters"]["reason"] for lab in labels if lab["type"] == "malformed")


def test_jsonl_file_holds_every_record(tmp_path: Path) -> None:
    spec = SimSpec(seed=6, areas=2, days=0.25, transport=TransportSpec(malformed_rate=0.05))
    summary = simulate(spec, tmp_path, JsonlSink(tmp_path / "readings.jsonl"))
    lines = [orjson.loads(line) for line in (tmp_path / "readings.jsonl").read_bytes().splitlines()]
    assert len(lines) == summary.messages
    readings = raw = 0
    for line in lines:
        assert line["kind"] in ("readings", "supply") and line["ts"] <= line["at"]
        if "value" in line:
            value = line["value"]
            if isinstance(value, dict):
                readings += len(value.get("readings", [])) if value.get("kind") == "batch" else 1
        else:
            decode = base64.b64decode(line["value_b64"])
            with pytest.raises(InvalidRecord):
                decode_readings(decode)
            raw += 1
    assert raw > 0
    labels = read_labels(tmp_path / "labels.jsonl")
    assert summary.labels == len(labels)
    assert readings >= summary.readings  # plus the malformed ones that are valid JSON


def test_parquet_rows_are_the_readings(tmp_path: Path) -> None:
    import pyarrow.parquet as pq  # in the dev lock: the Parquet path is tested, never skipped

    from simulator.files import ParquetSink

    spec = SimSpec(seed=6, areas=2, days=0.25)
    summary = simulate(
        spec, tmp_path / "pq", ParquetSink(tmp_path / "pq" / "readings.parquet", row_group=1000)
    )
    table = pq.read_table(tmp_path / "pq" / "readings.parquet")
    assert table.column_names == ["at", "kind", "key", "ts", "meter_id", "register_kwh"]
    assert table.num_rows == summary.readings
    simulate(spec, tmp_path / "js", JsonlSink(tmp_path / "js" / "readings.jsonl"))
    first = orjson.loads((tmp_path / "js" / "readings.jsonl").read_bytes().splitlines()[0])["value"]
    row = table.slice(0, 1).to_pylist()[0]
    assert (row["meter_id"], row["register_kwh"]) == (
        first["readings"][0]["meter_id"],
        first["readings"][0]["register_kwh"],
    )


def test_speed_paces_by_arrival(tmp_path: Path) -> None:
    spec = SimSpec(seed=1, areas=1, days=0.25, anomalies=CLEAN, transport=NO_FAULTS)  # 6 h of arrivals
    started = time.monotonic()
    simulate(spec, tmp_path, JsonlSink(tmp_path / "r.jsonl"), speed=6 * 3600 / 0.6)
    assert 0.5 <= time.monotonic() - started < 5


def test_cli_simulate(tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "simulate",
        "--out",
        str(tmp_path),
        "--areas",
        "2",
        "--days",
        "0.1",
        "--clean",
        "--anomaly",
        "theft_h1=1",
        "--theft-share",
        "0.4",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "readings" in result.output
    labels = read_labels(tmp_path / "labels.jsonl")
    assert [(lab["type"], lab["parameters"]["share"]) for lab in labels] == [("theft_h1", 0.4)]
    assert (tmp_path / "readings.jsonl").stat().st_size > 0
    assert runner.invoke(app, ["simulate", "--out", str(tmp_path), "--anomaly", "nope=1"]).exit_code == 2
    assert runner.invoke(app, ["simulate", "--out", str(tmp_path), "--to", "nowhere"]).exit_code == 2
