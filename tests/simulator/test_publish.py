"""``simulate --to kafka`` on the real broker: the archive on the topology topic (keyed as
``gridwatch topology load`` keys it), then every record on the topics the worker reads."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

from local.kafka import LocalKafka
from simulator.city import aligned_start
from simulator.faults import TransportSpec
from simulator.files import JsonlSink
from simulator.publish import KafkaSink
from simulator.run import simulate
from simulator.synth import SimSpec
from streams.kafkaio import read_topic
from streams.settings import Settings
from topology import MeterRecord


def test_simulation_lands_on_the_worker_topics(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    run = f"sim-{uuid.uuid4().hex[:8]}"
    s = Settings(
        bootstrap=kafka_broker.bootstrap,
        topic_readings=f"{run}.readings",
        topic_supply=f"{run}.supply",
        topic_topology=f"{run}.topology",
        topic_lineloss=f"{run}.lineloss",
        topic_deadletter=f"{run}.deadletter",
    )
    spec = SimSpec(
        seed=3,
        areas=2,
        days=0.25,
        start=aligned_start(datetime.now(UTC), 0.25, 900),
        transport=TransportSpec(malformed_rate=0.02),
    )
    summary = simulate(spec, tmp_path / "k", KafkaSink(s))
    simulate(spec, tmp_path / "f", JsonlSink(tmp_path / "f" / "readings.jsonl"))
    # the same records as the file, in the same order for each key
    lines = [orjson.loads(x) for x in (tmp_path / "f" / "readings.jsonl").read_bytes().splitlines()]
    readings, supply = read_topic(s.bootstrap, s.topic_readings), read_topic(s.bootstrap, s.topic_supply)
    assert len(readings) + len(supply) == summary.messages == len(lines)
    for kind, recs in (("readings", readings), ("supply", supply)):
        for key in {x["key"] for x in lines if x["kind"] == kind}:
            got = [
                r.value for r in sorted(recs, key=lambda r: (r.partition, r.offset)) if r.key == key.encode()
            ]
            want = [
                orjson.dumps(x["value"]) if "value" in x else base64.b64decode(x["value_b64"])
                for x in lines
                if x["kind"] == kind and x["key"] == key
            ]
            assert got == want
    topo = read_topic(s.bootstrap, s.topic_topology)
    meters = {r.key: MeterRecord.from_dict(orjson.loads(r.value or b"{}")) for r in topo}
    assert len(meters) == summary.meters + summary.areas
    assert all(k == f"{m.meter_id}|{m.effective_from.isoformat()}".encode() for k, m in meters.items())
