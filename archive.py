"""The meter archive in columns: meters interned to dense indices, one row of small codes per
meter, version history only for the meters that have one. Built in bulk from decoded columns.

A province holds tens of millions of meters; as Python objects each costs ~630 bytes, here
~40-50 (``MeterArchive.nbytes``). The dense index ``i`` of a meter is its position in the
sorted array of meter-id hashes, so a batch of ids maps to indices with one ``searchsorted``
(:meth:`MeterArchive.indices`), and every per-meter column is indexed by it.

>>> b = ArchiveBuilder()
>>> b.add(["m1", "m2", "m1"], ["A", "A", "B"], [False, True, False], [1.0, 80.0, 1.0],
...       ["residential", "supply", "residential"], [True, True, True], [0.0, 0.0, 3600.0])
>>> archive = b.build()
>>> i = archive.index("m1")
>>> archive.area_ids[archive.version_at(i, 0.0)[0]], archive.area_ids[archive.version_at(i, 3600.0)[0]]
('A', 'B')
>>> archive.index("nope")
-1
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from meter_directory import MeterDirectory

# Bits of a version's flags byte.
SUPPLY = 1  # role: supply (check) meter; else customer
ACTIVE = 2
HISTORY = 4  # per-meter row only: the meter's versions are in the history columns
SHADOWED = 8  # per-meter row only: a later record was applied outside the columns (Topology)

_MASK64 = (1 << 64) - 1
_INF = math.inf
_Array = npt.NDArray[Any]


def meter_hash(meter_id: str) -> int:
    """Unsigned 64-bit key of a meter id: Python's (per-process keyed) string hash, so an
    archive and the batches looked up in it must live in the same process."""
    return hash(meter_id) & _MASK64


def _code_dtype(n: int) -> type[np.unsignedinteger[Any]]:
    return np.uint8 if n <= 1 << 8 else np.uint16 if n <= 1 << 16 else np.uint32


def _offset_dtype(n: int) -> type[np.integer[Any]]:
    return np.uint32 if n < 1 << 32 else np.int64


# A version as looked up: (area code, flags, class code, multiplier, start, until).
Version = tuple[int, int, int, float, float, float]


class Names(Sequence[str]):
    """A table of ids (code -> id) kept as one bytes blob and offsets, not a str object each: a
    worker's few thousand area ids, made at the end of a load, would otherwise be scattered
    over the heap arenas the load's transient strings used and keep them resident (~9 MB at
    10 M meters, 1/8 of the partitions; docs/scaling.md). ``code(name)`` is the inverse, by a
    sorted array of the ids' hashes (this process's ``hash``).

    An id read is decoded once and kept (``name``; one list slot per id until then): made while
    readings are served, after the load's heap is released, they do not pin its arenas."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        encoded = [n.encode() for n in names]
        self.blob = b"".join(encoded)
        self.off = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=self.off[1:])
        hashes = np.fromiter(map(hash, names), dtype=np.int64, count=len(encoded))
        self._order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[self._order]
        self._off = memoryview(self.off)  # type: ignore[arg-type]
        self.cache: list[str | None] = [None] * len(encoded)

    def name(self, i: int) -> str:
        """The id of code ``i`` (>= 0), decoded on its first read."""
        name = self.cache[i]
        if name is None:
            name = self.cache[i] = self.blob[self._off[i] : self._off[i + 1]].decode()
        return name

    @property
    def nbytes(self) -> int:
        return len(self.blob) + int(self.off.nbytes + self._order.nbytes + self._hashes.nbytes)

    def __len__(self) -> int:
        return len(self.off) - 1

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.name(i)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Names({list(self)!r})"

    def code(self, name: str) -> int | None:
        """The code of ``name``, None if it is not in the table."""
        h = hash(name)
        at = int(np.searchsorted(self._hashes, h))
        while at < len(self._hashes) and self._hashes[at] == h:
            k = int(self._order[at])
            if self[k] == name:
                return k
            at += 1
        return None


