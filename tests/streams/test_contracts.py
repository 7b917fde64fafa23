"""Unit tests for streams/contracts.py: decoding, refusal reasons, dead letters and JSON Schemas."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import msgspec
import pytest

from streams.contracts import (
    DeadLetter,
    DecodedBatch,
    InvalidRecord,
    Reading,
    check_time,
    dead_letter,
    decode_readings,
    json_schemas,
)

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "contracts"
TS = "2026-01-01T00:15:00Z"
TS_DT = datetime(2026, 1, 1, 0, 15, tzinfo=UTC)


def reading(**over: object) -> dict[str, object]:
    msg: dict[str, object] = {
        "kind": "reading",
        "v": 1,
        "area_id": "A1",
        "meter_id": "m1",
        "ts": TS,
        "register_kwh": 12.5,
    }
    msg.update(over)
    return {k: v for k, v in msg.items() if v is not ...}


def batch(items: list[dict[str, object]], **over: object) -> dict[str, object]:
    msg: dict[str, object] = {"kind": "batch", "v": 1, "area_id": "A1", "ts": TS, "readings": items}
    msg.update(over)
    return {k: v for k, v in msg.items() if v is not ...}


def enc(obj: object) -> bytes:
    return json.dumps(obj).encode()


def refused_reason(raw: bytes) -> str:
    with pytest.raises(InvalidRecord) as info:
        decode_readings(raw)
    assert str(info.value).startswith(info.value.reason + ": ")
    return info.value.reason


# ---- valid -----------------------------------------------------------------------------------


def test_single_reading() -> None:
    msg = decode_readings(enc(reading(flags=["est"], voltage_v=229.5, current_a=-1.5)))
    assert isinstance(msg, Reading)
    assert (msg.area_id, msg.meter_id, msg.register_kwh, msg.energy_kwh) == ("A1", "m1", 12.5, None)
    assert msg.ts == TS_DT
    assert msg.flags == ["est"]
    assert (msg.voltage_v, msg.current_a) == (229.5, -1.5)


def test_single_reading_offset_normalises_instant() -> None:
    msg = decode_readings(enc(reading(ts="2026-01-01T08:15:00+08:00")))
    assert msg.ts == TS_DT


def test_energy_only_reading() -> None:
    msg = decode_readings(enc(reading(register_kwh=..., energy_kwh=0.0)))
    assert isinstance(msg, Reading)
    assert (msg.register_kwh, msg.energy_kwh) == (None, 0.0)


def test_batch() -> None:
    items = [
        {"meter_id": "m1", "register_kwh": 1.0},
        {"meter_id": "m2", "energy_kwh": 0.25},
        {"meter_id": "m3", "register_kwh": 3.0, "energy_kwh": 0.5},
    ]
    out = decode_readings(enc(batch(items)))
    assert isinstance(out, DecodedBatch)
    assert (out.area_id, out.ts) == ("A1", TS_DT)
    assert [(v.meter_id, v.register_kwh, v.energy_kwh) for v in out.values] == [
        ("m1", 1.0, None),
        ("m2", None, 0.25),
        ("m3", 3.0, 0.5),
    ]
    assert out.refused == []


# ---- invalid single readings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"{not json", "json"),
        (b'{"kind":"reading"', "json"),
        # JSON has no NaN literal: a producer writing NaN sends malformed JSON.
        (
            b'{"kind":"reading","area_id":"A1","meter_id":"m1","ts":"'
            + TS.encode()
            + b'","register_kwh":NaN}',
            "json",
        ),
        # 1e400 overflows to inf; the le bound refuses it.
        (
            b'{"kind":"reading","area_id":"A1","meter_id":"m1","ts":"'
            + TS.encode()
            + b'","register_kwh":1e400}',
            "schema",
        ),
        (
            b'{"kind":"reading","area_id":"A1","meter_id":"m1","ts":"'
            + TS.encode()
            + b'","energy_kwh":1e400}',
            "schema",
        ),
        (
            b'{"kind":"reading","area_id":"A1","meter_id":"m1","ts":"'
            + TS.encode()
            + b'","energy_kwh":-1e400}',
            "schema",
        ),
    ],
)
def test_raw_refusals(raw: bytes | None, reason: str) -> None:
    assert refused_reason(raw) == reason  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("over", "reason", "needle"),
    [
        ({"ts": ...}, "schema", "`ts`"),
        ({"area_id": ...}, "schema", "`area_id`"),
        ({"meter_id": ...}, "schema", "`meter_id`"),
        ({"kind": ...}, "schema", "`kind`"),
        ({"kind": "curve"}, "schema", "kind"),
        ({"v": 2}, "schema", "$.v"),
        ({"register_kwh": "12.5"}, "schema", "$.register_kwh"),
        ({"register_kwh": True}, "schema", "$.register_kwh"),
        ({"meter_id": 17}, "schema", "$.meter_id"),
        ({"meter_id": ""}, "schema", "$.meter_id"),
        ({"meter_id": "m 1"}, "schema", "$.meter_id"),
        ({"area_id": "A~1"}, "schema", "$.area_id"),
        ({"ts": "2026-01-01T00:15:00"}, "schema", "$.ts"),  # naive: no offset
        ({"ts": "yesterday"}, "schema", "$.ts"),
        ({"register_kwh": -0.01}, "schema", "$.register_kwh"),
        ({"register_kwh": ..., "energy_kwh": -1}, "schema", "$.energy_kwh"),
        ({"register_kwh": 2e10}, "schema", "$.register_kwh"),
        ({"voltage_v": -1}, "schema", "$.voltage_v"),
        ({"extra": 1}, "schema", "`extra`"),
        ({"flags": ["x" * 33]}, "schema", "$.flags"),
        ({"register_kwh": ...}, "no_energy", "neither"),
        ({"register_kwh": None, "energy_kwh": None}, "no_energy", "neither"),
    ],
)
def test_reading_refusals(over: dict[str, object], reason: str, needle: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        decode_readings(enc(reading(**over)))
    assert info.value.reason == reason
    assert needle in info.value.detail


def test_invalid_record_is_value_error() -> None:
    with pytest.raises(ValueError):
        decode_readings(b"[]")


# ---- batches ---------------------------------------------------------------------------------


def test_batch_repeat_first_counts() -> None:
    items = [
        {"meter_id": "m1", "register_kwh": 1.0},
        {"meter_id": "m2", "register_kwh": 2.0},
        {"meter_id": "m1", "register_kwh": 9.0},
    ]
    out = decode_readings(enc(batch(items)))
    assert isinstance(out, DecodedBatch)
    assert [(v.meter_id, v.register_kwh) for v in out.values] == [("m1", 1.0), ("m2", 2.0)]
    assert len(out.refused) == 1
    r = out.refused[0]
    assert (r.item, r.error.reason, r.meter_id) == (2, "batch_repeat", "m1")
    assert json.loads(r.raw) == items[2]


@pytest.mark.parametrize(
    ("bad", "reason", "meter_id"),
    [
        ({"meter_id": "m2", "energy_kwh": -1}, "schema", None),
        ({"meter_id": "m2", "register_kwh": 1, "bogus": 0}, "schema", None),
        ({"register_kwh": 1}, "schema", None),
        ({"meter_id": "m2", "register_kwh": "1"}, "schema", None),
        ({"meter_id": "m2"}, "no_energy", "m2"),
        ("not an object", "schema", None),
    ],
)
def test_batch_bad_item_refused_alone(bad: object, reason: str, meter_id: str | None) -> None:
    items = [{"meter_id": "m1", "register_kwh": 1.0}, bad, {"meter_id": "m3", "energy_kwh": 0.5}]
    out = decode_readings(enc(batch(items)))  # type: ignore[arg-type]
    assert isinstance(out, DecodedBatch)
    assert [v.meter_id for v in out.values] == ["m1", "m3"]
    assert [(r.item, r.error.reason, r.meter_id) for r in out.refused] == [(1, reason, meter_id)]
    assert json.loads(out.refused[0].raw) == bad


def test_batch_item_overflowing_to_inf_refused_alone() -> None:
    raw = (
        b'{"kind":"batch","area_id":"A1","ts":"' + TS.encode() + b'","readings":['
        b'{"meter_id":"m1","register_kwh":1e400},{"meter_id":"m2","register_kwh":1.0}]}'
    )
    out = decode_readings(raw)
    assert isinstance(out, DecodedBatch)
    assert [v.meter_id for v in out.values] == ["m2"]
    assert [(r.item, r.error.reason) for r in out.refused] == [(0, "schema")]
    assert out.refused[0].raw == b'{"meter_id":"m1","register_kwh":1e400}'


@pytest.mark.parametrize(
    "over",
    [
        {"ts": ...},
        {"area_id": ...},
        {"readings": []},
        {"readings": ...},
        {"extra": True},
        {"ts": "2026-01-01T00:15:00"},
    ],
)
def test_batch_level_errors_refuse_whole_batch(over: dict[str, object]) -> None:
    raw = enc(batch([{"meter_id": "m1", "register_kwh": 1.0}], **over))
    assert refused_reason(raw) == "schema"


def test_batch_all_items_bad_still_decodes() -> None:
    out = decode_readings(enc(batch([{"meter_id": "m1"}, {"meter_id": "m2", "energy_kwh": -2}])))
    assert isinstance(out, DecodedBatch)
    assert out.values == []
    assert [r.error.reason for r in out.refused] == ["no_energy", "schema"]


# ---- check_time ------------------------------------------------------------------------------


NOW = datetime(2026, 2, 1, tzinfo=UTC)
PAST = timedelta(days=35)
FUTURE = timedelta(hours=1)


def test_check_time_window_inclusive() -> None:
    check_time(NOW, NOW, max_past=PAST, max_future=FUTURE)
    check_time(NOW - PAST, NOW, max_past=PAST, max_future=FUTURE)
    check_time(NOW + FUTURE, NOW, max_past=PAST, max_future=FUTURE)


def test_check_time_too_old() -> None:
    with pytest.raises(InvalidRecord) as info:
        check_time(NOW - PAST - timedelta(seconds=1), NOW, max_past=PAST, max_future=FUTURE)
    assert info.value.reason == "too_old"


def test_check_time_future() -> None:
    with pytest.raises(InvalidRecord) as info:
        check_time(NOW + FUTURE + timedelta(seconds=1), NOW, max_past=PAST, max_future=FUTURE)
    assert info.value.reason == "future"


# ---- dead letters ----------------------------------------------------------------------------


def test_dead_letter_keeps_bytes_and_position() -> None:
    original = b'{"kind":"reading","register_kwh":NaN}\xff\x00'
    raw = dead_letter(
        reason="json",
        detail="JSON is malformed",
        topic="gridwatch.readings",
        partition=3,
        offset=12345,
        key=b"A1",
        value=original,
        item=4,
        meter_id="m9",
        now=datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
    )
    dl = msgspec.json.decode(raw, type=DeadLetter)
    assert base64.b64decode(dl.value_b64) == original
    assert dl.key_b64 is not None and base64.b64decode(dl.key_b64) == b"A1"
    assert (dl.source.topic, dl.source.partition, dl.source.offset) == ("gridwatch.readings", 3, 12345)
    assert (dl.reason, dl.detail, dl.item, dl.meter_id) == ("json", "JSON is malformed", 4, "m9")
    assert dl.at == "2026-01-01T01:00:00Z"
    assert dl.v == 1


def test_dead_letter_without_key_or_value() -> None:
    raw = dead_letter(
        reason="empty", detail="x" * 5000, topic="t", partition=0, offset=0, key=None, value=None
    )
    d = json.loads(raw)
    assert d["value_b64"] == ""
    assert "key_b64" not in d and "item" not in d  # omitted defaults
    assert len(d["detail"]) == 2000
    assert datetime.fromisoformat(d["at"].replace("Z", "+00:00")).tzinfo is not None


def test_dead_letter_matches_committed_schema() -> None:
    schema = json.loads((CONTRACTS_DIR / "deadletter.v1.schema.json").read_text())
    raw = dead_letter(reason="schema", detail="d", topic="t", partition=1, offset=2, key=b"k", value=b"v")
    jsonschema.Draft202012Validator(schema).validate(json.loads(raw))


# ---- JSON Schemas ----------------------------------------------------------------------------


def test_committed_schemas_equal_generated() -> None:
    generated = json_schemas()
    committed = {p.name: json.loads(p.read_text()) for p in CONTRACTS_DIR.glob("*.json")}
    assert set(committed) == set(generated)
    for name, schema in generated.items():
        # Round trip through JSON so tuples and lists compare alike.
        assert committed[name] == json.loads(json.dumps(schema)), name


@pytest.fixture(scope="module")
def reading_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((CONTRACTS_DIR / "reading.v1.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize(
    "msg",
    [
        reading(),
        reading(register_kwh=..., energy_kwh=0.5, flags=["est"]),
        batch([{"meter_id": "m1", "register_kwh": 1.0}, {"meter_id": "m2", "energy_kwh": 0.5}]),
    ],
)
def test_schema_accepts_valid(reading_validator: jsonschema.Draft202012Validator, msg: dict) -> None:
    reading_validator.validate(msg)
    assert not gridwatch_refuses(msg)  # and gridwatch agrees


@pytest.mark.parametrize(
    "msg",
    [
        reading(energy_kwh=-1),
        reading(extra=1),
        reading(kind="curve"),
        reading(meter_id=""),
        reading(v=2),
        batch([]),
        batch([{"meter_id": "m1", "register_kwh": 1.0, "bogus": 1}]),
        batch([{"meter_id": "m1", "register_kwh": 1.0}], ts=...),
    ],
)
def test_schema_rejects_invalid(reading_validator: jsonschema.Draft202012Validator, msg: dict) -> None:
    assert not reading_validator.is_valid(msg)
    assert gridwatch_refuses(msg)  # and gridwatch agrees


def gridwatch_refuses(msg: dict) -> bool:
    """True if decoding refuses the message or (for a batch) any of its items."""
    try:
        out = decode_readings(enc(msg))
    except InvalidRecord:
        return True
    return isinstance(out, DecodedBatch) and bool(out.refused)


@pytest.mark.parametrize("missing", ["ts", "area_id"])
def test_schema_requires_what_decoder_requires(
    reading_validator: jsonschema.Draft202012Validator, missing: str
) -> None:
    msg = reading(**{missing: ...})
    with pytest.raises(InvalidRecord):
        decode_readings(enc(msg))
    assert not reading_validator.is_valid(msg)
