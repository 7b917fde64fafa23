"""Line-loss windows held as arrays: :class:`streams.engine.LineLossEngine` with each window's
points in two (meter slot x interval end) float columns, register and interval energy (NaN:
not reported), for the batch step.

A message's readings whose meters the archive maps plainly (one version, in force, this area,
this role: nearly all) are placed with one vectorised test against a dense meter index and
written with fancy indexing; the rest take the engine's per-reading path with every refusal
reason. A window is judged from its columns with :func:`models.columns.interval_energies`,
summed in the archive's member order (a sequential sum: the same bits as
:func:`models.lineloss.evaluate_window`). The windows live in memory only: it serves a file
run and the benchmarks, not yet the worker's changelogged store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from models.columns import WindowColumns, interval_energies
from models.lineloss import LossResult, loss_result
from streams import contracts
from streams.engine import (
    ClosedPoints,
    LineLossEngine,
    Outcome,
    Refusal,
    Reported,
    _dt,
    split_key,
    window_key,
)
from topology import MeterRecord, Role, Topology

_F64 = npt.NDArray[np.float64]
_FEW = 16  # readings in a message below which they take the per-reading path
_I64 = npt.NDArray[np.int64]


class MeterIndex:
    """Dense meter index for one topology version, filled as meters are first seen: id ->
    index, and for a meter with a single archive version its area, role, start and slot in
    its area (-1 area: placed per reading)."""

    def __init__(self, topology: Topology, slot: Callable[[str, str], int]) -> None:
        self.topology = topology
        self.version = topology.version
        self._slot = slot  # (area id, meter id) -> slot in the area's windows
        # Index 0 stands for every meter the archive does not hold (not kept: hostile input
        # must not grow the index).
        self.ids: dict[str, int] = {}
        self.valid: set[str] = set()  # held ids that are valid meter ids (contracts.MeterId)
        self.area_codes: dict[str, int] = {}
        self.area = np.full(64, -1, dtype=np.int64)
        self.supply = np.zeros(64, dtype=bool)
        self.start = np.full(64, math.inf)
        self.home = np.full(64, -1, dtype=np.int64)
        self._n = 1

    def lookup(self, meter_ids: list[str]) -> _I64:
        get = self.ids.get
        out = [get(m, -1) for m in meter_ids]
        if -1 in out:
            out = [i if i >= 0 else self._add(m) for i, m in zip(out, meter_ids, strict=True)]
        return np.array(out, dtype=np.int64)

    def checked(self, meter_ids: list[str]) -> bool:
        """Whether every id is a held meter's, already found a valid meter id."""
        return self.valid.issuperset(meter_ids)

    def code(self, area_id: str) -> int:
        return self.area_codes.setdefault(area_id, len(self.area_codes))

    def _add(self, meter_id: str) -> int:
        i = self.ids.get(meter_id)
        if i is not None:
            return i  # repeated in this lookup
        before, first = self.topology.meter_span_ts(meter_id, -math.inf)
        if before is None and first == math.inf:
            return 0  # not in the archive
        i = self.ids[meter_id] = self._n
        self._n += 1
        if contracts.valid_meter_id(meter_id):
            self.valid.add(meter_id)
        if i >= len(self.area):
            grow = len(self.area)
            self.area = np.concatenate([self.area, np.full(grow, -1, dtype=np.int64)])
            self.supply = np.concatenate([self.supply, np.zeros(grow, dtype=bool)])
            self.start = np.concatenate([self.start, np.full(grow, math.inf)])
            self.home = np.concatenate([self.home, np.full(grow, -1, dtype=np.int64)])
        if before is None:
            rec, until = self.topology.meter_span_ts(meter_id, first)
            if rec is not None and until == math.inf:
                self.area[i] = self.code(rec.area_id)
                self.supply[i] = rec.role is Role.SUPPLY
                self.start[i] = first
                self.home[i] = self._slot(rec.area_id, meter_id)
        return i


class _Block:
    """One area-window's points: rows are the area's meter slots, columns the window's
    interval ends with the starting register first."""

    __slots__ = ("partition", "reg", "en")

    def __init__(self, partition: int, rows: int, cols: int) -> None:
        self.partition = partition
        self.reg = np.full((rows, cols), np.nan)
        self.en = np.full((rows, cols), np.nan)

    def fit(self, rows: int) -> None:
        have = len(self.reg)
        if rows > have:
            more = max(rows, 2 * have) - have
            pad = np.full((more, self.reg.shape[1]), np.nan)
            self.reg = np.concatenate([self.reg, pad])
            self.en = np.concatenate([self.en, pad])


def _sequential_sum(values: _F64) -> float:
    """``0.0 + v0 + v1 + ...`` left to right, rounded to 6 places: the bits of the scalar
    loop in models.lineloss.evaluate_window (np.sum adds pairwise, which differs)."""
    if len(values) <= 16:
        total = 0.0
        for v in values.tolist():
            total += v
        return round(total, 6)
    return round(float(np.cumsum(np.concatenate(([0.0], values)))[-1]), 6)


