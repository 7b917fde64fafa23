"""Unit tests for topology.py: archive history, bounds, CSV loading and record round trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archive import _by_meter
from archive_csv import CsvError, read_meters
from topology import (
    DEFAULT_CLASS_BOUNDS,
    FALLBACK_BOUNDS,
    Area,
    Bounds,
    MeterRecord,
    Role,
    Topology,
    build_archive,
    parse_time,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MOVE = datetime(2026, 1, 1, 6, 0, tzinfo=UTC)
METER_HEADER = "meter_id,area_id,role,multiplier,customer_class,active,effective_from\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture
def meters_csv(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        "meters.csv",
        METER_HEADER
        + "SA,A,supply,80,supply,true,1970-01-01T00:00:00Z\n"
        + "a1,A,customer,1,residential,true,1970-01-01T00:00:00Z\n"
        + "a2,A,customer,1.0,residential,false,1970-01-01T00:00:00Z\n"  # inactive
        + "mv,A,customer,1,residential,true,1970-01-01T00:00:00Z\n"
        + "mv,B,customer,1,residential,true,2026-01-01T06:00:00Z\n"  # moved A -> B at 06:00
        + "SB,B,supply,40,supply,1,2025-06-01T00:00:00+08:00\n"
        + "b1,B,,1,,,\n",  # every optional column empty: defaults
    )


@pytest.fixture
def areas_csv(tmp_path: Path) -> Path:
    return write(
        tmp_path,
        "areas.csv",
        "area_id,area_class,loss_lower,loss_upper\nA,urban,,\nB,rural,0.0,0.04\nC,rural,,\nD,industrial,,\n",
    )


def test_from_csv_roles_multipliers_defaults(meters_csv: Path, areas_csv: Path) -> None:
    topo = Topology.from_csv(meters_csv, areas_csv)
    assert topo.meter_count() == 6  # distinct meters; mv has two versions
    assert len(list(topo.records())) == 7
    at = datetime(2026, 1, 2, tzinfo=UTC)
    sa = topo.meter_at("SA", at)
    assert sa is not None and sa.role is Role.SUPPLY and sa.multiplier == 80.0
    sb = topo.meter_at("SB", at)
    # +08:00 offset normalised to UTC
    assert sb is not None and sb.effective_from == datetime(2025, 5, 31, 16, 0, tzinfo=UTC)
    b1 = topo.meter_at("b1", at)
    assert b1 == MeterRecord("b1", "B", Role.CUSTOMER, 1.0, "residential", True, EPOCH)
    assert set(topo.supply_meters("A", at)) == {"SA"}
    assert set(topo.supply_meters("B", at)) == {"SB"}


def test_from_csv_without_areas_file(meters_csv: Path, tmp_path: Path) -> None:
    topo = Topology.from_csv(meters_csv, tmp_path / "missing.csv")
    assert topo.bounds_for("A") == DEFAULT_CLASS_BOUNDS["urban"]
    assert topo.area_class("B") == "urban"


def test_load_returns_row_count(meters_csv: Path, areas_csv: Path) -> None:
    topo = Topology()
    assert topo.load_areas_csv(areas_csv) == 4
    assert topo.load_meters_csv(meters_csv) == 7


def test_inactive_meter_excluded(meters_csv: Path) -> None:
    topo = Topology.from_csv(meters_csv)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert "a2" not in topo.customer_meters("A", at)
    assert "a1" in topo.customer_meters("A", at)
    # Still known to the archive (readings from it are not "unknown").
    assert topo.knows("a2")


def test_meter_moved_counts_in_new_area_from_effective_time(meters_csv: Path) -> None:
    topo = Topology.from_csv(meters_csv)
    before = MOVE - timedelta(seconds=1)
    assert set(topo.customer_meters("A", before)) == {"a1", "mv"}
    assert set(topo.customer_meters("B", before)) == {"b1"}
    # At the effective instant itself the new record is in force.
    assert set(topo.customer_meters("A", MOVE)) == {"a1"}
    assert set(topo.customer_meters("B", MOVE)) == {"b1", "mv"}
    # Late readings from before still resolve to the old area.
    rec = topo.meter_at("mv", MOVE - timedelta(days=3))
    assert rec is not None and rec.area_id == "A"


def test_meter_unknown_before_first_record() -> None:
    topo = Topology()
    topo.apply(MeterRecord("m", "A", Role.CUSTOMER, 1.0, "residential", True, MOVE))
    assert topo.meter_at("m", MOVE - timedelta(seconds=1)) is None
    assert topo.meter_at("nope", MOVE) is None
    assert topo.customer_meters("A", MOVE - timedelta(hours=1)) == {}


def test_apply_same_effective_time_replaces() -> None:
    topo = Topology()
    topo.apply(MeterRecord("m", "A", Role.CUSTOMER, 1.0, "residential", True, EPOCH))
    topo.apply(MeterRecord("m", "A", Role.CUSTOMER, 20.0, "commercial", True, EPOCH))
    assert len(list(topo.records())) == 1
    rec = topo.meter_at("m", MOVE)
    assert rec is not None and rec.multiplier == 20.0


def test_apply_out_of_order_history() -> None:
    # Records arriving newest-first still resolve by effective time.
    topo = Topology()
    topo.apply(MeterRecord("m", "B", Role.CUSTOMER, 1.0, "residential", True, MOVE))
    topo.apply(MeterRecord("m", "A", Role.CUSTOMER, 1.0, "residential", True, EPOCH))
    assert topo.meter_at("m", MOVE - timedelta(seconds=1)).area_id == "A"  # type: ignore[union-attr]
    assert topo.meter_at("m", MOVE).area_id == "B"  # type: ignore[union-attr]


def test_meter_deactivated_later() -> None:
    topo = Topology()
    topo.apply(MeterRecord("m", "A", Role.CUSTOMER, 1.0, "residential", True, EPOCH))
    topo.apply(MeterRecord("m", "A", Role.CUSTOMER, 1.0, "residential", False, MOVE))
    assert "m" in topo.customer_meters("A", MOVE - timedelta(seconds=1))
    assert "m" not in topo.customer_meters("A", MOVE)


def test_bounds_per_class_and_area_override(meters_csv: Path, areas_csv: Path) -> None:
    topo = Topology.from_csv(meters_csv, areas_csv)
    assert topo.bounds_for("A") == Bounds(-0.01, 0.07)  # urban class
    assert topo.bounds_for("B") == Bounds(0.0, 0.04)  # per-area override
    assert topo.area_class("B") == "rural"
    assert topo.bounds_for("C") == Bounds(-0.01, 0.10)  # rural class
    assert topo.bounds_for("D") == FALLBACK_BOUNDS  # class without bounds
    assert topo.bounds_for("never-seen") == DEFAULT_CLASS_BOUNDS["urban"]


def test_class_bounds_configurable() -> None:
    topo = Topology(class_bounds={"urban": Bounds(0.0, 0.05)})
    topo.set_area(Area("A", "urban"))
    assert topo.bounds_for("A") == Bounds(0.0, 0.05)
    # Default class bounds are copied per instance, not shared.
    assert Topology().bounds_for("A") == DEFAULT_CLASS_BOUNDS["urban"]


def test_areas_loaded_after_meters_override_class(meters_csv: Path, areas_csv: Path) -> None:
    topo = Topology()
    topo.load_meters_csv(meters_csv)
    topo.load_areas_csv(areas_csv)
    assert topo.bounds_for("B") == Bounds(0.0, 0.04)


def test_bounds_validation() -> None:
    assert Bounds(-0.01, 0.07).contains(-0.01) and Bounds(-0.01, 0.07).contains(0.07)
    assert not Bounds(-0.01, 0.07).contains(0.0700001)
    with pytest.raises(ValueError, match="must be below"):
        Bounds(0.1, 0.1)
    with pytest.raises(ValueError, match="must be below"):
        Bounds(0.2, 0.1)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("m1,A,customer,0,residential,true,1970-01-01T00:00:00Z", "multiplier"),
        ("m1,A,customer,-5,residential,true,1970-01-01T00:00:00Z", "multiplier"),
        ("m1,A,customer,1e7,residential,true,1970-01-01T00:00:00Z", "multiplier"),
        ("m1,A,customer,nan,residential,true,1970-01-01T00:00:00Z", "multiplier"),
        ("m1,A,customer,abc,residential,true,1970-01-01T00:00:00Z", "abc"),
        ("m1,A,boss,1,residential,true,1970-01-01T00:00:00Z", "boss"),
        ("m1,A,customer,1,residential,maybe,1970-01-01T00:00:00Z", "maybe"),
        ("m1,A,customer,1,residential,true,2026-01-01T00:00:00", "timezone"),
        ("m1,A,customer,1,residential,true,yesterday", "yesterday"),
        (",A,customer,1,residential,true,1970-01-01T00:00:00Z", "missing field 'meter_id'"),
        ("m1,,customer,1,residential,true,1970-01-01T00:00:00Z", "missing field 'area_id'"),
    ],
)
def test_bad_meter_row_raises(tmp_path: Path, row: str, match: str) -> None:
    path = write(tmp_path, "bad.csv", METER_HEADER + row + "\n")
    with pytest.raises(ValueError, match=match):
        Topology().load_meters_csv(path)


def test_missing_column_raises_value_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "meter_id,role\nm1,customer\n")
    with pytest.raises(ValueError, match="line 1: no column area_id, multiplier in the header"):
        Topology().load_meters_csv(path)


def test_truncated_meter_row_raises(tmp_path: Path) -> None:
    # Only meter_id and area_id are required columns. csv.DictReader fills a missing trailing cell
    # with None, and from_dict's str(None) makes it the area "None" instead of refusing the row.
    path = write(tmp_path, "bad.csv", "meter_id,area_id\na1,A\nm1\n")
    with pytest.raises(ValueError):
        Topology().load_meters_csv(path)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ("A,urban,0.1,0.05", "must be below"),
        ("A,urban,low,0.05", "low"),
    ],
)
def test_bad_area_row_raises(tmp_path: Path, row: str, match: str) -> None:
    path = write(tmp_path, "areas.csv", "area_id,area_class,loss_lower,loss_upper\n" + row + "\n")
    with pytest.raises(ValueError, match=match):
        Topology().load_areas_csv(path)


def test_area_row_without_id_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "areas.csv", "area_id,area_class,loss_lower,loss_upper\n,urban,0.0,0.05\n")
    with pytest.raises(ValueError):
        Topology().load_areas_csv(path)


@pytest.mark.parametrize(
    "rec",
    [
        MeterRecord("m-1", "A", Role.CUSTOMER, 1.0, "residential", True, EPOCH),
        MeterRecord("S.9:x", "B_2", Role.SUPPLY, 80.0, "supply", False, MOVE),
        MeterRecord(
            "c",
            "C",
            Role.CUSTOMER,
            0.5,
            "commercial",
            True,
            datetime(2026, 3, 1, 12, 0, 7, 250000, tzinfo=UTC),
        ),
    ],
)
def test_record_dict_round_trip(rec: MeterRecord) -> None:
    d = rec.to_dict()
    assert d["v"] == 1
    assert isinstance(d["effective_from"], str) and d["effective_from"].endswith("Z")
    assert d["role"] == rec.role.value
    assert MeterRecord.from_dict(d) == rec


def test_record_from_csv_strings_round_trip() -> None:
    rec = MeterRecord("m", "A", Role.SUPPLY, 40.0, "supply", False, MOVE)
    as_csv = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in rec.to_dict().items()}
    assert MeterRecord.from_dict(as_csv) == rec


def test_record_from_dict_zero_multiplier_raises() -> None:
    with pytest.raises(ValueError, match="multiplier"):
        MeterRecord.from_dict({"meter_id": "m", "area_id": "A", "multiplier": 0})


def test_record_requires_timezone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        MeterRecord("m", "A", Role.CUSTOMER, 1.0, "residential", True, datetime(2026, 1, 1))


def test_parse_time() -> None:
    assert parse_time("2026-01-01T08:00:00+08:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time("2026-01-01T00:00:00Z").tzinfo is UTC
    with pytest.raises(ValueError, match="no timezone"):
        parse_time("2026-01-01T00:00:00")


# ---- CSV as operators save it (archive_csv) ---------------------------------------------------

SAMPLE_ROWS = [
    ["SA", "A", "supply", "80", "supply", "true", "1970-01-01T00:00:00Z"],
    ["a1", "A", "customer", "1", "residential", "true", "1970-01-01T00:00:00Z"],
]


def _csv_bytes(delimiter: str, newline: str, bom: bool) -> bytes:
    lines = [METER_HEADER.strip().split(","), *SAMPLE_ROWS]
    text = "".join(delimiter.join(cells) + newline for cells in lines)
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


@pytest.mark.parametrize(
    ("delimiter", "newline", "bom", "dialect"),
    [
        (",", "\r\n", True, "delimiter ',', UTF-8 BOM, CRLF"),  # Excel's "CSV UTF-8"
        (";", "\r\n", False, "delimiter ';', CRLF"),  # Excel with a decimal comma
        ("\t", "\n", False, "delimiter tab"),
        (",", "\n", False, "delimiter ','"),
    ],
)
def test_meters_csv_as_excel_saves_it(
    tmp_path: Path, delimiter: str, newline: str, bom: bool, dialect: str
) -> None:
    path = tmp_path / "meters.csv"
    path.write_bytes(_csv_bytes(delimiter, newline, bom))
    records, table = read_meters(path)
    assert table.dialect() == dialect
    assert [(r.meter_id, r.role, r.multiplier) for r in records] == [
        ("SA", Role.SUPPLY, 80.0),
        ("a1", Role.CUSTOMER, 1.0),
    ]
    assert Topology().load_meters_csv(path) == 2


def test_header_names_tolerate_case_and_spaces_and_blank_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", " Meter_ID ; AREA_ID;Multiplier\n\nm1;A;2\n;;\n")
    records, _ = read_meters(path)
    assert [(r.meter_id, r.area_id, r.multiplier) for r in records] == [("m1", "A", 2.0)]


def test_blank_multiplier_is_an_error_not_one(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", METER_HEADER + "b1,B,customer,,residential,true,\n")
    with pytest.raises(CsvError, match=r"m\.csv: line 2: multiplier is blank"):
        Topology().load_meters_csv(path)


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff", "\ufeff\r\n"])
def test_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, "m.csv", text)
    with pytest.raises(CsvError, match="the file is empty"):
        Topology().load_meters_csv(path)


def test_header_without_rows_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", METER_HEADER)
    with pytest.raises(CsvError, match="no rows after the header"):
        Topology().load_meters_csv(path)


def test_every_bad_row_is_reported_with_its_line_and_nothing_applied(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.csv",
        METER_HEADER
        + "a1,A,customer,1,residential,true,1970-01-01T00:00:00Z\n"  # line 2: good
        + "a2,A,customer,,residential,true,1970-01-01T00:00:00Z\n"  # 3: blank multiplier
        + '"a\n3",A,customer,1,residential,true,1970-01-01T00:00:00Z\n'  # 4-5: quoted newline, good
        + "a4,A,boss,1,residential,true,1970-01-01T00:00:00Z\n"  # 6: bad role
        + "a5,A,customer,1\n"  # 7: too few cells
        + ",A,customer,1,residential,true,1970-01-01T00:00:00Z\n",  # 8: no meter id
    )
    topo = Topology()
    with pytest.raises(CsvError) as err:
        topo.load_meters_csv(path)
    assert [line for line, _ in err.value.problems] == [3, 6, 7, 8]
    text = str(err.value).splitlines()
    assert text[0] == f"{path}: 4 bad rows"
    assert text[1] == "  line 3: multiplier is blank: give the CT x PT ratio (1 for a direct meter)"
    assert text[3] == "  line 7: 4 cells, the header has 7"
    assert topo.meter_count() == 0


def test_area_with_one_bound_is_an_error(tmp_path: Path) -> None:
    text = "area_id;area_class;loss_lower;loss_upper\r\nA;urban;0.0;\r\nB;urban;;\r\n"
    path = write(tmp_path, "areas.csv", text)
    with pytest.raises(CsvError, match="line 2: loss_lower and loss_upper go together"):
        Topology().load_areas_csv(path)


def test_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(METER_HEADER.encode() + "a1,Área,customer,1,,,\n".encode("cp1252"))
    with pytest.raises(CsvError, match="not UTF-8"):
        read_meters(path)


# ---- the compact archive against record-by-record apply --------------------------------------

_T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
_HOUR_S = 3600.0


@st.composite
def _histories(draw: st.DrawFn) -> list[MeterRecord]:
    """Random archive records in topic order: few meters and areas, so that meters move,
    change role, multiplier and activity, and records replace others of the same start."""
    n = draw(st.integers(1, 40))
    out = []
    for _ in range(n):
        hour = draw(st.integers(-2, 6))
        out.append(
            MeterRecord(
                draw(st.sampled_from(["m1", "m2", "m3", "m4", "m5", "m6", "métre-7"])),
                draw(st.sampled_from(["A", "B", "C", "D"])),
                draw(st.sampled_from(list(Role))),
                draw(st.sampled_from([1.0, 0.5, 80.0, 1.1])),
                draw(st.sampled_from(["residential", "commercial"])),
                draw(st.booleans()),
                datetime.fromtimestamp(_T0 + hour * _HOUR_S, UTC),
            )
        )
    return out


def _applied(records: list[MeterRecord]) -> Topology:
    topo = Topology()
    for r in records:
        topo.apply(r)
    return topo


def _lookups(topo: Topology, meters: list[str]) -> list[object]:
    """Every lookup the engine, the models and the simulator make, at times around each
    record's start, asked in an order that exercises the member cache."""
    out: list[object] = []
    for hour in (-3, -2, -1.5, -1, 0, 0.5, 1, 2, 3, 4, 5, 6, 7, 2, -1):
        ts = _T0 + hour * _HOUR_S
        at = datetime.fromtimestamp(ts, UTC)
        for m in meters:
            out.append((m, hour, topo.meter_at(m, at), topo.meter_span_ts(m, ts), topo.placement_ts(m, ts)))
        for area in ("A", "B", "C", "D", "Z"):
            out.append((area, hour, topo.customer_meters(area, at), topo.supply_meters(area, at)))
    out.append(sorted((r.meter_id, r.effective_from) for r in topo.records()))
    out.append(sorted(topo.records(), key=lambda r: (r.meter_id, r.effective_from)))
    out.append((topo.meter_count(), [topo.knows(m) for m in meters]))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_histories(), st.integers(0, 40))