@dataclass
class MeterArchive:
    """Immutable columns of the archive; see the module docstring."""

    area_ids: Sequence[str]  # area code -> area id (a Names table once built)
    classes: list[str]  # class code -> customer class
    multipliers: _Array  # multiplier code -> value (float64)
    starts: _Array  # start code -> effective_from as POSIX seconds (float64)
    hashes: _Array  # uint64, sorted: meter index -> meter_hash(id)
    id_at: _Array  # meter index -> offset of its id in id_blob
    id_len: _Array  # meter index -> length of its id in bytes (uint8 unless an id is longer)
    id_blob: bytes  # the held records' ids in topic order (a moved meter's twice)
    area: _Array  # area code per meter (uint16 when the areas allow): area of its (first) version
    flags: _Array  # uint8 per meter
    cls: _Array  # class code per meter
    mult: _Array  # multiplier code per meter
    start: _Array  # start code per meter
    hist_meter: _Array  # int32, sorted: meters with more than one version
    hist_off: _Array  # their version rows in the h_* columns (len(hist_meter) + 1 entries)
    h_area: _Array
    h_flags: _Array
    h_cls: _Array
    h_mult: _Array
    h_start: _Array  # float64 POSIX seconds, ascending within a meter
    member_off: _Array  # area code -> rows in member_meter (len(area_ids) + 1 entries)
    member_meter: _Array  # int32: meters ever mapped to the area, by area
    bucket_off: _Array  # top bits of a hash -> its range in hashes
    bucket_shift: int
    directory: MeterDirectory | None = None  # partition of each meter not held (sharded builds)
    _mv: dict[str, memoryview] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.area_ids, Names):
            self.area_ids = Names(self.area_ids)
        self._areas: Names = self.area_ids
        # Scalar access through memoryviews: a Python int or float per item, several times
        # cheaper than indexing a numpy array (the engine looks up every reading).
        for name in ("hashes", "id_at", "id_len", "area", "flags", "cls", "mult", "start", "hist_meter",
                     "hist_off", "h_area", "h_flags", "h_cls", "h_mult", "h_start", "bucket_off",
                     "multipliers", "starts"):
            self._mv[name] = memoryview(np.ascontiguousarray(getattr(self, name)))  # type: ignore[arg-type]
        self._starts_mv = self._mv["starts"]
        self._mult_mv = self._mv["multipliers"]
        mv = self._mv
        # Everything locate() reads, fetched with one attribute load per call.
        self._locate = (mv["bucket_off"], mv["hashes"], mv["id_at"], mv["id_len"], self.id_blob, mv["flags"],
                        mv["start"], mv["starts"], mv["area"], self._areas, self.bucket_shift)

    @property
    def size(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (numpy buffers and the id blob; the area and class tables
        counted by their strings)."""
        arrays: int = sum(
            getattr(self, name).nbytes
            for name in ("multipliers", "starts", "hashes", "id_at", "id_len", "area", "flags", "cls", "mult",
                         "start", "hist_meter", "hist_off", "h_area", "h_flags", "h_cls", "h_mult",
                         "h_start", "member_off", "member_meter", "bucket_off")
        )
        tables = self._areas.nbytes + sum(len(c) + 49 for c in self.classes)
        return arrays + len(self.id_blob) + tables

    # ---- meters ----------------------------------------------------------------------------

    def index(self, meter_id: str) -> int:
        """Dense index of ``meter_id``, or -1 if the archive does not hold it."""
        mv = self._mv
        h = hash(meter_id) & _MASK64
        b = h >> self.bucket_shift
        boff = mv["bucket_off"]
        hashes = mv["hashes"]
        lo, hi = boff[b], boff[b + 1]
        j = bisect.bisect_left(hashes, h, lo, hi)
        if j < hi and hashes[j] == h:
            # Equal hashes of different ids are not merged at build; compare the id itself.
            id_at, id_len = mv["id_at"], mv["id_len"]
            encoded = meter_id.encode()
            while j < hi and hashes[j] == h:
                if self.id_blob[id_at[j] : id_at[j] + id_len[j]] == encoded:
                    return j
                j += 1
        return -1

    def indices(self, meter_ids: Sequence[str]) -> _Array:
        """Dense indices of many ids at once (-1: unknown); the columnar path's lookup."""
        h = np.array(list(map(hash, meter_ids)), dtype=np.int64).view(np.uint64)
        j = np.searchsorted(self.hashes, h)
        out = np.full(len(meter_ids), -1, dtype=np.int64)
        found = j < self.size
        found[found] = self.hashes[j[found]] == h[found]
        out[found] = j[found]
        # A hash shared by two ids (not expected in a lifetime of archives) falls back to
        # the exact scalar lookup; so does every hit's id check, cheaply, only where needed.
        if self.size > 1:
            nxt = np.minimum(j + 1, self.size - 1)
            dup = found & (self.hashes[nxt] == h) & (nxt != j)
            for k in np.flatnonzero(dup).tolist():
                out[k] = self.index(meter_ids[k])
        return out

    def meter_id(self, i: int) -> str:
        at = self._mv["id_at"][i]
        return self.id_blob[at : at + self._mv["id_len"][i]].decode()

    def meter_ids(self) -> Iterator[str]:
        blob, id_at, id_len = self.id_blob, self._mv["id_at"], self._mv["id_len"]
        for i in range(self.size):
            yield blob[id_at[i] : id_at[i] + id_len[i]].decode()

    # ---- versions --------------------------------------------------------------------------

    def locate(self, meter_id: str, ts: float) -> tuple[str, int, float] | None:
        """(area id, flags, until) of ``meter_id`` at ``ts``, or None if not held or not in
        force yet: :meth:`index` and :meth:`placement` in one call (the engine's per reading)."""
        boff, hashes, id_at, id_len, blob, flags_mv, start_mv, starts, area_mv, areas, shift = self._locate
        h = hash(meter_id) & _MASK64
        b = h >> shift
        hi = boff[b + 1]
        j = bisect.bisect_left(hashes, h, boff[b], hi)
        encoded = meter_id.encode()
        while j < hi and hashes[j] == h:
            if blob[id_at[j] : id_at[j] + id_len[j]] == encoded:
                flags = flags_mv[j]
                if flags & HISTORY:
                    placed = self.placement(j, ts)
                    if placed is None:
                        return None
                    return areas.cache[placed[0]] or areas.name(placed[0]), placed[1], placed[2]
                if starts[start_mv[j]] > ts:
                    return None
                a = area_mv[j]
                return areas.cache[a] or areas.name(a), flags, _INF
            j += 1
        return None

    def placement(self, i: int, ts: float) -> tuple[int, int, float] | None:
        """(area code, flags, until) of meter ``i`` at ``ts``: :meth:`span` without the
        rest of the version (the engine's lookup per reading)."""
        mv = self._mv
        flags = mv["flags"][i]
        if not flags & HISTORY:
            if self._starts_mv[mv["start"][i]] > ts:
                return None
            return mv["area"][i], flags, _INF
        version, until = self.span(i, ts)
        return (version[0], version[1], until) if version is not None else None

    def version_at(self, i: int, ts: float) -> Version | None:
        """The version of meter ``i`` in force at ``ts``; None before its first."""
        v, _ = self.span(i, ts)
        return v

    def span(self, i: int, ts: float) -> tuple[Version | None, float]:
        """The version in force at ``ts`` and when the next one takes effect (inf: none)."""
        mv = self._mv
        flags = mv["flags"][i]
        if not flags & HISTORY:
            start = self._starts_mv[mv["start"][i]]
            if start > ts:
                return None, start
            return (mv["area"][i], flags, mv["cls"][i], self._mult_mv[mv["mult"][i]], start, _INF), _INF
        k = bisect.bisect_left(mv["hist_meter"], i)
        lo, hi = mv["hist_off"][k], mv["hist_off"][k + 1]
        h_start = mv["h_start"]
        j = bisect.bisect_right(h_start, ts, lo, hi) - 1
        until = h_start[j + 1] if j + 1 < hi else _INF
        if j < lo:
            return None, until
        version = (mv["h_area"][j], mv["h_flags"][j], mv["h_cls"][j], self._mult_mv[mv["h_mult"][j]],
                   h_start[j], until)
        return version, until

    def versions(self, i: int) -> list[Version]:
        """Every version of meter ``i``, oldest first."""
        mv = self._mv
        if not mv["flags"][i] & HISTORY:
            start = self._starts_mv[mv["start"][i]]
            return [(mv["area"][i], mv["flags"][i], mv["cls"][i], self._mult_mv[mv["mult"][i]], start, _INF)]
        k = bisect.bisect_left(mv["hist_meter"], i)
        lo, hi = mv["hist_off"][k], mv["hist_off"][k + 1]
        h_start = mv["h_start"]
        return [
            (mv["h_area"][j], mv["h_flags"][j], mv["h_cls"][j], self._mult_mv[mv["h_mult"][j]], h_start[j],
             h_start[j + 1] if j + 1 < hi else _INF)
            for j in range(lo, hi)
        ]

    def directed_partition(self, meter_id: str) -> int | None:
        """The readings partition whose worker holds ``meter_id``, for a meter this sharded
        archive does not hold: exact for the meters of the topic when it was built, arbitrary
        for any other id (a hint: see meter_directory). None without a directory."""
        if self.directory is None or self.directory.size == 0:
            return None
        return self.directory.partition_of_key(hash(meter_id) & _MASK64 & ~0xFF)

    def shadow(self, i: int) -> None:
        """Mark meter ``i`` as held elsewhere from now on (its versions were copied out)."""
        self.flags[i] |= SHADOWED

    def shadowed(self) -> int:
        return int(np.count_nonzero(self.flags & SHADOWED))

    # ---- areas -----------------------------------------------------------------------------

    def members(
        self, area_id: str, ts: float, supply: bool
    ) -> tuple[float, float, list[tuple[int, Version]]]:
        """Active meters of one role mapped to ``area_id`` at ``ts``, with the interval
        ``[valid_from, valid_until)`` over which that answer holds (as far as these meters go)."""
        a = self._areas.code(area_id)
        if a is None:
            return -_INF, _INF, []
        idx = self.member_meter[self.member_off[a] : self.member_off[a + 1]]
        flags = self.flags[idx]
        live = (flags & SHADOWED) == 0
        single = live & ((flags & HISTORY) == 0)
        s_idx = idx[single]
        s_start = self.starts[self.start[s_idx]]
        in_force = s_start <= ts
        valid_from = float(s_start[in_force].max()) if in_force.any() else -_INF
        valid_until = float(s_start[~in_force].min()) if (~in_force).any() else _INF
        s_flags = flags[single]
        want = ACTIVE | (SUPPLY if supply else 0)
        chosen = s_idx[in_force & ((s_flags & (ACTIVE | SUPPLY)) == want)]
        mv = self._mv
        flags_mv, cls_mv, mult_mv, start_mv = mv["flags"], mv["cls"], mv["mult"], mv["start"]
        out: list[tuple[int, Version]] = [
            (i, (a, flags_mv[i], cls_mv[i], self._mult_mv[mult_mv[i]], self._starts_mv[start_mv[i]], _INF))
            for i in chosen.tolist()
        ]
        for i in idx[live & ~single].tolist():
            version, until = self.span(i, ts)
            valid_until = min(valid_until, until)
            if version is None:
                continue
            valid_from = max(valid_from, version[4])
            if version[0] == a and version[1] & (ACTIVE | SUPPLY) == want:
                out.append((i, version))
        return valid_from, valid_until, out


@dataclass
class CodedChunk:
    """One chunk of archive records as columns of codes: what :meth:`ArchiveBuilder.add_coded`
    takes, made by :func:`code_columns` without a Python object per record. ``area``, ``cls``,
    ``mult`` and ``start`` are codes into this chunk's own tables."""

    hashes: _Array  # uint64 meter_hash per record
    id_blob: bytes  # the records' meter ids, UTF-8, concatenated
    id_len: _Array  # bytes per id (an unsigned or signed integer type)
    area_ids: list[str]  # this chunk's distinct areas
    area: _Array  # int32 code into area_ids per record
    classes: list[str]
    cls: _Array
    flags: _Array  # uint8 SUPPLY | ACTIVE
    multipliers: _Array  # this chunk's distinct multipliers (float64)
    mult: _Array  # int64 code into multipliers per record
    starts: _Array  # this chunk's distinct effective_from, POSIX seconds (float64)
    start: _Array  # int64 code into starts per record


def intern(values: Sequence[str], distinct: set[str] | None = None) -> tuple[list[str], _Array]:
    """(distinct values, int32 code per value): one set (``distinct``, if the caller has it)
    and one C-level map over the values."""
    table = list(set(values) if distinct is None else distinct)
    code = dict(zip(table, range(len(table)), strict=True))
    return table, np.fromiter(map(code.__getitem__, values), dtype=np.int32, count=len(values))


def intern_numbers(values: _Array) -> tuple[_Array, _Array]:
    """(sorted distinct values, int64 code per value) of a chunk's numbers: a sort of the chunk
    here saves sorting the whole archive's column at build."""
    table = _unique(values)
    return table, np.searchsorted(table, values)


def code_columns(
    meter_ids: Sequence[str],
    area_ids: Sequence[str],
    supply: Sequence[bool] | _Array,
    multipliers: Sequence[float] | _Array,
    classes: Sequence[str],
    active: Sequence[bool] | _Array,
    starts: Sequence[float] | _Array,
    *,
    id_blob: bytes | None = None,
    id_len: _Array | None = None,
) -> CodedChunk:
    """Records given field by field, as a :class:`CodedChunk` (``id_blob`` and ``id_len``: the
    ids already joined and measured by the caller)."""
    n = len(meter_ids)
    if id_blob is None or id_len is None:
        joined = "".join(meter_ids)
        if joined.isascii():  # nearly always: one encode for the chunk, lengths in characters
            id_blob = joined.encode("ascii")
            id_len = np.fromiter(map(len, meter_ids), dtype=np.int32, count=n)
        else:
            encoded = [m.encode() for m in meter_ids]
            id_blob, id_len = b"".join(encoded), np.fromiter(map(len, encoded), dtype=np.int32, count=n)
    area_table, area = intern(area_ids)
    class_table, cls = intern(classes)
    flags = (np.asarray(supply, dtype=bool).view(np.uint8) * np.uint8(SUPPLY)
             | np.asarray(active, dtype=bool).view(np.uint8) * np.uint8(ACTIVE))
    mult_table, mult = intern_numbers(np.asarray(multipliers, dtype=np.float64))
    start_table, start = intern_numbers(np.asarray(starts, dtype=np.float64))
    return CodedChunk(
        hashes=np.fromiter(map(hash, meter_ids), dtype=np.int64, count=n).view(np.uint64),
        id_blob=id_blob,
        id_len=id_len,
        area_ids=area_table,
        area=area,
        classes=class_table,
        cls=cls,
        flags=flags.astype(np.uint8),
        multipliers=mult_table,
        mult=mult,
        starts=start_table,
        start=start,
    )


class ArchiveBuilder:
    """Collects decoded archive records in chunks and builds a :class:`MeterArchive`.

    ``keep_area`` (None: keep all) says which areas this archive serves. A meter is held when
    any of its versions maps it to a kept area, and then with every version (a moved meter's
    readings may arrive under either area). Records of other meters are kept only in compact
    columns until :meth:`build` knows which meters are held, then dropped; with
    ``partition_of`` (an area's readings partition) their partitions stay, as the archive's
    :class:`meter_directory.MeterDirectory`.
    """

    def __init__(
        self,
        keep_area: Callable[[str], bool] | None = None,
        partition_of: Callable[[str], int] | None = None,
    ) -> None:
        self.keep_area = keep_area
        self.partition_of = partition_of
        self.directory_cpu_s = 0.0  # CPU seconds of building the meter directory, in build()
        self._area_code: dict[str, int] = {}
        self._area_kept: list[bool] = []
        self._class_code: dict[str, int] = {}
        self._mult_code: dict[float, int] = {}
        self._start_code: dict[float, int] = {}
        self._held: list[dict[str, _Array]] = []
        self._blobs: list[bytes] = []
        self._foreign: list[dict[str, _Array]] = []
        self._seq = 0
        self.records = 0

    def add(
        self,
        meter_ids: Sequence[str],
        area_ids: Sequence[str],
        supply: Sequence[bool] | _Array,
        multipliers: Sequence[float] | _Array,
        classes: Sequence[str],
        active: Sequence[bool] | _Array,
        starts: Sequence[float] | _Array,
    ) -> None:
        """Add one chunk of records, in topic order (a later record of the same meter and
        start replaces an earlier one)."""
        if len(meter_ids):
            self.add_coded(code_columns(meter_ids, area_ids, supply, multipliers, classes, active, starts))

    def _codes(self, table: Sequence[Any], codes: dict[Any, int], kept: list[bool] | None = None) -> _Array:
        """This builder's code of each of a chunk's table entries (new ones assigned), in the
        narrowest unsigned type that holds every code so far: narrow columns gather faster."""
        for a in table:
            if a not in codes:
                codes[a] = len(codes)
                if kept is not None:
                    kept.append(self.keep_area is None or self.keep_area(a))
        return np.fromiter(map(codes.__getitem__, table), dtype=_code_dtype(len(codes)), count=len(table))

    def add_coded(self, chunk: CodedChunk) -> None:
        """Add one chunk of coded records, in topic order: columns appended in bulk."""
        n = len(chunk.hashes)
        if not n:
            return
        area_of = self._codes(chunk.area_ids, self._area_code, self._area_kept)
        cols: dict[str, _Array] = {
            "hash": chunk.hashes,
            "area": area_of[chunk.area],
            "flags": chunk.flags,
            "cls": self._codes(chunk.classes, self._class_code)[chunk.cls],
            "mult": self._codes(chunk.multipliers.tolist(), self._mult_code)[chunk.mult],
            "start": self._codes(chunk.starts.tolist(), self._start_code)[chunk.start],
            # Narrow while it can be: at build every held record's seq is joined and sorted.
            "seq": np.arange(self._seq, self._seq + n, dtype=_offset_dtype(self._seq + n)),
        }
        self._seq += n
        self.records += n
        # Kept or not per distinct area of the chunk, not per record.
        held = np.array([self._area_kept[a] for a in area_of.tolist()], dtype=bool)[chunk.area]
        if held.all():
            cols["id_len"] = chunk.id_len
            self._held.append(cols)
            self._blobs.append(chunk.id_blob)
            return
        ids = np.frombuffer(chunk.id_blob, dtype=np.uint8)[np.repeat(held, chunk.id_len)].tobytes()
        self._held.append({k: v[held] for k, v in cols.items()} | {"id_len": chunk.id_len[held]})
        self._blobs.append(ids)
        foreign = ~held
        self._foreign.append({k: v[foreign] for k, v in cols.items()})

    def build(self) -> MeterArchive:
        held = _concat(self._held)
        id_blob = b"".join(self._blobs)
        self._held, self._blobs = [], []
        n_held = len(held["hash"])
        directory: MeterDirectory | None = None
        # A held row's id: id_at[row] to id_at[row + 1] in the blob (one gather per meter below
        # reads both from one cache line).
        id_at_row = np.zeros(n_held + 1, dtype=_offset_dtype(len(id_blob) + 1))
        np.cumsum(held.pop("id_len"), dtype=id_at_row.dtype, out=id_at_row[1:])
        if self._foreign:
            chunks, self._foreign = self._foreign, []
            f_hash = np.concatenate([c["hash"] for c in chunks])
            take = _held_meters(_unique(held["hash"]), f_hash)
            # The taken rows (held meters' records in other areas: few) chunk by chunk, not
            # every column of every foreign record joined first.
            parts = np.split(take, np.cumsum([len(c["hash"]) for c in chunks[:-1]]))
            rows = {k: np.concatenate([held[k], *(c[k][t] for c, t in zip(chunks, parts, strict=True))])
                    for k in held}
            if self.partition_of is not None:
                np.logical_not(take, out=take)
                f_area = np.concatenate([c["area"] for c in chunks])
                directory = self._directory(f_hash[take], f_area[take])
            del chunks, f_hash, take, parts
        else:
            rows = held
        if self.partition_of is not None and directory is None:
            directory = self._directory(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64))
        del held
        # Start and multiplier codes by value, so that a code's order is its value's.
        start_table, start_rank = _ranked(self._start_code)
        mult_table, mult_rank = _ranked(self._mult_code)
        rows["start"] = start_rank[rows["start"]]
        # By meter, then start, then topic order: the last record of a (meter, start) wins.
        order = _by_meter(rows["hash"], rows["start"], rows["seq"])
        del rows["seq"]
        h = rows.pop("hash")[order]
        s = rows["start"][order]
        n = len(h)
        first = np.ones(n, dtype=bool)
        if n:
            np.not_equal(h[1:], h[:-1], out=first[1:])
        first_at = np.flatnonzero(first)  # each meter's first row
        meter_of_row: _Array = np.cumsum(first, dtype=np.int32 if n < 1 << 31 else np.int64)
        meter_of_row -= 1
        del first
        hashes = h[first_at]
        m = len(hashes)
        # Each meter's id from its first held row (every held meter has one, if perhaps
        # replaced by a later record of the same start, which is why this comes first). Held
        # rows come first in ``rows``: a meter whose first row is foreign steps on, a row at a
        # time, the few such meters together.
        id_row = order[first_at]
        if n > n_held:
            id_pos = first_at.copy()
            step = np.flatnonzero(id_row >= n_held)
            while len(step):
                id_pos[step] += 1
                step = step[order[id_pos[step]] >= n_held]
            id_row = order[id_pos]
            del id_pos
        id_at = id_at_row[id_row]
        id_row += 1
        id_len = id_at_row[id_row]
        id_len -= id_at
        del id_row
        counts = np.diff(first_at, append=n)  # rows per meter
        _check_ids(order, meter_of_row, first_at, counts, n_held, id_at_row, id_blob, id_at, id_len)
        # The last record of a (meter, start) wins: every other column is gathered once, for
        # the rows kept.
        last = np.ones(n, dtype=bool)
        if n:
            last[:-1] = (h[1:] != h[:-1]) | (s[1:] != s[:-1])
        del h
        if last.all():
            meter_rows = first_at
        else:
            order, s, meter_of_row = order[last], s[last], meter_of_row[last]
            meter_rows = np.flatnonzero(np.diff(meter_of_row, prepend=-1) != 0)
            counts = np.diff(meter_rows, append=len(meter_of_row))
        del first_at, last
        rows = {k: v[order] for k, v in rows.items() if k != "start"}
        rows["start"] = s
        del order, s

        mult_codes = mult_rank[rows["mult"]]
        start_codes = rows["start"]
        classes = [c.encode().decode() for c in self._class_code]  # fresh copies, as the areas below
        # Only the areas of the meters held: a worker's share of a province, not all of it.
        every_area = list(self._area_code)
        used = np.flatnonzero(np.bincount(rows["area"], minlength=len(every_area)))
        # One blob (Names), not str objects: they would keep the load's heap arenas alive.
        area_ids = Names([every_area[a] for a in used.tolist()])
        area_dtype = _code_dtype(max(len(area_ids), 1 << 9))  # uint16, or uint32 past 65,536 areas
        recode = np.zeros(len(every_area), dtype=area_dtype)
        recode[used] = np.arange(len(used), dtype=area_dtype)
        rows["area"] = recode[rows["area"]]
        flags = rows["flags"][meter_rows]
        multi = counts > 1
        flags[multi] |= HISTORY
        hist_meter = np.flatnonzero(multi).astype(np.int32)
        hist_rows = np.repeat(multi, counts)
        hist_off = np.zeros(len(hist_meter) + 1, dtype=np.int64)
        np.cumsum(counts[multi], out=hist_off[1:])
        cls_dtype = _code_dtype(len(classes))
        mult_dtype = _code_dtype(len(mult_table))
        start_dtype = _code_dtype(len(start_table))

        # Membership: every (area, meter) pair of any version, grouped by area (one sort of
        # packed pairs: several times faster than an argsort).
        pairs = rows["area"].astype(np.int64)
        pairs <<= 32
        pairs |= meter_of_row
        del meter_of_row
        pairs = _unique(pairs, in_place=True)
        member_off = np.searchsorted(pairs, np.arange(len(area_ids) + 1, dtype=np.int64) << 32)
        pairs &= 0xFFFFFFFF
        member_meter = pairs.astype(np.int32)
        del pairs

        bits = max(1, int(math.ceil(math.log2(max(m, 1) / 4))) if m > 8 else 1)
        shift = 64 - bits
        # Each bucket's range from a count of the sorted hashes' top bits (no binary searches).
        bucket_off = np.zeros((1 << bits) + 1, dtype=_offset_dtype(m + 1))
        np.cumsum(np.bincount((hashes >> np.uint64(shift)).view(np.int64), minlength=1 << bits),
                  out=bucket_off[1:])
        return MeterArchive(
            area_ids=area_ids,
            classes=classes,
            multipliers=mult_table,
            starts=start_table,
            hashes=hashes,
            id_at=id_at.astype(_offset_dtype(len(id_blob) + 1)),
            id_len=id_len.astype(_code_dtype(int(id_len.max()) + 1 if m else 1)),  # a CSV's ids have no cap
            id_blob=id_blob,
            area=rows["area"][meter_rows],
            flags=flags,
            cls=rows["cls"][meter_rows].astype(cls_dtype),
            mult=mult_codes[meter_rows].astype(mult_dtype),
            start=start_codes[meter_rows].astype(start_dtype),
            hist_meter=hist_meter,
            hist_off=hist_off,
            h_area=rows["area"][hist_rows],
            h_flags=rows["flags"][hist_rows],
            h_cls=rows["cls"][hist_rows].astype(cls_dtype),
            h_mult=mult_codes[hist_rows].astype(mult_dtype),
            h_start=start_table[start_codes[hist_rows]],
            member_off=member_off,
            member_meter=member_meter,
            bucket_off=bucket_off,
            bucket_shift=shift,
            directory=directory,
        )

    def _directory(self, hashes: _Array, areas: _Array) -> MeterDirectory:
        """The partition of each meter of these (foreign) records, one per meter (``hashes``: a
        scratch array, overwritten)."""
        assert self.partition_of is not None
        cpu = time.process_time()
        partition_of = self.partition_of
        # Only the areas not kept, whose records these are (a kept area's are held): half the
        # calls, or fewer, of the caller's partition function (murmur2 in Python, ~3 us).
        area_partition = np.zeros(len(self._area_code), dtype=np.int64)
        kept = self._area_kept
        area_partition[[not k for k in kept]] = [partition_of(a) for a, k in zip(self._area_code, kept,
                                                                             strict=True) if not k]
        if len(areas) and int(area_partition.max()) > 0xFF and int(area_partition[areas].max()) > 0xFF:
            raise ValueError("meter directory: more than 256 partitions")
        # One sort of the key with the partition in its low byte, as in _by_meter; a meter
        # whose records name two partitions (moved between them) keeps either: both hold it.
        # In place where it can be: passes over every foreign meter, each a fresh array.
        key = hashes
        key &= ~np.uint64(0xFF)
        key |= area_partition.astype(np.uint64)[areas]
        key.sort()
        if len(key) > 1:
            other = key[1:] ^ key[:-1]
            if not (other > 0xFF).all():
                keep = np.ones(len(key), dtype=bool)
                np.greater(other, 0xFF, out=keep[:-1])
                key = key[keep]
            del other
        partitions = (key & np.uint64(0xFF)).astype(np.uint8)
        key &= ~np.uint64(0xFF)
        directory = MeterDirectory.build(key, partitions)
        self.directory_cpu_s = time.process_time() - cpu
        return directory


