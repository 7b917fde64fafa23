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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

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


@dataclass
class MeterArchive:
    """Immutable columns of the archive; see the module docstring."""

    area_ids: list[str]  # area code -> area id
    classes: list[str]  # class code -> customer class
    multipliers: _Array  # multiplier code -> value (float64)
    starts: _Array  # start code -> effective_from as POSIX seconds (float64)
    hashes: _Array  # uint64, sorted: meter index -> meter_hash(id)
    id_off: _Array  # meter index -> offset of its id in id_blob (n + 1 entries)
    id_blob: bytes
    area: _Array  # int32 per meter: area of its (first) version
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
    area_index: dict[str, int] = field(default_factory=dict)
    _mv: dict[str, memoryview] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.area_index = {a: i for i, a in enumerate(self.area_ids)}
        # Scalar access through memoryviews: a Python int or float per item, several times
        # cheaper than indexing a numpy array (the engine looks up every reading).
        for name in ("hashes", "id_off", "area", "flags", "cls", "mult", "start", "hist_meter",
                     "hist_off", "h_area", "h_flags", "h_cls", "h_mult", "h_start", "bucket_off",
                     "multipliers", "starts"):
            self._mv[name] = memoryview(np.ascontiguousarray(getattr(self, name)))  # type: ignore[arg-type]
        self._starts_mv = self._mv["starts"]
        self._mult_mv = self._mv["multipliers"]
        mv = self._mv
        # Everything locate() reads, fetched with one attribute load per call.
        self._locate = (mv["bucket_off"], mv["hashes"], mv["id_off"], self.id_blob, mv["flags"],
                        mv["start"], mv["starts"], mv["area"], self.area_ids, self.bucket_shift)

    @property
    def size(self) -> int:
        return len(self.hashes)

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (numpy buffers and the id blob; the area and class tables
        counted by their strings)."""
        arrays: int = sum(
            getattr(self, name).nbytes
            for name in ("multipliers", "starts", "hashes", "id_off", "area", "flags", "cls", "mult",
                         "start", "hist_meter", "hist_off", "h_area", "h_flags", "h_cls", "h_mult",
                         "h_start", "member_off", "member_meter", "bucket_off")
        )
        tables = sum(len(a) + 49 for a in self.area_ids) + sum(len(c) + 49 for c in self.classes)
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
            id_off = mv["id_off"]
            encoded = meter_id.encode()
            while j < hi and hashes[j] == h:
                if self.id_blob[id_off[j] : id_off[j + 1]] == encoded:
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
        id_off = self._mv["id_off"]
        return self.id_blob[id_off[i] : id_off[i + 1]].decode()

    def meter_ids(self) -> Iterator[str]:
        blob, id_off = self.id_blob, self._mv["id_off"]
        for i in range(self.size):
            yield blob[id_off[i] : id_off[i + 1]].decode()

    # ---- versions --------------------------------------------------------------------------

    def locate(self, meter_id: str, ts: float) -> tuple[str, int, float] | None:
        """(area id, flags, until) of ``meter_id`` at ``ts``, or None if not held or not in
        force yet: :meth:`index` and :meth:`placement` in one call (the engine's per reading)."""
        boff, hashes, id_off, blob, flags_mv, start_mv, starts, area_mv, area_ids, shift = self._locate
        h = hash(meter_id) & _MASK64
        b = h >> shift
        hi = boff[b + 1]
        j = bisect.bisect_left(hashes, h, boff[b], hi)
        encoded = meter_id.encode()
        while j < hi and hashes[j] == h:
            if blob[id_off[j] : id_off[j + 1]] == encoded:
                flags = flags_mv[j]
                if flags & HISTORY:
                    placed = self.placement(j, ts)
                    return (area_ids[placed[0]], placed[1], placed[2]) if placed is not None else None
                if starts[start_mv[j]] > ts:
                    return None
                return area_ids[area_mv[j]], flags, _INF
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
        a = self.area_index.get(area_id)
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


class ArchiveBuilder:
    """Collects decoded archive records in chunks and builds a :class:`MeterArchive`.

    ``keep_area`` (None: keep all) says which areas this archive serves. A meter is held when
    any of its versions maps it to a kept area, and then with every version (a moved meter's
    readings may arrive under either area). Records of other meters are kept only in compact
    columns until :meth:`build` knows which meters are held, then dropped.
    """

    def __init__(self, keep_area: Callable[[str], bool] | None = None) -> None:
        self.keep_area = keep_area
        self._area_code: dict[str, int] = {}
        self._area_kept: list[bool] = []
        self._class_code: dict[str, int] = {}
        self._held: list[dict[str, _Array]] = []
        self._blobs: list[bytes] = []
        self._foreign: list[dict[str, _Array]] = []
        self._seq = 0
        self.records = 0

    def add(
        self,
        meter_ids: Sequence[str],
        area_ids: Sequence[str],
        supply: Sequence[bool],
        multipliers: Sequence[float],
        classes: Sequence[str],
        active: Sequence[bool],
        starts: Sequence[float],
    ) -> None:
        """Add one chunk of records, in topic order (a later record of the same meter and
        start replaces an earlier one)."""
        n = len(meter_ids)
        if not n:
            return
        area_code = self._area_code
        kept = self._area_kept
        for a in set(area_ids) - area_code.keys():
            area_code[a] = len(kept)
            kept.append(self.keep_area is None or self.keep_area(a))
        areas = np.array(list(map(area_code.__getitem__, area_ids)), dtype=np.int32)
        class_code = self._class_code
        for c in set(classes) - class_code.keys():
            class_code[c] = len(class_code)
        cls = np.array(list(map(class_code.__getitem__, classes)), dtype=np.int32)
        flags = (np.array(supply, dtype=bool).astype(np.uint8) * SUPPLY
                 | np.array(active, dtype=bool).astype(np.uint8) * ACTIVE)
        cols: dict[str, _Array] = {
            "hash": np.array(list(map(hash, meter_ids)), dtype=np.int64).view(np.uint64),
            "area": areas,
            "flags": flags,
            "cls": cls,
            "mult": np.array(multipliers, dtype=np.float64),
            "start": np.array(starts, dtype=np.float64),
            "seq": np.arange(self._seq, self._seq + n, dtype=np.int64),
        }
        self._seq += n
        self.records += n
        held = np.asarray(kept, dtype=bool)[areas]
        if held.all():
            self._add_held(cols, meter_ids)
        else:
            ids = [m for m, h in zip(meter_ids, held.tolist(), strict=True) if h]
            self._add_held({k: v[held] for k, v in cols.items()}, ids)
            foreign = ~held
            self._foreign.append({k: v[foreign] for k, v in cols.items()})

    def _add_held(self, cols: dict[str, _Array], meter_ids: Sequence[str]) -> None:
        joined = "".join(meter_ids)
        if joined.isascii():  # nearly always: one encode for the chunk, lengths in characters
            blob = joined.encode("ascii")
            lengths = list(map(len, meter_ids))
        else:
            encoded = [m.encode() for m in meter_ids]
            blob, lengths = b"".join(encoded), list(map(len, encoded))
        cols["id_len"] = np.array(lengths, dtype=np.int32)
        self._held.append(cols)
        self._blobs.append(blob)

    def build(self) -> MeterArchive:
        held = _concat(self._held)
        blob = np.frombuffer(b"".join(self._blobs), dtype=np.uint8)
        self._held, self._blobs = [], []
        row_off = np.zeros(len(held["hash"]) + 1, dtype=np.int64)
        np.cumsum(held["id_len"], out=row_off[1:])
        held["id_at"] = row_off[:-1]
        if self._foreign:
            foreign = _concat(self._foreign)
            self._foreign = []
            known = _unique(held["hash"])
            at = np.minimum(np.searchsorted(known, foreign["hash"]), max(len(known) - 1, 0))
            take = known[at] == foreign["hash"] if len(known) else np.zeros(len(at), dtype=bool)
            foreign = {k: v[take] for k, v in foreign.items()}
            foreign["id_len"] = np.full(len(foreign["hash"]), -1, dtype=np.int32)
            foreign["id_at"] = np.full(len(foreign["hash"]), -1, dtype=np.int64)
            rows = {k: np.concatenate([held[k], foreign[k]]) for k in held}
        else:
            rows = held
        # By meter, then start, then topic order: the last record of a (meter, start) wins.
        order = np.lexsort((rows["seq"], rows["start"], rows["hash"]))
        rows = {k: v[order] for k, v in rows.items()}
        h, s = rows["hash"], rows["start"]
        n = len(h)
        first = np.ones(n, dtype=bool)
        if n:
            first[1:] = h[1:] != h[:-1]
        meter_of_row = np.cumsum(first) - 1
        hashes = h[first]
        m = len(hashes)
        # Each meter's id from one of its held rows (every held meter has one, if perhaps
        # replaced by a later record of the same start, which is why this comes first).
        has_id = rows["id_len"] >= 0
        id_row = np.full(m, -1, dtype=np.int64)
        id_row[meter_of_row[has_id][::-1]] = np.flatnonzero(has_id)[::-1]
        id_len = rows["id_len"][id_row].astype(np.int64)
        id_at = rows["id_at"][id_row]
        id_off = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(id_len, out=id_off[1:])
        gather = np.repeat(id_at - id_off[:-1], id_len) + np.arange(int(id_off[-1]), dtype=np.int64)
        id_blob = blob[gather].tobytes()
        _check_ids(rows, meter_of_row, has_id, blob, id_blob, id_off)
        # The last record of a (meter, start) wins.
        last = np.ones(n, dtype=bool)
        if n:
            last[:-1] = (h[1:] != h[:-1]) | (s[1:] != s[:-1])
        rows = {k: v[last] for k, v in rows.items()}
        meter_of_row = meter_of_row[last]
        n = len(meter_of_row)
        meter_rows = np.flatnonzero(np.diff(meter_of_row, prepend=-1) != 0)
        counts = np.diff(np.append(meter_rows, n))

        mult_table = _unique(rows["mult"])
        mult_codes = np.searchsorted(mult_table, rows["mult"])
        start_table = _unique(rows["start"])
        start_codes = np.searchsorted(start_table, rows["start"])
        classes = list(self._class_code)
        # Only the areas of the meters held: a worker's share of a province, not all of it.
        every_area = list(self._area_code)
        used = _unique(rows["area"])
        area_ids = [every_area[a] for a in used.tolist()]
        rows["area"] = np.searchsorted(used, rows["area"]).astype(np.int32)
        flags = rows["flags"][meter_rows].copy()
        multi = counts > 1
        flags[multi] |= HISTORY
        hist_meter = np.flatnonzero(multi).astype(np.int32)
        hist_rows = np.repeat(multi, counts)
        hist_off = np.zeros(len(hist_meter) + 1, dtype=np.int64)
        np.cumsum(counts[multi], out=hist_off[1:])
        cls_dtype = _code_dtype(len(classes))
        mult_dtype = _code_dtype(len(mult_table))
        start_dtype = _code_dtype(len(start_table))

        # Membership: every (area, meter) pair of any version, grouped by area.
        pairs = _unique(rows["area"].astype(np.int64) << 32 | meter_of_row.astype(np.int64))
        member_area = (pairs >> 32).astype(np.int32)
        member_meter = (pairs & 0xFFFFFFFF).astype(np.int32)
        member_off = np.searchsorted(member_area, np.arange(len(area_ids) + 1)).astype(np.int64)

        bits = max(1, int(math.ceil(math.log2(max(m, 1) / 4))) if m > 8 else 1)
        shift = 64 - bits
        edges = (np.arange(1 << bits, dtype=np.uint64) << np.uint64(shift)) if bits < 64 else np.arange(0)
        bucket_off = np.append(np.searchsorted(hashes, edges), m).astype(_offset_dtype(m + 1))
        return MeterArchive(
            area_ids=area_ids,
            classes=classes,
            multipliers=mult_table.astype(np.float64),
            starts=start_table.astype(np.float64),
            hashes=hashes,
            id_off=id_off.astype(_offset_dtype(int(id_off[-1]) + 1)),
            id_blob=id_blob,
            area=rows["area"][meter_rows].astype(np.int32),
            flags=flags,
            cls=rows["cls"][meter_rows].astype(cls_dtype),
            mult=mult_codes[meter_rows].astype(mult_dtype),
            start=start_codes[meter_rows].astype(start_dtype),
            hist_meter=hist_meter,
            hist_off=hist_off,
            h_area=rows["area"][hist_rows].astype(np.int32),
            h_flags=rows["flags"][hist_rows].copy(),
            h_cls=rows["cls"][hist_rows].astype(cls_dtype),
            h_mult=mult_codes[hist_rows].astype(mult_dtype),
            h_start=rows["start"][hist_rows].copy(),
            member_off=member_off,
            member_meter=member_meter,
            bucket_off=bucket_off,
            bucket_shift=shift,
        )


def _unique(x: _Array) -> _Array:
    """Sorted distinct values (numpy 2.4's np.unique hashes integers, 60x slower than this)."""
    s = np.sort(x)
    if len(s) < 2:
        return s
    return s[np.concatenate(([True], s[1:] != s[:-1]))]


def _concat(chunks: list[dict[str, _Array]]) -> dict[str, _Array]:
    if not chunks:
        return {
            "hash": np.zeros(0, np.uint64), "area": np.zeros(0, np.int32), "flags": np.zeros(0, np.uint8),
            "cls": np.zeros(0, np.int32), "mult": np.zeros(0), "start": np.zeros(0),
            "seq": np.zeros(0, np.int64), "id_len": np.zeros(0, np.int32),
        }
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _check_ids(
    rows: dict[str, _Array],
    meter_of_row: _Array,
    has_id: _Array,
    blob: _Array,
    id_blob: bytes,
    id_off: _Array,
) -> None:
    """Two different ids with one hash would be merged into one meter: refuse to build rather
    than mix two meters' histories (keyed SipHash: not expected in practice)."""
    meters = meter_of_row[has_id]
    if len(meters) == len(_unique(meters)):
        return  # one held row per meter: nothing to compare
    at, length = rows["id_at"][has_id], rows["id_len"][has_id]
    raw = blob.tobytes()
    for r in np.flatnonzero(np.bincount(meters)[meters] > 1):
        i = int(meters[r])
        if raw[int(at[r]) : int(at[r]) + int(length[r])] != id_blob[int(id_off[i]) : int(id_off[i + 1])]:
            raise HashCollision(id_blob[int(id_off[i]) : int(id_off[i + 1])].decode())


class HashCollision(ValueError):
    """Two meter ids share a 64-bit hash in this process."""