def test_compact_archive_answers_like_records_applied_one_by_one(
    records: list[MeterRecord], split: int
) -> None:
    meters = ["m1", "m2", "m3", "m4", "m5", "m6", "métre-7", "unknown"]
    expected = _lookups(_applied(records), meters)
    bulk = Topology()
    bulk.install(build_archive(records))
    assert _lookups(bulk, meters) == expected
    # Bulk-loaded first, the rest applied live (the topology feed after its start-up load).
    mixed = Topology()
    mixed.install(build_archive(records[:split]))
    for r in records[split:]:
        mixed.apply(r)
    assert _lookups(mixed, meters) == expected


@settings(max_examples=100, deadline=None)
@given(_histories(), st.sets(st.sampled_from(["A", "B", "C", "D"])))
def test_shard_holds_every_version_of_the_meters_of_its_areas(
    records: list[MeterRecord], kept: set[str]
) -> None:
    full = _applied(records)
    shard = Topology()
    shard.install(build_archive(records, keep_area=kept.__contains__))
    held = {r.meter_id for r in records if r.area_id in kept}
    assert shard.meter_count() == len(held)
    for m in {r.meter_id for r in records}:
        assert shard.knows(m) == (m in held)
        if m in held:  # a moved meter's readings may arrive under any of its areas
            for hour in (-3, -1, 0, 1, 3, 7):
                ts = _T0 + hour * _HOUR_S
                assert shard.meter_span_ts(m, ts) == full.meter_span_ts(m, ts)
    for area in kept:
        for hour in (-1, 0, 2, 7):
            at = datetime.fromtimestamp(_T0 + hour * _HOUR_S, UTC)
            assert shard.customer_meters(area, at) == full.customer_meters(area, at)
            assert shard.supply_meters(area, at) == full.supply_meters(area, at)