def _ranked(codes: dict[float, int]) -> tuple[_Array, _Array]:
    """(values sorted, each code's position among them) of a builder's number codes."""
    values = np.fromiter(codes, dtype=np.float64, count=len(codes))
    order = np.argsort(values, kind="stable")
    rank = np.empty(len(values), dtype=_code_dtype(len(values)))
    rank[order] = np.arange(len(values))
    return values[order], rank


def _held_meters(known: _Array, hashes: _Array) -> _Array:
    """Which of ``hashes`` are in the sorted ``known``. A bitmap of known hashes' top 27 bits
    (16 MB) rules out most first: a binary search per foreign record (7/8 of a province for a
    worker holding 1/8) misses the cache at every step and was 20% of such a load. A bit per
    prefix, not a bool: 8x fewer false candidates for the same table (at 10 M meters, 1/8
    held: 0.35 -> 0.17 s; 4/8 held: 0.74 -> 0.26 s)."""
    take = np.zeros(len(hashes), dtype=bool)
    if not len(known):
        return take
    top, three, seven = np.uint64(64 - 27), np.uint64(3), np.uint64(7)
    seen = np.zeros(1 << 24, dtype=np.uint8)
    k = known >> top
    np.bitwise_or.at(seen, k >> three, np.left_shift(1, (k & seven).astype(np.uint8), dtype=np.uint8))
    del k
    q = hashes >> top
    word = seen[q >> three]
    q &= seven
    word >>= q.astype(np.uint8)
    del q
    maybe = np.flatnonzero(word & 1)
    del word
    candidates = hashes[maybe]
    at = np.minimum(np.searchsorted(known, candidates), len(known) - 1)
    take[maybe] = known[at] == candidates
    return take


