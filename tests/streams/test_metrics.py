"""Metrics are built on an injected registry and read back: pass rate, its numerator and
denominator, per-class counts, and a top-k of worst areas that stays bounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from models.lineloss import LossResult, LossState
from streams.metrics import Metrics


def result(area: str, state: LossState, loss_rate: float | None, cls: str = "urban") -> LossResult:
    return LossResult(
        area,
        cls,
        0,
        900,
        state,
        100.0,
        100.0 * (1 - (loss_rate or 0)),
        0.0,
        loss_rate,
        0.99,
        100,
        99,
        1,
        1,
        -0.01,
        0.07,
        0,
    )


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_observe_window_sets_pass_rate_numerator_and_denominator() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, top_k=2)
    results = [
        result("A", LossState.QUALIFIED, 0.03),
        result("B", LossState.QUALIFIED, 0.05, "rural"),
        result("C", LossState.HIGH_LOSS, 0.20),
        result("D", LossState.NEGATIVE_LOSS, -0.05, "rural"),
        result("E", LossState.INCOMPLETE, None),
    ]
    m.observe_window(900, results)
    assert value(reg, "gridwatch_areas_qualified") == 2
    assert value(reg, "gridwatch_areas_judged") == 4  # incomplete is not judged
    assert value(reg, "gridwatch_pass_ratio") == 0.5
    assert value(reg, "gridwatch_areas", state="incomplete") == 1
    assert value(reg, "gridwatch_areas_judged_by_class", area_class="rural") == 2
    assert value(reg, "gridwatch_areas_qualified_by_class", area_class="rural") == 1
    assert value(reg, "gridwatch_customer_meters_expected") == 500
    assert value(reg, "gridwatch_customer_meters_reported") == 495
    assert value(reg, "gridwatch_collection_completeness_ratio") == 0.99
    # top-k: the two highest loss rates, nothing else
    assert (
        value(reg, "gridwatch_worst_area_loss_ratio", area_id="C", area_class="urban", state="high_loss")
        == 0.20
    )
    assert (
        value(reg, "gridwatch_worst_area_loss_ratio", area_id="B", area_class="rural", state="qualified")
        == 0.05
    )
    assert (
        value(reg, "gridwatch_worst_area_loss_ratio", area_id="A", area_class="urban", state="qualified")
        is None
    )


def test_worst_areas_are_replaced_each_window() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg, top_k=1)
    m.observe_window(0, [result("A", LossState.HIGH_LOSS, 0.3)])
    m.observe_window(900, [result("B", LossState.HIGH_LOSS, 0.2)])
    assert (
        value(reg, "gridwatch_worst_area_loss_ratio", area_id="A", area_class="urban", state="high_loss")
        is None
    )
    assert (
        value(reg, "gridwatch_worst_area_loss_ratio", area_id="B", area_class="urban", state="high_loss")
        == 0.2
    )