def test_archive_interns_meters_to_dense_indices() -> None:
    recs = [
        MeterRecord(f"m{i}", f"A{i % 3}", Role.CUSTOMER, 1.0, "residential", True, EPOCH) for i in range(1000)
    ]
    archive = build_archive(recs)
    ids = [f"m{i}" for i in range(1000)] + ["nope", ""]
    idx = archive.indices(ids)
    assert sorted(idx[:1000].tolist()) == list(range(1000))
    assert idx[1000:].tolist() == [-1, -1]
    assert [archive.index(m) for m in ids] == idx.tolist()
    assert [archive.meter_id(int(i)) for i in idx[:1000]] == ids[:1000]
    assert archive.area_ids[int(archive.area[archive.index("m4")])] == "A1"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 7), st.integers(0, 2)), min_size=2, max_size=200))
def test_rows_are_ordered_by_meter_start_and_topic_order_even_when_hash_prefixes_tie(
    rows: list[tuple[int, int, int]],
) -> None:
    # Hashes that differ only in their low bits, where the build packs the row number, so
    # the packed sort ties them and the exact order has to come from the tie-break.
    hashes = np.array([(0xABCD << 48) | (h << 1) | (h & 1) for h, _, _ in rows], dtype=np.uint64)
    starts = np.array([float(s) for _, s, _ in rows])
    seq = np.arange(len(rows), dtype=np.int64)
    order = _by_meter(hashes, starts, seq)
    assert order.tolist() == np.lexsort((seq, starts, hashes)).tolist()


