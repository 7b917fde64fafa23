"""Alert book: one open alert per (entity, type), no storms, resolve on clear, restart-safe."""

from __future__ import annotations

import json

from models.alerts import AlertBook, Observed
from models.area_anomaly import AreaEvent
from models.meter_anomaly import MeterEvent


def meter(entity: str, kind: str, firing: bool, score: float = 1.0) -> Observed:
    return Observed("meter", entity, MeterEvent(0, kind, score, firing, {"energy_kwh": 0.0}))


def test_open_once_then_resolve() -> None:
    book = AlertBook()
    (rec,) = book.observe([meter("M1", "drop", True, 1.2)], 900)
    assert rec["event"] == "opened" and rec["type"] == "meter_consumption_drop"
    assert rec["severity"] == "page" and rec["entity_kind"] == "meter" and rec["entity_id"] == "M1"
    assert rec["window_start"] == rec["at"] == "1970-01-01T00:15:00Z"
    # repeated detections of the open alert: nothing (no storm), but the score is kept
    for ts in range(1800, 90000, 900):
        assert book.observe([meter("M1", "drop", True, 3.0)], ts) == []
    (res,) = book.observe([meter("M1", "drop", False)], 90000)
    assert res["event"] == "resolved" and res["id"] == rec["id"] and res["score"] == 3.0
    assert res["window_end"] == "1970-01-02T01:00:00Z"
    assert book.open == {}


def test_one_alert_per_entity_and_type() -> None:
    book = AlertBook()
    recs = book.observe(
        [
            meter("M1", "drop", True),
            meter("M1", "zero", True),
            meter("M2", "drop", True),
            meter("M1", "drop", True),
        ],
        900,
    )
    assert [(r["entity_id"], r["type"]) for r in recs] == [
        ("M1", "meter_consumption_drop"),
        ("M1", "meter_zero_consumption"),
        ("M2", "meter_consumption_drop"),
    ]
    area = Observed("area", "M1", AreaEvent("M1", "high_loss", 0.1, True, {}))
    assert [r["type"] for r in book.observe([area], 1800)] == ["area_high_loss"]  # another kind


def test_clear_without_open_alert_emits_nothing() -> None:
    assert AlertBook().observe([meter("M1", "spike", False)], 900) == []


def test_reopen_after_resolve_gets_a_new_id() -> None:
    book = AlertBook()
    a = book.observe([meter("M1", "spike", True)], 900)[0]["id"]
    book.observe([meter("M1", "spike", False)], 1800)
    b = book.observe([meter("M1", "spike", True)], 2700)[0]["id"]
    assert a != b


def test_snapshot_is_json_and_survives_a_restart() -> None:
    book = AlertBook()
    book.observe([meter("M1", "drop", True, 2.0), meter("M2", "zero", True)], 900)
    restored = AlertBook.restore(json.loads(json.dumps(book.snapshot())))
    assert restored.observe([meter("M1", "drop", True)], 1800) == []  # still open: no re-page
    (res,) = restored.observe([meter("M2", "zero", False)], 2700)
    assert res["event"] == "resolved" and res["window_start"] == "1970-01-01T00:15:00Z"
    assert restored.snapshot()["open"] == [o for o in book.snapshot()["open"] if o["entity"] == "M1"]


def test_records_follow_the_alert_contract() -> None:
    jsonschema = __import__("pytest").importorskip("jsonschema")
    from pathlib import Path

    schema = json.loads(Path("docs/contracts/alert.v1.schema.json").read_text())
    book = AlertBook()
    recs = book.observe([meter("M1", "drop", True)], 900) + book.observe([meter("M1", "drop", False)], 1800)
    for rec in recs:
        jsonschema.validate(rec, schema)