def _same(a: _F64, b: _F64) -> npt.NDArray[np.bool_]:
    same: npt.NDArray[np.bool_] = (a == b) | (np.isnan(a) & np.isnan(b))
    return same


class ColumnEngine(LineLossEngine):
    """:class:`LineLossEngine` with columnar windows (see the module docstring)."""

    def __init__(self, topology: Topology, **kw: Any) -> None:
        super().__init__(topology, {}, **kw)
        self._cols = self.window_s // self.interval_s + 1
        self._slots: dict[str, dict[str, int]] = {}
        self._slot_ids: dict[str, list[str]] = {}
        self._index = MeterIndex(topology, self._slot)
        self._member_slots: dict[str, tuple[object, object, _I64, _F64, int]] = {}

    def checked_ids(self, meter_ids: list[str]) -> bool:
        """Whether every id is a held meter's valid id (see contracts.decode_checked)."""
        if self._index.version != self.topology.version:
            return False  # the index is rebuilt at the next ingest
        return self._index.checked(meter_ids)

    def _slot(self, area_id: str, meter_id: str) -> int:
        slots = self._slots.setdefault(area_id, {})
        slot = slots.get(meter_id)
        if slot is None:
            slot = slots[meter_id] = len(slots)
            self._slot_ids.setdefault(area_id, []).append(meter_id)
        return slot

    def _block(self, partition: int, key: str, area_id: str) -> _Block:
        block = cast(_Block | None, self._windows.get(key))
        if block is None:
            block = _Block(partition, max(len(self._slots.get(area_id, ())), 8), self._cols)
            self._windows[key] = block  # type: ignore[assignment]  # the engine's store holds blocks here
        return block

    # ---- ingest ----------------------------------------------------------------------------

    def ingest(
        self,
        partition: int,
        area_id: str,
        ts: int,
        points: Sequence[Reported],
        role: Role,
        source: str = "readings",
    ) -> Outcome:
        if len(points) < _FEW:
            # A few readings (a supply meter's, a single): numpy's fixed cost per call is more
            # than the per-reading path's, which writes through _write below.
            return super().ingest(partition, area_id, ts, points, role, source)
        out = Outcome()
        with_register, released = self._touched(partition, ts)
        if self._index.version != self.topology.version:
            self._index = MeterIndex(self.topology, self._slot)
            self._member_slots = {}
        index = self._index
        own = with_register[0]
        forwards: dict[str, dict[str, Reported]] = {}
        by_start: dict[int, dict[str, list[float | None]]] = {start: {} for start in with_register}
        idx = index.lookup([p.meter_id for p in points])
        plain = (
            (index.area[idx] == index.area_codes.get(area_id, -2))
            & (index.supply[idx] == (role is Role.SUPPLY))
            & (index.start[idx] <= own)
        )
        all_plain = bool(plain.all())
        if not all_plain:
            slow = [p for p, ok in zip(points, plain.tolist(), strict=True) if not ok]
            out.accepted = self._place(
                partition, area_id, ts, slow, role, with_register, released, by_start, forwards, out
            )
        changes = {window_key(area_id, start): meters for start, meters in by_start.items() if meters}
        duplicates, replaced = self._write(partition, ts, changes)
        changed = set(changes)
        if all_plain or plain.any():
            fast = points if all_plain else [p for p, ok in zip(points, plain.tolist(), strict=True) if ok]
            rows = index.home[idx if all_plain else idx[plain]]
            fast_out = self._write_plain(partition, area_id, ts, fast, rows, with_register, released, out)
            out.accepted += fast_out[0]
            duplicates += fast_out[1]
            replaced += fast_out[2]
            changed.update(fast_out[3])
        out.duplicates, out.replaced = duplicates, replaced
        return self._finish(partition, source, ts, changed, forwards, out)

    def _write_plain(
        self,
        partition: int,
        area_id: str,
        ts: int,
        points: Sequence[Reported],
        rows: _I64,
        with_register: list[int],
        released: dict[int, bool],
        out: Outcome,
    ) -> tuple[int, int, int, list[str]]:
        """Write readings of meters mapped plainly to ``area_id``; (accepted, duplicates,
        replaced, keys changed)."""
        reg = np.array(
            [np.nan if p.register_kwh is None else p.register_kwh for p in points], dtype=np.float64
        )
        en = np.array([np.nan if p.energy_kwh is None else p.energy_kwh for p in points], dtype=np.float64)
        has_reg = ~np.isnan(reg)
        own = with_register[0]
        open_starts = [s for s in with_register if not released[s]]
        own_open = not released[own]
        fed = has_reg if open_starts else np.zeros(len(points), dtype=bool)
        if own_open:
            fed = fed | ~has_reg
        if not fed.all():
            detail = f"ts {_dt(ts).isoformat()} is beyond the allowed lateness"
            for k in np.flatnonzero(~fed).tolist():
                out.late += 1
                out.refused.append(Refusal(points[k], "late", detail))
        dup = np.zeros(len(points), dtype=bool)
        rep = np.zeros(len(points), dtype=bool)
        keys = []
        top = int(rows.max()) + 1
        every_reg = bool(has_reg.all())
        for start in open_starts:
            sel = has_reg if start != own else fed
            whole = every_reg or (start == own and own_open)  # sel is every reading
            if not whole and not sel.any():
                continue
            key = window_key(area_id, start)
            block = self._block(partition, key, area_id)
            block.fit(top)
            col = (ts - start) // self.interval_s
            r, r_new, e_new = (rows, reg, en) if whole else (rows[sel], reg[sel], en[sel])
            before_r, before_e = block.reg[r, col], block.en[r, col]
            present = ~(np.isnan(before_r) & np.isnan(before_e))
            if present.any():  # a re-sent or corrected reading (rare): which of the two
                same = _same(before_r, r_new) & _same(before_e, e_new)
                if whole:
                    dup |= present & same
                    rep |= present & ~same
                else:
                    dup[sel] |= present & same
                    rep[sel] |= present & ~same
            block.reg[r, col] = r_new
            block.en[r, col] = e_new
            self._touch(partition, key, start)
            keys.append(key)
        return int(fed.sum()), int(dup.sum()), int((rep & ~dup).sum()), keys

    def _write(
        self, partition: int, ts: int, changes: dict[str, dict[str, list[float | None]]]
    ) -> tuple[int, int]:
        duplicates: set[str] = set()
        replaced: set[str] = set()
        for key, meters in changes.items():
            area_id, start = split_key(key)
            block = self._block(partition, key, area_id)
            col = (ts - start) // self.interval_s
            reg, en = block.reg, block.en
            for meter_id, (register, energy) in meters.items():
                row = self._slot(area_id, meter_id)
                if row >= len(reg):
                    block.fit(row + 1)
                    reg, en = block.reg, block.en
                r, e = reg.item(row, col), en.item(row, col)  # Python floats: cheap to compare
                if r == r or e == e:  # a point was there
                    before = (None if r != r else r, None if e != e else e)
                    (duplicates if before == (register, energy) else replaced).add(meter_id)
                reg[row, col] = np.nan if register is None else register
                en[row, col] = np.nan if energy is None else energy
            self._touch(partition, key, start)
        return len(duplicates), len(replaced - duplicates)

    # ---- judging ---------------------------------------------------------------------------

    def _evaluate(
        self, key: str
    ) -> tuple[LossResult, ClosedPoints] | None:
        block = cast(_Block | None, self._windows.get(key))
        if block is None:
            return None
        area_id, start = split_key(key)
        at = datetime.fromtimestamp(start, UTC)
        topology = self.topology
        supplies = topology.supply_meters(area_id, at)
        customers = topology.customer_meters(area_id, at)
        # Supply meters first, then customers: one gather and one energy pass for both roles.
        slots, mult, top = self._members(area_id, supplies, customers)
        block.fit(top)
        reg, en = block.reg[slots], block.en[slots]
        kwh, backwards = interval_energies(reg[:, 1:], reg[:, :-1], en[:, 1:])
        known = ~np.isnan(kwh)
        total = np.zeros(len(slots))
        for c in range(kwh.shape[1]):  # interval by interval, as the scalar sum adds them
            total += np.where(known[:, c], kwh[:, c], 0.0)
        complete = np.asarray(known.all(axis=1), dtype=np.bool_)
        weighted = total * mult
        n = len(supplies)
        sums = [
            (_sequential_sum(weighted[:n][complete[:n]]), n, int(complete[:n].sum())),
            (_sequential_sum(weighted[n:][complete[n:]]), len(customers), int(complete[n:].sum())),
        ]
        result = loss_result(
            area_id,
            start,
            self.window_s,
            topology,
            supply=sums[0],
            sales=sums[1],
            rollbacks=int(backwards.sum()),
            min_completeness=self.min_completeness,
        )
        # The points are read only when the window closes for the first time (ClosedWindow).
        first = self.track_closed and key not in self._emitted
        return result, (self._points(block, area_id) if first else {})

    def _members(
        self, area_id: str, supplies: dict[str, MeterRecord], customers: dict[str, MeterRecord]
    ) -> tuple[_I64, _F64, int]:
        """Slots and multipliers of the area's supply then customer meters, and the rows a
        window needs to hold them (cached while the archive answers with the same members)."""
        cached = self._member_slots.get(area_id)
        if cached is not None and cached[0] is supplies and cached[1] is customers:
            return cached[2], cached[3], cached[4]
        members = [*supplies.items(), *customers.items()]
        slots = np.array([self._slot(area_id, m) for m, _ in members], dtype=np.int64)
        mult = np.array([rec.multiplier for _, rec in members], dtype=np.float64)
        top = int(slots.max()) + 1 if len(slots) else 0
        self._member_slots[area_id] = (supplies, customers, slots, mult, top)
        return slots, mult, top

    def _points(self, block: _Block, area_id: str) -> WindowColumns:
        """The window's points as the detectors read them: the rows of meters with a point,
        copied (a late correction may still write into the block)."""
        present = ~(np.isnan(block.reg) & np.isnan(block.en))
        ids = self._slot_ids.get(area_id, [])
        rows = np.flatnonzero(present.any(axis=1))
        return WindowColumns([ids[row] for row in rows.tolist()], block.reg[rows], block.en[rows])
