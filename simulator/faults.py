"""Transport faults on a stream of readings, as concentrators and head ends produce them.

Each fault is recorded, so a test knows which records must be refused and which must replace
earlier ones. Ordering is only changed within ``shuffle_span`` intervals and re-sends happen
within ``resend_after`` intervals, both below a worker's allowed lateness; ``late`` records are
re-sent ``late_after`` intervals later with altered values, and must be refused as late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from simulator.city import Message


@dataclass(frozen=True)
class FaultSpec:
    seed: int = 11
    duplicate_rate: float = 0.05  # exact copies, re-sent a few intervals later
    shuffle_span: int = 3  # intervals within which order is scrambled
    resend_after: int = 4  # intervals after which a duplicate or outage re-send arrives
    late_count: int = 5  # customer batches re-sent long after, with altered values
    late_after: int = 40  # intervals (10 h at 15 min)
    malformed: int = 20  # records that break the contract


@dataclass
class Faulted:
    """The faulted stream: (kind, key bytes, value bytes) in production order."""

    records: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    duplicates: int = 0
    late: list[Message] = field(default_factory=list)
    malformed: list[tuple[str, bytes, bytes]] = field(default_factory=list)


def _dumps(value: object) -> bytes:
    import orjson

    return orjson.dumps(value)


def apply_faults(msgs: Sequence[Message], spec: FaultSpec, interval_s: int) -> Faulted:
    rng = np.random.default_rng(spec.seed)
    t0 = min(m.ts for m in msgs)
    # Sort key: interval index, jittered within shuffle_span (out-of-order arrival).
    slots: list[tuple[float, int, Message]] = []
    for i, m in enumerate(msgs):
        k = (m.ts - t0) // interval_s
        slots.append((k + rng.uniform(0, spec.shuffle_span), i, m))
        if rng.random() < spec.duplicate_rate:
            slots.append((k + spec.resend_after + rng.uniform(0, 1), i, m))
    slots.sort(key=lambda s: (s[0], s[1]))
    out = Faulted()
    out.duplicates = len(slots) - len(msgs)
    out.records = [(m.kind, m.key.encode(), _dumps(m.value)) for _, _, m in slots]
    # Late re-sends with altered registers: a worker that accepted them would change results.
    batches = [m for m in msgs if m.value.get("kind") == "batch"]
    t_end = max(m.ts for m in msgs)
    early = [m for m in batches if m.ts + spec.late_after * interval_s <= t_end]
    for j in rng.choice(len(early), size=min(spec.late_count, len(early)), replace=False):
        m = early[int(j)]
        readings = [{**r, "register_kwh": round(r["register_kwh"] + 50.0, 2)} for r in m.value["readings"]]
        out.late.append(Message(m.kind, m.key, {**m.value, "readings": readings}, m.ts))
    out.records.extend((m.kind, m.key.encode(), _dumps(m.value)) for m in out.late)
    # Malformed records, keyed like real ones.
    key = msgs[0].key.encode()
    some = dict(msgs[0].value)
    bad: list[bytes] = [
        b"{not json",
        b"",
        _dumps({**some, "ts": "yesterday"}),
        _dumps({"kind": "reading", "area_id": msgs[0].key, "ts": some["ts"], "meter_id": "X-unknown",
                "register_kwh": 1.0}),
        _dumps({"kind": "reading", "area_id": msgs[0].key, "ts": some["ts"], "meter_id": "m",
                "energy_kwh": -3.0}),
        b'{"kind":"reading","area_id":"A","ts":"2026-01-01T00:00:00Z","meter_id":"m","energy_kwh":1e400}',
        _dumps({"kind": "batch", "area_id": msgs[0].key, "ts": some["ts"], "readings": []}),
        _dumps({**some, "surprise": 1}),
    ]
    for n in range(spec.malformed):
        out.malformed.append(("readings", key, bad[n % len(bad)]))
    # Spread them through the stream.
    for n, rec in enumerate(out.malformed):
        pos = int((n + 1) * len(out.records) / (len(out.malformed) + 1))
        out.records.insert(pos, rec)
    return out