def test_an_id_longer_than_a_byte_can_count_is_held_whole() -> None:
    # The topic caps ids at 64 characters, a meters CSV does not (and UTF-8 takes up to 4 bytes).
    long_id = "é" * 200  # 400 bytes
    recs = [MeterRecord(m, "A", Role.CUSTOMER, 1.0, "residential", True, EPOCH) for m in (long_id, "m1")]
    archive = build_archive(recs)
    assert archive.meter_id(archive.index(long_id)) == long_id
    assert archive.index("é" * 72) == -1  # the same first 144 bytes


def test_names_table_codes_every_name_and_refuses_others() -> None:
    from archive import Names

    ids = [f"A{a:07d}" for a in range(0, 30_000, 3)] + ["Zürich-7", ""]
    names = Names(ids)
    assert len(names) == len(ids) and list(names) == ids and names == ids
    assert [names.code(a) for a in ids] == list(range(len(ids)))
    assert names[-1] == "" and names[-2] == "Zürich-7" and names[1:3] == ids[1:3]
    assert names.code("A0000001") is None and names.code("A00000000") is None
    with pytest.raises(IndexError):
        names[len(ids)]
    assert Names([]).code("A") is None and len(Names([])) == 0
    assert names.name(5) is names.name(5) is names[5] and names.name(5) == ids[5]  # decoded once, kept


