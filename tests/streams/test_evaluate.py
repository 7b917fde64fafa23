"""Detection harness: the detectors over a small simulated city, scored against its labels."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from simulator.anomalies import AnomalySpec
from simulator.synth import SimSpec
from streams.evaluate import evaluate, score

T0 = 1767225600


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _rec(kind: str, entity: str, dtype: str, ts: int) -> dict[str, Any]:
    return {
        "event": "opened",
        "entity_kind": kind,
        "entity_id": entity,
        "id": f"{kind}:{entity}:{dtype}:{ts}",
        "at": _iso(ts),
    }


def _label(entity: str, kind: str, first: int, last: int, **params: float) -> dict[str, Any]:
    return {
        "entity": entity,
        "type": kind,
        "start": _iso(T0 + (first - 1) * 900),
        "end": _iso(T0 + last * 900),
        "area_id": "A0",
        "role": "customer",
        "parameters": dict(params),
    }


def test_score_matches_alerts_to_labels() -> None:
    labels = [_label("M1", "stopped", 200, 400), _label("M2", "theft_h1", 300, 900, share=0.5)]
    records = [
        _rec("meter", "M1", "zero", T0 + 203 * 900),  # 4 intervals after the start
        _rec("meter", "M2", "drop", T0 + 340 * 900),
        _rec("meter", "M3", "drop", T0 + 500 * 900),  # nobody's label: false
        _rec("meter", "M1", "zero", T0 + 100 * 900),  # before M1's label: false
    ]
    out = score(labels, records, t0=T0, interval_s=900, meters=100, areas=1, days=10, warmup=96)
    assert out["by_type"]["stopped"]["median_delay_intervals"] == 4
    assert out["by_type"]["stopped"]["recall_within_bar"] == 1.0
    assert out["by_type"]["theft_h1"]["median_delay_intervals"] == 41
    assert out["by_type"]["theft_h1"]["precision"] == 0.5  # of 2 drop alerts, 1 is true
    assert out["false_alerts"] == 2
    assert out["false_alerts_per_1000_meter_days"] == pytest.approx(2.0)


@pytest.fixture(scope="module")
def small_city() -> dict[str, Any]:
    counts = {"stopped": 3, "theft_h1": 3, "theft_h2": 2, "spike": 2, "rollback": 2, "concentrator_outage": 1}
    spec = SimSpec(seed=11, areas=8, days=5, anomalies=AnomalySpec.only(counts, theft_share=0.6))
    return evaluate(spec)


def test_evaluate_small_city(small_city: dict[str, Any]) -> None:
    out = small_city
    json.dumps(out)  # JSON-able
    for key in ("meters", "days", "by_type", "false_alerts_per_1000_meter_days", "state_bytes_per_meter"):
        assert key in out
    by_type = out["by_type"]
    assert isinstance(by_type, dict)
    for t in ("stopped", "theft_h2", "spike", "rollback", "concentrator_outage"):
        entry = by_type[t]
        assert entry["recall"] in (None, 1.0), (t, entry)
        assert {"precision", "recall", "f1", "median_delay_intervals"} <= set(entry)
    assert by_type["stopped"]["median_delay_intervals"] in (None, 4.0)
    assert out["state_bytes_per_meter"] <= 64


def test_clean_city_raises_no_meter_alerts() -> None:
    out = evaluate(SimSpec(seed=4, areas=6, days=4, anomalies=AnomalySpec.only({})))
    assert out["false_alerts_per_1000_meter_days"] <= 1.0
    assert out["by_type"] == {}
