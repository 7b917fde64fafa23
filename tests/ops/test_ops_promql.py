"""Every PromQL expression (rules, dashboard panels and annotations) parses and uses real metric names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ops_support import PROMETHEUS_BUILTINS, promql_names
from ruamel.yaml import YAML


def rule_exprs(rules_doc: dict[str, Any]) -> dict[str, str]:
    return {r.get("record") or r["alert"]: r["expr"] for g in rules_doc["groups"] for r in g["rules"]}


def dashboard_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    out = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out[f"{panel['title']} / {target['refId']}"] = target["expr"]
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("expr"):
            out[f"annotation {annotation['name']}"] = annotation["expr"]
    return out


def test_name_extraction_sees_through_promql_syntax() -> None:
    expr = (
        'sum by (le) (rate(gridwatch_processing_seconds_bucket{job="a", le=~"0.1|inf"}[$__rate_interval]))'
        ' / on () group_left () gridwatch:areas_judged:sum and up == bool 1e-9'
        ' or label_replace(vector(0), "dst", "$1", "src", "(.*)") unless inventedname offset 5m'
    )
    assert promql_names(expr) == {
        "gridwatch_processing_seconds_bucket",
        "gridwatch:areas_judged:sum",
        "up",
        "inventedname",
    }


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_expressions_use_only_exported_or_recorded_names(
    source: str,
    rules_doc: dict[str, Any],
    dashboard: dict[str, Any],
    exported_names: frozenset[str],
    recorded_names: frozenset[str],
) -> None:
    exprs = {"rules": rule_exprs(rules_doc), "dashboard": dashboard_exprs(dashboard)}[source]
    known = exported_names | recorded_names | PROMETHEUS_BUILTINS
    assert exprs
    unknown = {where: sorted(promql_names(e) - known) for where, e in exprs.items()}
    assert {w: n for w, n in unknown.items() if n} == {}
    # Only the watchdog selects nothing: it fires always, by design.
    empty = {w for w, e in exprs.items() if not promql_names(e)}
    assert empty <= {"GridwatchWatchdog"}, f"expressions selecting nothing: {empty}"


def test_recording_rules_follow_the_naming_convention(recorded_names: frozenset[str]) -> None:
    for name in recorded_names:
        assert re.fullmatch(r"gridwatch:[a-z0-9_]+(:[a-z0-9_]+)?", name), name


def test_pass_ratio_is_a_ratio_of_sums(rules_doc: dict[str, Any]) -> None:
    exprs = rule_exprs(rules_doc)
    assert exprs["gridwatch:areas_qualified:sum"].startswith("sum(gridwatch_areas_qualified ")
    assert exprs["gridwatch:areas_judged:sum"].startswith("sum(gridwatch_areas_judged ")
    assert exprs["gridwatch:pass_ratio"] == "gridwatch:areas_qualified:sum / (gridwatch:areas_judged:sum > 0)"
    for name, expr in exprs.items():
        assert "avg" not in expr, f"{name} averages"


def test_completeness_and_class_pass_ratio_are_ratios_of_sums(rules_doc: dict[str, Any]) -> None:
    exprs = rule_exprs(rules_doc)
    current = "and on (job, instance) gridwatch:latest_window_start_seconds:current"
    for part in ("reported", "expected"):
        expected = f"sum(gridwatch_customer_meters_{part} {current})"
        assert exprs[f"gridwatch:customer_meters_{part}:sum"] == expected
    assert exprs["gridwatch:collection_completeness_ratio"] == (
        "gridwatch:customer_meters_reported:sum / (gridwatch:customer_meters_expected:sum > 0)")
    assert exprs["gridwatch:pass_ratio_by_class"] == (
        "gridwatch:areas_qualified_by_class:sum / (gridwatch:areas_judged_by_class:sum > 0)")
    for name, expr in exprs.items():
        assert "gridwatch_collection_completeness_ratio" not in expr, f"{name} aggregates worker ratios"
        assert "min(" not in expr, f"{name} takes a minimum over workers"


def test_dashboard_expressions_parse(tmp_path: Path, promtool: str, dashboard: dict[str, Any]) -> None:
    """Wrapped as recording rules so promtool's parser checks them ($__ variables replaced)."""
    exprs = list(dashboard_exprs(dashboard).values())
    rules = [
        {"record": f"check:expr_{i}", "expr": re.sub(r"\$__\w+", "5m", e)} for i, e in enumerate(exprs)
    ]
    path = tmp_path / "exprs.rules.yml"
    YAML(typ="safe", pure=True).dump({"groups": [{"name": "check", "rules": rules}]}, path)
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def test_prometheus_annotation_values_suit_resolved_notifications(rules_doc: dict[str, Any]) -> None:
    """Prometheus never re-expands the annotations of a resolved alert: its notification repeats the
    last firing value, so a summary with a value calls it the last value beyond the threshold."""
    for name, rule in ((r["alert"], r) for g in rules_doc["groups"] for r in g["rules"] if "alert" in r):
        summary = rule["annotations"]["summary"]
        if "$value" in summary:
            assert "(last value below it: " in summary or "(last value above it: " in summary, name
            assert " is below" not in summary and " is above" not in summary, name