@pytest.mark.parametrize("keep", [None, "A"])
@pytest.mark.parametrize("same_length", [True, False])
def test_two_ids_with_one_hash_are_refused_not_merged(keep: str | None, same_length: bool) -> None:
    # Crafted hashes: "m2" (or "m22") shares "m1"'s; the build compares every held row of a
    # meter with the meter's id (its first held row in meter order) and names that id.
    from archive import ArchiveBuilder, HashCollision, code_columns

    other = "m2" if same_length else "m22"
    ids = ["x1", "m1", "x2", other, "m1"]
    chunk = code_columns(ids, ["A", "A", "B", "A", "B"], [False] * 5, [1.0] * 5, ["residential"] * 5,
                         [True] * 5, [0.0, 0.0, 0.0, 10.0, 20.0])
    chunk.hashes = chunk.hashes.copy()
    chunk.hashes[3] = chunk.hashes[1]
    builder = ArchiveBuilder(None if keep is None else keep.__eq__)
    builder.add_coded(chunk)
    with pytest.raises(HashCollision, match="^m1$"):
        builder.build()
    # The same records without the crafted hash build, a moved meter's ids compared equal.
    ok = ArchiveBuilder(None if keep is None else keep.__eq__)
    ok.add_coded(code_columns(ids, ["A", "A", "B", "A", "B"], [False] * 5, [1.0] * 5, ["residential"] * 5,
                              [True] * 5, [0.0, 0.0, 0.0, 10.0, 20.0]))
    archive = ok.build()
    assert archive.meter_id(archive.index("m1")) == "m1"
