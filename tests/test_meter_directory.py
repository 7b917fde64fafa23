"""Unit tests for meter_directory.py: exact answers for the meters it was built with, 1.3 cells
of ceil(log2(top partition + 1)) bits per meter, and the archive's directory of the meters a
shard does not hold."""

from __future__ import annotations

import numpy as np
import pytest

from archive import ArchiveBuilder
from meter_directory import MeterDirectory


@pytest.mark.parametrize("partitions", [1, 2, 3, 8, 9, 17, 64, 255, 256])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 300, 20_000, 200_000])
def test_every_key_gets_its_partition(n: int, partitions: int) -> None:
    rng = np.random.default_rng(n)
    keys = np.unique(rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1))
    partitions = rng.integers(0, partitions, len(keys))
    directory = MeterDirectory.build(keys, partitions)
    assert directory.partitions_of_keys(keys).tolist() == partitions.tolist()
    sample = range(0, len(keys), max(1, len(keys) // 500)) if len(keys) > 20_000 else range(len(keys))
    assert [directory.partition_of_key(int(keys[i])) for i in sample] == [int(partitions[i]) for i in sample]


@pytest.mark.parametrize(("partitions", "most"), [(2, 0.18), (8, 0.51), (16, 0.67), (64, 1.0), (256, 1.35)])
def test_bytes_per_meter(partitions: int, most: float) -> None:
    """1.3 cells of ceil(log2(partitions)) bits a meter: 3 bits for the city's 8, 6 for the
    province's 64 (a byte a cell up to 256)."""
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, 2**63, 300_000, dtype=np.int64)).astype(np.uint64)
    values = rng.integers(0, partitions, len(keys))
    directory = MeterDirectory.build(keys, values)
    assert directory.nbytes / len(keys) < most
    assert (directory.partitions_of_keys(keys) == values).all()


def test_keys_in_any_order_and_wide_partitions() -> None:
    keys = np.array([2**64 - 1, 5, 2**40, 2**63], dtype=np.uint64)
    partitions = np.array([300, 2, 65_535, 0])
    directory = MeterDirectory.build(keys, partitions)
    assert [directory.partition_of_key(int(k)) for k in keys] == partitions.tolist()


def test_duplicate_keys_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="do not peel"):
        MeterDirectory.build(np.array([3, 3], dtype=np.uint64), np.array([1, 2]))


def test_a_shard_knows_the_partition_of_every_meter_it_does_not_hold() -> None:
    """Built in the shard's bulk pass: every meter of the topic that the shard does not hold maps
    to the partition of (one of) its areas; a meter moved between two partitions to either."""
    rng = np.random.default_rng(7)
    areas = [f"A{a:03d}" for a in range(40)]
    partition = {a: int(rng.integers(0, 8)) for a in areas}
    held = {0, 3}
    ids = [f"m{k}" for k in range(3000)]
    home = [areas[int(rng.integers(0, len(areas)))] for _ in ids]
    moved = {m: areas[int(rng.integers(0, len(areas)))] for m in ids[::50]}
    builder = ArchiveBuilder(keep_area=lambda a: partition[a] in held, partition_of=partition.__getitem__)
    for lo in range(0, len(ids), 700):  # several chunks, as the feed adds them
        chunk = ids[lo : lo + 700]
        builder.add(chunk, home[lo : lo + 700], [False] * len(chunk), [1.0] * len(chunk),
                    ["residential"] * len(chunk), [True] * len(chunk), [0.0] * len(chunk))
    builder.add(list(moved), list(moved.values()), [False] * len(moved), [1.0] * len(moved),
                ["residential"] * len(moved), [True] * len(moved), [100.0] * len(moved))
    archive = builder.build()
    for m, a in zip(ids, home, strict=True):
        where = {partition[a], partition[moved.get(m, a)]}
        if where & held:
            assert archive.index(m) >= 0
        else:
            assert archive.index(m) < 0
            assert archive.directed_partition(m) in where
    assert archive.directory is not None
    assert archive.directory.size == sum(
        1 for m, a in zip(ids, home, strict=True) if not {partition[a], partition[moved.get(m, a)]} & held
    )


def test_an_unsharded_archive_has_no_directory() -> None:
    builder = ArchiveBuilder()
    builder.add(["m1"], ["A"], [False], [1.0], ["residential"], [True], [0.0])
    assert builder.build().directed_partition("m2") is None