def _by_meter(h: _Array, start: _Array, seq: _Array) -> _Array:
    """Row order by (hash, start, seq). The rows' index is packed under the hash's top bits and
    sorted as one uint64 key (np.sort is ~8x faster than argsort or lexsort); rows whose
    truncated hashes tie (a meter's several records, rarely two meters) are ordered exactly."""
    n = len(h)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    row_bits = int(n - 1).bit_length()
    low = np.uint64((1 << row_bits) - 1)
    # In place where it can be: at 10 M rows every fresh array is 80 MB of page faults.
    keys = np.bitwise_and(h, ~low)
    keys |= np.arange(n, dtype=np.uint64)
    keys.sort()
    order = np.bitwise_and(keys, low).view(np.int64)
    keys >>= np.uint64(row_bits)  # the truncated hashes
    tie = np.zeros(n, dtype=bool)
    same = keys[1:] == keys[:-1]
    del keys
    tie[1:] |= same
    tie[:-1] |= same
    at = np.flatnonzero(tie)
    if len(at):
        rows = order[at]
        order[at] = rows[np.lexsort((seq[rows], start[rows], h[rows]))]
    return order


def _unique(x: _Array, in_place: bool = False) -> _Array:
    """Sorted distinct values (numpy 2.4's np.unique hashes integers, 60x slower than this);
    ``in_place``: sort ``x`` itself (a caller's scratch array), not a copy."""
    if in_place:
        x.sort()
    s = x if in_place else np.sort(x)
    if len(s) < 2:
        return s
    return s[np.concatenate(([True], s[1:] != s[:-1]))]


