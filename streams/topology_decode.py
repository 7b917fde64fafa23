"""Topology records decoded in chunks into the archive builder's columns: the bulk path of a load
(streams/topology_feed.py reads the topic; this turns a chunk of its values into columns).

The contract's cheap checks (lengths, ranges, enums) are done by msgspec as it decodes each row;
the id patterns and effective times are checked per chunk or per distinct value, and a record
that fails any check is decoded again by the contract's own decoder for its exact reason, so a
refusal reads as it would one record at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import attrgetter
from typing import Annotated, Literal

import msgspec
import numpy as np

from archive import (
    ACTIVE,
    SUPPLY,
    ArchiveBuilder,
    CodedChunk,
    code_columns,
    intern,
    intern_numbers,
)
from streams import contracts
from streams.contracts import InvalidRecord
from topology import MeterRecord, Role


class _Row(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A topology record with the contract's cheap checks (lengths, ranges, enums) done by the
    decoder and its id patterns done per chunk (per field they were two thirds of the time)."""

    meter_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    area_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    role: Literal["customer", "supply"]
    multiplier: Annotated[float, msgspec.Meta(gt=0, lt=1e6)]
    customer_class: Annotated[str, msgspec.Meta(max_length=32)]
    active: bool
    effective_from: str
    v: Literal[1] = 1


_row_decoder = msgspec.json.Decoder(_Row)
_METER_ID, _AREA_ID, _ROLE, _MULTIPLIER, _CLASS, _ACTIVE, _EFFECTIVE_FROM, _ = (
    attrgetter(f) for f in _Row.__struct_fields__
)
_IS_SUPPLY = {"supply": True, "customer": False}  # a dict lookup: cheaper than calling str.__eq__
_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-"


class Columns(msgspec.Struct):
    """Decoded topology records of one chunk, one list per field (ArchiveBuilder.add's input);
    ``index`` gives each row's position in the chunk."""

    index: list[int]
    meter_ids: list[str]
    area_ids: list[str]
    supply: list[bool]
    multipliers: list[float]
    classes: list[str]
    active: list[bool]
    starts: list[float]


class _Checked(msgspec.Struct):
    """A chunk's rows that passed every check, with the fields the checks pulled out."""

    rows: list[_Row]
    index: list[int]
    meter_ids: list[str]
    joined_ids: bytes  # "\n".join(meter_ids), ASCII (the id pattern allows nothing else)
    area_ids: list[str]
    areas: set[str]
    efs: list[str]
    ef_set: set[str]
    suspect: list[int]  # positions in the chunk for the contract's own decoder


