"""The topology feed's bulk decoding: the same records accepted, and the same refused with the
same reasons, as the contract's decoder one record at a time; and the partition of an area as
Kafka's producers compute it."""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings
from hypothesis import strategies as st

from archive import ArchiveBuilder, MeterArchive
from streams import contracts
from streams.contracts import InvalidRecord
from streams.topology_decode import ChunkDecoder, add_values
from streams.topology_feed import area_partition

GOOD: dict[str, Any] = {
    "v": 1,
    "meter_id": "A0001-M0001",
    "area_id": "A0001",
    "role": "customer",
    "multiplier": 1.0,
    "customer_class": "residential",
    "active": True,
    "effective_from": "2025-01-01T00:00:00Z",
}
# Each one wrong in one field (or not a record at all); the contract refuses every one.
BAD: list[Any] = [
    b"{",
    b"[]",
    b"",
    {"meter_id": "bad id"},
    {"meter_id": ""},
    {"meter_id": "m" * 65},
    {"meter_id": "m\n"},
    {"area_id": "B B"},
    {"area_id": "Ä"},
    {"multiplier": 0},
    {"multiplier": 1e6},
    {"multiplier": "1"},
    {"role": "x"},
    {"v": 2},
    {"customer_class": "x" * 33},
    {"effective_from": "2025-01-01T00:00:00"},
    {"effective_from": "yesterday"},
    {"active": "yes"},
    {"extra": 1},
]
GOOD_TOO: list[dict[str, Any]] = [
    {"meter_id": "m2", "area_id": "B"},
    {"role": "supply", "multiplier": 80.5, "customer_class": "supply"},
    {"effective_from": "2026-03-01T12:00:07.25+08:00", "active": False},
    {"meter_id": "S.9:x_-"},
]


def _value(spec: Any) -> bytes:
    if isinstance(spec, bytes):
        return spec
    value = {**GOOD, **spec}
    return orjson.dumps(value)


def _contract(value: bytes) -> tuple[str, Any]:
    try:
        rec = contracts.decode_topology(value)
    except InvalidRecord as exc:
        return "refused", exc.reason
    return "ok", (rec.meter_id, rec.area_id, rec.role == "supply", rec.multiplier, rec.customer_class,
                  rec.active, rec.effective_from.timestamp())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([*BAD, *GOOD_TOO, {}]), min_size=1, max_size=30))
def test_chunk_decoding_agrees_with_the_contract_record_by_record(specs: list[Any]) -> None:
    values = [_value(s) for s in specs]
    cols, refused = ChunkDecoder().decode(values)
    got: dict[int, tuple[str, Any]] = {i: ("refused", exc.reason) for i, exc in refused}
    for k, i in enumerate(cols.index):
        got[i] = ("ok", (cols.meter_ids[k], cols.area_ids[k], cols.supply[k], cols.multipliers[k],
                         cols.classes[k], cols.active[k], cols.starts[k]))
    assert got == {i: _contract(v) for i, v in enumerate(values)}
    assert cols.index == sorted(cols.index)  # topic order kept: a later record replaces


def _contents(archive: MeterArchive) -> list[tuple[str, list[tuple[Any, ...]]]]:
    return sorted(
        (meter_id, [(archive.area_ids[v[0]], v[1], archive.classes[v[2]], *v[3:])
                    for v in archive.versions(i)])
        for i, meter_id in enumerate(archive.meter_ids())
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([
    *BAD, *GOOD_TOO, {}, {"effective_from": "2025-01-01T00:00:00+00:00"}, {"meter_id": "m2"},
    {"meter_id": "m2", "multiplier": 2.0}, {"area_id": "B", "effective_from": "2026-01-01T00:00:00Z"},
]), min_size=1, max_size=20), min_size=1, max_size=3))
def test_the_bulk_load_builds_the_archive_the_decoded_columns_build(chunks: list[list[Any]]) -> None:
    """The load's coded path (add_values) against the columns (decode, then ArchiveBuilder.add):
    the same archive and the same refusals, chunk by chunk, whatever the chunks share."""
    coded, listed = ArchiveBuilder(), ArchiveBuilder()
    coded_decoder, listed_decoder = ChunkDecoder(), ChunkDecoder()
    for specs in chunks:
        values = [_value(s) for s in specs]
        refused = add_values(coded, coded_decoder, values)
        cols, listed_refused = listed_decoder.decode(values)
        listed.add(cols.meter_ids, cols.area_ids, cols.supply, cols.multipliers, cols.classes, cols.active,
                   cols.starts)
        assert [(i, e.reason) for i, e in refused] == [(i, e.reason) for i, e in listed_refused]
    assert _contents(coded.build()) == _contents(listed.build())


def test_tombstones_are_skipped() -> None:
    cols, refused = ChunkDecoder().decode([None, _value({}), None])
    assert (cols.index, refused) == ([1], [])


def test_area_partition_is_the_producers_partition() -> None:
    partitioner = DefaultPartitioner()
    for n in (1, 4, 8, 12):
        for area in ("A0001", "A0002", "rural-7", "Z"):
            assert area_partition(area, n) == partitioner(area.encode(), list(range(n)), list(range(n)))
