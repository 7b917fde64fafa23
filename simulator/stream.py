"""A simulated city as the head end would publish it: records in arrival order.

Every record has an event time (``ts``, the interval end it reports) and an arrival time
(``at``): normally the same, later for a concentrator that was out (its reads are re-sent at
``resent_at``), for a reordered message and for a duplicate. Transport faults are drawn per
message from ``TransportSpec`` rates and labelled one by one. Memory stays bounded: only
records not yet due are held (a few intervals, or an outage's length).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson

from simulator.anomalies import iso
from simulator.faults import malformed_values
from simulator.synth import TRANSPORT, Chunk, Sim, stream


@dataclass(slots=True)
class Delivery:
    """One Kafka record of the simulation (``meter_ids`` is None for a malformed one)."""

    at: int  # arrival, epoch seconds
    kind: str  # "readings" or "supply"
    key: str  # area id
    ts: int  # event time: the interval end reported
    value: bytes
    meter_ids: list[str] | None = None
    registers: list[float] | None = None

    @property
    def readings(self) -> int:
        return len(self.meter_ids) if self.meter_ids is not None else 0


class Streamer:
    """Feeds on the city's chunks, yields the records due at each read time."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.transport = sim.spec.transport
        self.rng = stream(sim.spec.seed, TRANSPORT)
        self.heap: list[tuple[int, int, Delivery]] = []
        self.seq = 0
        self.labels: list[dict[str, Any]] = []
        self.outages = [
            (a.area, a.first, a.last, sim.spec.t0 + a.last * sim.spec.interval_s + a.params["resend_delay_s"])
            for a in sim.anomalies
            if a.type == "concentrator_outage"
        ]

    def feed(self, chunk: Chunk) -> Iterator[list[Delivery]]:
        """Per read time of the chunk, the records that have arrived by then, in order."""
        grid, batches = self.sim.grid, self.sim.spec.batches
        for j in range(0 if chunk.c0 == 0 else 1, len(chunk.times)):
            read, t = chunk.c0 + j, int(chunk.times[j])
            ts = iso(t)
            arrive = [t] * len(grid.area_ids)
            for area, first, last, resent in self.outages:
                if first <= read <= last:
                    arrive[area] = resent
            values = chunk.registers[:, j].tolist()
            absent = chunk.missing[:, j]
            absent_any = bool(absent.any())
            supply = chunk.supply_registers[:, j].tolist()
            out: list[Delivery] = []
            for a, area_id in enumerate(grid.area_ids):
                lo, hi = int(grid.first[a]), int(grid.first[a + 1])
                ids, regs = grid.meter_ids[lo:hi], values[lo:hi]
                if absent_any and absent[lo:hi].any():
                    keep = np.flatnonzero(~absent[lo:hi]).tolist()
                    ids, regs = [ids[i] for i in keep], [regs[i] for i in keep]
                if batches and ids:
                    items = [{"meter_id": m, "register_kwh": r} for m, r in zip(ids, regs, strict=True)]
                    value = {"kind": "batch", "v": 1, "area_id": area_id, "ts": ts, "readings": items}
                    out.append(Delivery(arrive[a], "readings", area_id, t, orjson.dumps(value), ids, regs))
                elif ids:
                    for m, r in zip(ids, regs, strict=True):
                        value = {
                            "kind": "reading",
                            "v": 1,
                            "area_id": area_id,
                            "ts": ts,
                            "meter_id": m,
                            "register_kwh": r,
                        }
                        out.append(Delivery(arrive[a], "readings", area_id, t, orjson.dumps(value), [m], [r]))
                sid = grid.supply_ids[a]
                value = {
                    "kind": "reading",
                    "v": 1,
                    "area_id": area_id,
                    "ts": ts,
                    "meter_id": sid,
                    "register_kwh": supply[a],
                }
                out.append(Delivery(arrive[a], "supply", area_id, t, orjson.dumps(value), [sid], [supply[a]]))
            on_time = self._send(out, t)
            # Held records due by now were sent before this read's: they go first.
            yield self._due(t) + on_time

    def flush(self) -> list[Delivery]:
        """Everything still held (re-sends and duplicates due after the last read)."""
        return self._due(None)

    def _hold(self, d: Delivery, now: int, on_time: list[Delivery]) -> None:
        if d.at <= now:
            on_time.append(d)
        else:
            heapq.heappush(self.heap, (d.at, self.seq, d))
            self.seq += 1

    def _due(self, until: int | None) -> list[Delivery]:
        out = []
        while self.heap and (until is None or self.heap[0][0] <= until):
            out.append(heapq.heappop(self.heap)[2])
        return out

    def _send(self, msgs: list[Delivery], now: int) -> list[Delivery]:
        """Draw transport faults; returns the records that arrive now, holds the others."""
        on_time: list[Delivery] = []
        spec, interval = self.transport, self.sim.spec.interval_s
        n = len(msgs)
        u = self.rng.random((n, 3))
        delay = self.rng.integers(interval + 1, spec.reorder_span * interval + 1, size=n)
        jitter = self.rng.integers(0, interval, size=n)
        which = self.rng.integers(0, 8, size=n)
        for i, d in enumerate(msgs):
            if u[i, 0] < spec.reorder_rate:
                self._hold(replace(d, at=d.at + int(delay[i])), now, on_time)
                self._label(d, "out_of_order", delay_s=int(delay[i]))
            else:
                self._hold(d, now, on_time)
            if u[i, 1] < spec.duplicate_rate:
                lag = spec.resend_after * interval + int(jitter[i])
                self._hold(replace(d, at=d.at + lag), now, on_time)
                self._label(d, "duplicate", delay_s=lag)
            if u[i, 2] < spec.malformed_rate:
                sample = {
                    "kind": "reading",
                    "v": 1,
                    "area_id": d.key,
                    "ts": iso(d.ts),
                    "meter_id": "m",
                    "register_kwh": 1.0,
                }
                reason, value = malformed_values(d.key, sample)[int(which[i])]
                bad = Delivery(d.at, d.kind, d.key, d.ts, value)
                self._hold(bad, now, on_time)
                self._label(bad, "malformed", reason=reason, bytes=len(value))
        return on_time

    def _label(self, d: Delivery, kind: str, **params: Any) -> None:
        # A single reading is labelled on its meter; a batch or a malformed record on its area.
        entity = d.meter_ids[0] if d.meter_ids is not None and len(d.meter_ids) == 1 else d.key
        counts = {"readings": d.readings} if d.meter_ids is not None else {}
        self.labels.append(
            {
                "entity": entity,
                "type": kind,
                "start": iso(d.ts),
                "end": iso(d.ts),
                "area_id": d.key,
                "role": "message",
                "parameters": {"topic": d.kind, **counts, **params},
            }
        )