class ChunkDecoder:
    """Decodes many topology records at once, with the contract's checks done per distinct
    value or over the whole chunk; a record that fails them is decoded again by the contract's
    own decoder for its exact reason."""

    def __init__(self) -> None:
        self._start_of: dict[str, float | None] = {}
        self._good_area: dict[str, bool] = {}

    def decode(self, values: Sequence[bytes | None]) -> tuple[Columns, list[tuple[int, InvalidRecord]]]:
        """Columns of the valid records; tombstones (None) are skipped, the rest refused with
        their position in ``values``."""
        checked = self._checked(values)
        cols = self._columns(checked)
        refused, rescued = self._refusals(values, checked.suspect)
        for i, rec in rescued:
            _append(cols, i, rec)
        return cols, refused

    def decode_coded(
        self, values: Sequence[bytes | None]
    ) -> tuple[CodedChunk, list[tuple[int, InvalidRecord]]]:
        """:meth:`decode` as the builder's coded columns, pulled from the decoded rows with one
        C-level pass per field and interned per distinct value (the bulk load's path)."""
        c = self._checked(values)
        refused, rescued = self._refusals(values, c.suspect)
        if rescued:  # valid after all, by a rule the row decoder does not know: rare, via lists
            cols = self._columns(c)
            for i, rec in rescued:
                _append(cols, i, rec)
            chunk = code_columns(cols.meter_ids, cols.area_ids, cols.supply, cols.multipliers, cols.classes,
                                 cols.active, cols.starts)
            return chunk, refused
        rows, n = c.rows, len(c.rows)
        # Id lengths from the separators' positions; the blob is the ids without them.
        ends = np.flatnonzero(np.frombuffer(c.joined_ids, dtype=np.uint8) == 10)
        bounds = np.concatenate(([-1], ends, [len(c.joined_ids)])) if n else np.zeros(1, dtype=np.int64)
        area_table, area = intern(c.area_ids, c.areas)
        class_table, cls = intern(list(map(_CLASS, rows)))
        ef_table, ef = intern(c.efs, c.ef_set)
        start_values = np.array([self._start_of[e] for e in ef_table], dtype=np.float64)
        start_table, start_code = intern_numbers(start_values)  # "Z" and "+00:00" are one start
        mult_table, mult = intern_numbers(np.fromiter(map(_MULTIPLIER, rows), dtype=np.float64, count=n))
        supply = np.fromiter(map(_IS_SUPPLY.__getitem__, map(_ROLE, rows)), dtype=bool, count=n)
        active = np.fromiter(map(_ACTIVE, rows), dtype=bool, count=n)
        chunk = CodedChunk(
            hashes=np.fromiter(map(hash, c.meter_ids), dtype=np.int64, count=n).view(np.uint64),
            id_blob=c.joined_ids.replace(b"\n", b""),
            id_len=(np.diff(bounds) - 1).astype(np.uint8),  # ids of at most 64 ASCII characters
            area_ids=area_table,
            area=area,
            classes=class_table,
            cls=cls,
            flags=supply.view(np.uint8) * np.uint8(SUPPLY) | active.view(np.uint8) * np.uint8(ACTIVE),
            multipliers=mult_table,
            mult=mult,
            starts=start_table,
            start=start_code[ef],
        )
        return chunk, refused

    def _columns(self, c: _Checked) -> Columns:
        rows = c.rows
        return Columns(
            c.index,
            c.meter_ids,
            c.area_ids,
            list(map("supply".__eq__, map(_ROLE, rows))),
            list(map(_MULTIPLIER, rows)),
            list(map(_CLASS, rows)),
            list(map(_ACTIVE, rows)),
            list(map(self._start_of.__getitem__, c.efs)),  # type: ignore[arg-type]
        )

    def _checked(self, values: Sequence[bytes | None]) -> _Checked:
        """The rows that decode and pass the checks the row decoder leaves out: the id patterns
        (over the whole chunk, or per distinct area) and effective_from (per distinct value)."""
        decode = _row_decoder.decode
        suspect: list[int] = []
        try:
            rows = list(map(decode, values))  # type: ignore[arg-type]
            index = list(range(len(values)))
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError):
            rows, index = [], []
            for i, value in enumerate(values):
                if value is None:
                    continue  # a tombstone: the archive keeps history, nothing to undo
                try:
                    rows.append(decode(value))
                    index.append(i)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    suspect.append(i)
        ids = list(map(_METER_ID, rows))
        joined = "\n".join(ids).encode()
        area_ids = list(map(_AREA_ID, rows))
        efs = list(map(_EFFECTIVE_FROM, rows))
        areas, ef_set = set(area_ids), set(efs)
        # Membership tests per new value (not `set - dict.keys()`: that walks the whole dict).
        good_area, start_of = self._good_area, self._start_of
        for a in [a for a in areas if a not in good_area]:
            good_area[a] = _good_id(a)
        for ef in [ef for ef in ef_set if ef not in start_of]:
            start_of[ef] = _start(ef)
        bad: set[int] = set()
        if ids and joined.translate(None, _ID_CHARS) != b"\n" * (len(ids) - 1):
            bad.update(k for k, m in enumerate(ids) if not _good_id(m))
        wrong_area = {a for a in areas if not good_area[a]}
        bad_starts = {ef for ef in ef_set if start_of[ef] is None}
        if wrong_area or bad_starts:
            bad.update(k for k, (a, ef) in enumerate(zip(area_ids, efs, strict=True))
                       if a in wrong_area or ef in bad_starts)
        if bad:
            suspect.extend(index[k] for k in bad)
            keep = [k for k in range(len(rows)) if k not in bad]
            rows, index = [rows[k] for k in keep], [index[k] for k in keep]
            ids, area_ids, efs = [ids[k] for k in keep], [area_ids[k] for k in keep], [efs[k] for k in keep]
            joined, areas = "\n".join(ids).encode(), set(area_ids)
            ef_set = set(efs)
        return _Checked(rows, index, ids, joined, area_ids, areas, efs, ef_set, sorted(suspect))

    @staticmethod
    def _refusals(
        values: Sequence[bytes | None], suspect: list[int]
    ) -> tuple[list[tuple[int, InvalidRecord]], list[tuple[int, contracts.TopologyRecord]]]:
        """The suspects' reasons from the contract's decoder, and those it takes after all (a
        check here stricter than the contract's: taken as they are)."""
        refused: list[tuple[int, InvalidRecord]] = []
        rescued: list[tuple[int, contracts.TopologyRecord]] = []
        for i in suspect:
            try:
                rec = contracts.decode_topology(values[i])
                MeterRecord(rec.meter_id, rec.area_id, Role(rec.role), rec.multiplier,
                            rec.customer_class, rec.active, rec.effective_from)
            except InvalidRecord as exc:
                refused.append((i, exc))
                continue
            except ValueError as exc:
                refused.append((i, InvalidRecord("topology", str(exc))))
                continue
            rescued.append((i, rec))
        return refused, rescued


def _start(value: str) -> float | None:
    """POSIX seconds of an effective_from, or None when the contract refuses it."""
    try:
        at = msgspec.convert(value, contracts.Instant)
    except msgspec.ValidationError:
        return None
    return at.timestamp() if isinstance(at, datetime) else None


def _good_id(value: str) -> bool:
    return 1 <= len(value) <= 64 and not value.encode().translate(None, _ID_CHARS)


def _append(cols: Columns, i: int, rec: contracts.TopologyRecord) -> None:
    cols.index.append(i)
    cols.meter_ids.append(rec.meter_id)
    cols.area_ids.append(rec.area_id)
    cols.supply.append(rec.role == "supply")
    cols.multipliers.append(rec.multiplier)
    cols.classes.append(rec.customer_class)
    cols.active.append(rec.active)
    cols.starts.append(rec.effective_from.timestamp())


def add_values(
    builder: ArchiveBuilder, decoder: ChunkDecoder, values: Sequence[bytes | None]
) -> list[tuple[int, InvalidRecord]]:
    """Decode one chunk of the topic's values into ``builder``; the refused, by position."""
    chunk, refused = decoder.decode_coded(values)
    builder.add_coded(chunk)
    return refused