def _concat(chunks: list[dict[str, _Array]]) -> dict[str, _Array]:
    if not chunks:
        return {
            "hash": np.zeros(0, np.uint64), "area": np.zeros(0, np.int32), "flags": np.zeros(0, np.uint8),
            "cls": np.zeros(0, np.uint8), "mult": np.zeros(0, np.uint8), "start": np.zeros(0, np.uint8),
            "seq": np.zeros(0, np.int64), "id_len": np.zeros(0, np.int32),
        }
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _check_ids(
    order: _Array,
    meter_of_row: _Array,
    first_at: _Array,
    counts: _Array,
    n_held: int,
    id_at_row: _Array,
    id_blob: bytes,
    id_at: _Array,
    id_len: _Array,
) -> None:
    """Two different ids with one hash would be merged into one meter: refuse to build rather
    than mix two meters' histories (keyed SipHash: not expected in practice). The rows are in
    meter order (``order``: each one's row, held rows below ``n_held``; ``meter_of_row``; each
    meter's ``first_at`` row and ``counts`` of rows); every held row of a meter with several
    rows is compared with the meter's id, all at once, and the first that differs (in meter
    order) is refused."""
    several = counts > 1
    if not several.any():
        return  # one row per meter: nothing to compare
    at = np.flatnonzero(np.repeat(several, counts))  # the rows of meters with several
    row = order[at]
    held = row < n_held
    at, row = at[held], row[held]
    meter = meter_of_row[at]
    start = id_at_row[row].astype(np.int64)
    length = id_at_row[row + 1] - start
    differs = length != id_len[meter]
    same = np.flatnonzero(~differs)
    if len(same):
        # Byte by byte, for the rows whose id has the meter's id's length.
        lens = length[same]
        offset = np.repeat(np.cumsum(lens) - lens, lens)
        within = np.arange(len(offset), dtype=np.int64) - offset
        blob = np.frombuffer(id_blob, dtype=np.uint8)
        mine = np.repeat(id_at[meter[same]].astype(np.int64), lens)
        unequal = blob[np.repeat(start[same], lens) + within] != blob[mine + within]
        if unequal.any():
            pair = np.repeat(np.arange(len(same)), lens)
            differs[same[np.unique(pair[unequal])]] = True
    if differs.any():
        i = int(meter[np.argmax(differs)])
        raise HashCollision(id_blob[int(id_at[i]) : int(id_at[i]) + int(id_len[i])].decode())


class HashCollision(ValueError):
    """Two meter ids share a 64-bit hash in this process."""
