"""The meter -> partition directory of a sharded worker: for the meters it does not hold, the
readings partition whose worker does, in 1.3 cells per meter of ceil(log2(top partition + 1))
bits each (0.49 bytes per meter for the city's 8 partitions; two bytes a cell past 256) and no
meter ids kept.

A static xor retrieval table: each meter's key picks three cells, one in each third of the
table, and the xor of those cells is its partition. It answers exactly for the meters it was
built with and arbitrarily for any other id, so a caller must treat the answer as a hint: a
reading sent on by it is flagged and refused one hop later if that worker does not know the
meter either (docs/scaling.md, "The meter directory").

>>> d = MeterDirectory.build(np.array([10, 2**63, 30], dtype=np.uint64), np.array([1, 7, 3]))
>>> [d.partition_of_key(k) for k in (10, 2**63, 30)]
[1, 7, 3]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[Any]
_MASK64 = (1 << 64) - 1
_LOAD = 1.3  # cells per meter: peeling needs > 1.222 for three cells; a margin keeps it quick
_BUCKET = 1 << 16  # keys per bucket, about: a bucket's cells and counts stay in the cache
_GROUP = 1 << 16  # keys peeled together, about: a bucket or two
_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # odd: splitmix64's


def _spread(keys: _Array, salt: int, multiplier: int) -> _Array:
    """32 well-mixed bits of each key (uint64): the keys are keyed SipHash values already, so
    one multiply by an odd constant spreads them enough; ``salt`` varies it per attempt."""
    return ((keys ^ np.uint64(salt)) * np.uint64(multiplier)) >> np.uint64(32)


def _spread_one(key: int, salt: int, multiplier: int) -> int:
    return (((key ^ salt) * multiplier) & _MASK64) >> 32


class MeterDirectory:
    """Partition per meter key (a uint64, e.g. the archive's meter hash); see the module.

    The keys are split into buckets by their top bits, each bucket with its own three thirds
    of the table: keys built in sorted order then touch the table nearly in order (a table
    over all keys at once missed the cache at every step of the build)."""

    def __init__(self, cells: _Array, base: _Array, shift: int, seed: int, size: int, bits: int) -> None:
        self.cells = cells  # bits > 0: cell j at bits j*bits.. of the bytes, little-endian; else one a slot
        self.base = base  # bucket -> its first cell (len(buckets) + 1 entries)
        self.shift = shift  # bucket = key >> shift
        self.seed = seed
        self.size = size  # meters it was built with
        self.bits = bits
        self.mask = (1 << bits) - 1
        self._cells = memoryview(cells)  # type: ignore[arg-type]
        self._base = memoryview(base)  # type: ignore[arg-type]

    @property
    def nbytes(self) -> int:
        return int(self.cells.nbytes + self.base.nbytes)

    def partition_of_key(self, key: int) -> int:
        """The partition of the meter with ``key`` (arbitrary if it was not built with it)."""
        b = key >> self.shift
        base = self._base[b]
        seg = (self._base[b + 1] - base) // 3
        cells = self._cells
        value = 0
        bits = self.bits
        for i, salt in enumerate(_salts(self.seed)):
            j = base + i * seg + (_spread_one(key, salt, _MIX[i]) * seg >> 32)
            if bits:
                o = j * bits
                value ^= ((cells[o >> 3] | cells[(o >> 3) + 1] << 8) >> (o & 7)) & self.mask
            else:
                value ^= cells[j]
        return value

    def partitions_of_keys(self, keys: _Array) -> _Array:
        pos = _positions(np.asarray(keys, dtype=np.uint64), _salts(self.seed), self.base, self.shift)
        if not self.bits:
            return _lookup(self.cells, pos)
        return _unpack(self.cells, self.bits, pos)

    @classmethod
    def build(cls, keys: _Array, partitions: _Array, seed: int = 1) -> MeterDirectory:
        """The directory of distinct ``keys`` (uint64) and their ``partitions`` (< 65,536):
        cells of ceil(log2(top + 1)) bits, packed, while every partition is under 256, else two
        bytes a cell."""
        keys = np.asarray(keys, dtype=np.uint64)
        values = np.asarray(partitions)
        if len(keys) > 1 and not (keys[1:] >= keys[:-1]).all():
            order = np.argsort(keys)
            keys, values = keys[order], values[order]
        top = int(values.max()) if len(values) else 0
        values = values.astype(np.uint8 if top < 256 else np.uint16)
        n = len(keys)
        bits = max(0, (n // _BUCKET).bit_length())
        shift = 64 - bits
        in_bucket = np.bincount((keys >> np.uint64(shift)).view(np.int64), minlength=1 << bits)
        # Each third of a bucket: _LOAD cells per key, and room for a small bucket to peel.
        segment = np.ceil(in_bucket * _LOAD / 3).astype(np.int64) + 2 + in_bucket // 8 * (in_bucket < 1000)
        base = np.zeros(len(segment) + 1, dtype=np.int64)
        np.cumsum(3 * segment, out=base[1:])
        ncells = int(base[-1])
        key_off = np.zeros(len(in_bucket) + 1, dtype=np.int64)
        np.cumsum(in_bucket, out=key_off[1:])
        # Buckets own their cells, so a group of them peels on its own: its counts stay in the
        # cache (over all keys at once every round's gathers and updates missed it).
        per = max(1, (_GROUP << bits) // max(n, 1))  # buckets a group
        groups = [(int(key_off[b]), int(key_off[min(b + per, len(in_bucket))]), int(base[b]),
                   int(base[min(b + per, len(in_bucket))])) for b in range(0, len(in_bucket), per)]
        for attempt in range(seed, seed + 64):
            salts = _salts(attempt)
            cells = np.zeros(ncells, dtype=values.dtype)
            for k0, k1, c0, c1 in groups:
                pos = _positions(keys[k0:k1], salts, base, shift)
                pos -= c0
                rounds = _peel(pos, c1 - c0)
                if rounds is None:
                    break
                _assign(cells[c0:c1], pos, values[k0:k1], rounds)
            else:
                if top < 256:
                    bits = max(1, top.bit_length())
                    return cls(_pack(cells, bits), base, shift, attempt, n, bits)
                return cls(cells, base, shift, attempt, n, 0)
        raise ValueError("meter directory: keys do not peel (duplicate keys?)")


def _salts(seed: int) -> tuple[int, int, int]:
    return ((seed * _MIX[0]) & _MASK64, ((seed + 1) * _MIX[0]) & _MASK64, ((seed + 2) * _MIX[0]) & _MASK64)


def _positions(keys: _Array, salts: tuple[int, int, int], base: _Array, shift: int) -> _Array:
    """(3, n): the cell of each key in each third of its bucket."""
    bucket = (keys >> np.uint64(shift)).astype(np.intp)
    first = base[bucket].astype(np.uint64)
    seg = base[bucket + 1].astype(np.uint64) - first
    seg //= np.uint64(3)
    pos = np.empty((3, len(keys)), dtype=np.uint64)
    for i, salt in enumerate(salts):
        at = pos[i]
        np.multiply(_spread(keys, salt, _MIX[i]), seg, out=at)
        at >>= np.uint64(32)
        at += first
        first += seg
    return pos.view(np.int64)


def _pack(cells: _Array, bits: int) -> _Array:
    """``cells`` (uint8, each < 2**bits) as one little-endian bit string of ``bits`` a cell, one
    zero byte past its end (a cell is read as the two bytes it starts in)."""
    groups = -(-len(cells) // 8)
    words = np.zeros(groups, dtype=np.uint64)  # eight cells a word: bits * 8 <= 64
    padded = np.zeros(groups * 8, dtype=np.uint8)
    padded[: len(cells)] = cells
    lanes = padded.reshape(groups, 8)
    for i in range(8):
        words |= lanes[:, i].astype(np.uint64) << np.uint64(i * bits)
    del padded, lanes
    packed = np.zeros(groups * bits + 1, dtype=np.uint8)
    packed[:-1] = words.astype("<u8", copy=False).view(np.uint8).reshape(groups, 8)[:, :bits].ravel()
    return packed


def _unpack(packed: _Array, bits: int, pos: _Array) -> _Array:
    """The xor of the three cells of each key (``pos``: (3, n)) of a packed table."""
    value: _Array | None = None
    for row in pos:
        o = row * bits
        at = o >> 3
        two = packed[at].astype(np.uint16) | packed[at + 1].astype(np.uint16) << np.uint16(8)
        cell = (two >> (o & 7).astype(np.uint16)).astype(np.uint8)
        value = cell if value is None else value ^ cell
    assert value is not None
    result: _Array = value & np.uint8((1 << bits) - 1)
    return result


def _lookup(cells: _Array, pos: _Array) -> _Array:
    value: _Array = cells[pos[0]] ^ cells[pos[1]] ^ cells[pos[2]]
    return value


def _peel(pos: _Array, ncells: int) -> list[tuple[_Array, _Array]] | None:
    """Rounds of (keys, their free cell): every key of a round has a cell no other unpeeled key
    touches, so a round's keys are assigned together. None if the keys do not peel.

    Each cell keeps how many unpeeled keys touch it and the sum of their numbers, so a cell
    touched once names its key; a round looks only at the cells the last one touched."""
    n = pos.shape[1]
    number = np.arange(n, dtype=np.float64)
    count = np.zeros(ncells, dtype=np.int64)
    key_sum = np.zeros(ncells, dtype=np.float64)
    for column in pos:  # contiguous: no repeat of the key numbers
        count += np.bincount(column, minlength=ncells)
        key_sum += np.bincount(column, weights=number, minlength=ncells)
    cells = np.flatnonzero(count == 1)
    rounds: list[tuple[_Array, _Array]] = []
    peeled = 0
    low = np.uint64(0xFFFFFFFF)
    while len(cells):
        # Key numbers with the cell's place below them, sorted as one uint64 (faster than an
        # argsort): a key named by two of its cells is peeled once.
        place = np.arange(len(cells), dtype=np.uint64)
        packed = np.sort(key_sum[cells].astype(np.uint64) << np.uint64(32) | place)
        named = packed >> np.uint64(32)
        new = np.ones(len(named), dtype=bool)
        new[1:] = named[1:] != named[:-1]
        keys = named[new].astype(np.intp)
        rounds.append((keys, cells[(packed[new] & low).astype(np.intp)]))
        peeled += len(keys)
        touched = pos[:, keys]
        weights = keys.astype(np.float64)
        for column in touched:
            if len(column) > ncells >> 4:
                count -= np.bincount(column, minlength=ncells)
                key_sum -= np.bincount(column, weights=weights, minlength=ncells)
            else:
                np.subtract.at(count, column, 1)
                np.subtract.at(key_sum, column, weights)
        flat = touched.ravel()
        cells = np.sort(flat[count[flat] == 1])
        if len(cells) > 1:
            cells = cells[np.concatenate(([True], cells[1:] != cells[:-1]))]
    return rounds if peeled == n else None


def _assign(cells: _Array, pos: _Array, values: _Array, rounds: list[tuple[_Array, _Array]]) -> None:
    """Last peeled first: each key's free cell makes the xor of its three cells its value."""
    for keys, cell in reversed(rounds):
        cells[cell] = values[keys] ^ _lookup(cells, pos[:, keys])
