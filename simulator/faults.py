"""Transport faults on a stream of readings, as concentrators and head ends produce them.

Each fault is recorded, so a test knows which records must be refused and which must replace
earlier ones. Ordering is only changed within ``shuffle_span`` intervals and re-sends happen
within ``resend_after`` intervals, both below a worker's allowed lateness; ``late`` records are
re-sent ``late_after`` intervals later with altered values, and must be refused as late.

``TransportSpec`` and ``malformed_values`` serve the streamed simulator (simulator/stream.py),
which draws the same kinds of fault per message, as rates, without holding the stream in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

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
    duplicate_readings: dict[str, int] = field(default_factory=dict)  # by kind
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
    dup_counts: dict[str, int] = {}
    for i, m in enumerate(msgs):
        k = (m.ts - t0) // interval_s
        slots.append((k + rng.uniform(0, spec.shuffle_span), i, m))
        if rng.random() < spec.duplicate_rate:
            slots.append((k + spec.resend_after + rng.uniform(0, 1), i, m))
            n = len(m.value["readings"]) if m.value.get("kind") == "batch" else 1  # type: ignore[arg-type]
            dup_counts[m.kind] = dup_counts.get(m.kind, 0) + n
    slots.sort(key=lambda s: (s[0], s[1]))
    out = Faulted()
    out.duplicates = len(slots) - len(msgs)
    out.duplicate_readings = dup_counts
    out.records = [(m.kind, m.key.encode(), _dumps(m.value)) for _, _, m in slots]
    # Late re-sends with altered registers: a worker that accepted them would change results.
    batches = [m for m in msgs if m.value.get("kind") == "batch"]
    t_end = max(m.ts for m in msgs)
    early = [m for m in batches if m.ts + spec.late_after * interval_s <= t_end]
    for j in rng.choice(len(early), size=min(spec.late_count, len(early)), replace=False):
        m = early[int(j)]
        items = cast(list[dict[str, Any]], m.value["readings"])
        readings = [{**r, "register_kwh": round(r["register_kwh"] + 50.0, 2)} for r in items]
        out.late.append(Message(m.kind, m.key, {**m.value, "readings": readings}, m.ts))
    out.records.extend((m.kind, m.key.encode(), _dumps(m.value)) for m in out.late)
    # Malformed records, keyed like real ones.
    key = msgs[0].key.encode()
    bad = [value for _, value in malformed_values(msgs[0].key, msgs[0].value)]
    for n in range(spec.malformed):
        out.malformed.append(("readings", key, bad[n % len(bad)]))
    # Spread them through the stream.
    for n, rec in enumerate(out.malformed):
        pos = int((n + 1) * len(out.records) / (len(out.malformed) + 1))
        out.records.insert(pos, rec)
    return out


def malformed_values(key: str, sample: Mapping[str, object]) -> list[tuple[str, bytes]]:
    """Records that break the contract, each with the dead-letter reason a worker gives it;
    ``sample`` is a well-formed value of area ``key`` (its ``ts`` is reused)."""
    some = dict(sample)
    return [
        ("json", b"{not json"),
        ("empty", b""),
        ("schema", _dumps({**some, "ts": "yesterday"})),
        (
            "unknown_meter",
            _dumps(
                {
                    "kind": "reading",
                    "area_id": key,
                    "ts": some["ts"],
                    "meter_id": "X-unknown",
                    "register_kwh": 1.0,
                }
            ),
        ),
        (
            "schema",
            _dumps(
                {"kind": "reading", "area_id": key, "ts": some["ts"], "meter_id": "m", "energy_kwh": -3.0}
            ),
        ),
        (
            "schema",
            b'{"kind":"reading","area_id":"A","ts":"2026-01-01T00:00:00Z","meter_id":"m","energy_kwh":1e400}',
        ),
        ("schema", _dumps({"kind": "batch", "area_id": key, "ts": some["ts"], "readings": []})),
        ("schema", _dumps({**some, "surprise": 1})),
    ]


@dataclass(frozen=True)
class TransportSpec:
    """Transport faults of a streamed simulation, as rates per message."""

    duplicate_rate: float = 0.005  # an exact copy arrives ``resend_after`` intervals later
    reorder_rate: float = 0.005  # the message arrives up to ``reorder_span`` intervals late
    reorder_span: int = 3
    resend_after: int = 4
    malformed_rate: float = 0.0002  # a record breaking the contract is sent beside the message

    def __post_init__(self) -> None:
        for name in ("duplicate_rate", "reorder_rate", "malformed_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.reorder_span < 2 or self.resend_after < 1:
            # reordered: arrives after the next interval's record of the same key
            raise ValueError("reorder_span must be >= 2 intervals and resend_after >= 1")

    @classmethod
    def none(cls) -> TransportSpec:
        return cls(duplicate_rate=0.0, reorder_rate=0.0, malformed_rate=0.0)
