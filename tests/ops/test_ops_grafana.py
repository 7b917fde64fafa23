"""Grafana provisioning: datasource, dashboard model, alert rules, contact point and policy."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from ops_support import DATASOURCE_UID, REPO, load_yaml, promql_names

PROVISIONING = REPO / "grafana" / "provisioning"
DURATION = re.compile(r"^(\d+[smhd])+$")


def test_the_datasource_has_the_fixed_uid() -> None:
    (ds,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert (ds["uid"], ds["type"], ds["access"]) == (DATASOURCE_UID, "prometheus", "proxy")
    assert ds["isDefault"] is True


def test_dashboards_come_from_a_file_provider() -> None:
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "gridwatch.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def test_dashboard_is_a_bare_model_with_unique_panel_ids(dashboard: dict[str, Any]) -> None:
    assert "dashboard" not in dashboard and "meta" not in dashboard, "export wrapper, not the model"
    assert dashboard["uid"] == "gridwatch-overview" and dashboard["title"]
    ids = [p["id"] for p in all_panels(dashboard["panels"])]
    assert ids and len(ids) == len(set(ids))
    assert all(isinstance(p.get("gridPos"), dict) for p in all_panels(dashboard["panels"]))


def test_every_panel_queries_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    data_panels = [p for p in all_panels(dashboard["panels"]) if p["type"] != "row"]
    assert len(data_panels) >= 10
    for panel in data_panels:
        assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert target["expr"].strip(), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_pass_rate_panel_draws_the_target_line(dashboard: dict[str, Any]) -> None:
    (panel,) = [p for p in dashboard["panels"] if p["type"] == "timeseries" and p["title"] == "Pass rate"]
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "line+area", "dashed"}
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, 0.995]
    assert panel["targets"][0]["expr"] == "gridwatch:pass_ratio"


# What the operators' view must show (issue 5): panel title -> a name its queries must select.
REQUIRED_PANELS = {
    "Pass rate": "gridwatch:pass_ratio",
    "Areas by state": "gridwatch:areas:sum",
    "Collection completeness": "gridwatch:collection_completeness_ratio",
    "Energy supplied vs billed (judged areas)": "gridwatch:window_supply_energy_kwh:sum",
    "Worst areas (highest loss rate, latest closed window)": "gridwatch_worst_area_loss_ratio",
    "Anomalies open by type": "gridwatch:anomalies_open:sum",
    "Alerts emitted by type": "gridwatch:alerts_emitted:rate5m",
    "Kafka records consumed": "gridwatch_messages_total",
    "Event-time lag": "gridwatch_event_time_lag_seconds",
    "Processing time per record": "gridwatch_processing_seconds_bucket",
    "Consumer lag": "gridwatch_consumer_lag_records",
}


@pytest.mark.parametrize("title", sorted(REQUIRED_PANELS))
def test_overview_has_the_operators_panels(dashboard: dict[str, Any], title: str) -> None:
    panels = [p for p in all_panels(dashboard["panels"]) if p["title"] == title and p["type"] != "row"]
    assert panels, f"no panel {title!r}"
    names = set().union(*(promql_names(t["expr"]) for p in panels for t in p["targets"]))
    assert REQUIRED_PANELS[title] in names, (title, sorted(names))


def test_consumer_lag_panel_draws_the_alert_threshold(dashboard: dict[str, Any]) -> None:
    (panel,) = [p for p in dashboard["panels"] if p["title"] == "Consumer lag"]
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, 100000]


def test_panels_are_laid_out_without_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, panel["title"]
        for y in range(g["y"], g["y"] + g["h"]):
            for x in range(g["x"], g["x"] + g["w"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def rules(alerting: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for group in alerting["groups"] for r in group["rules"]]


def test_alert_rules_are_complete(grafana_alerting: dict[str, Any]) -> None:
    assert grafana_alerting["apiVersion"] == 1
    all_rules = rules(grafana_alerting)
    assert {r["title"] for r in all_rules} >= {"Line-loss pass rate below 99.5%"}
    uids = [r["uid"] for r in all_rules]
    assert len(uids) == len(set(uids))
    for rule in all_rules:
        assert rule["title"] and rule["condition"], rule
        assert DURATION.match(rule["for"]), rule["for"]
        ref_ids = [d["refId"] for d in rule["data"]]
        assert rule["condition"] in ref_ids, rule["title"]
        assert len(ref_ids) == len(set(ref_ids)), rule["title"]
        for d in rule["data"]:
            assert d["datasourceUid"] in {DATASOURCE_UID, "__expr__"}, rule["title"]
            assert d["model"]["refId"] == d["refId"]
            if d["datasourceUid"] == "__expr__":
                assert d["model"]["expression"] in ref_ids, f"{rule['title']}: {d['refId']} reads nothing"
            else:
                assert d["model"]["expr"].strip()
        assert rule["labels"]["severity"] in {"page", "warning"}


def test_pass_rate_rule_is_below_99_5_for_5_minutes(grafana_alerting: dict[str, Any]) -> None:
    (rule,) = [r for r in rules(grafana_alerting) if r["uid"] == "gridwatch-pass-rate-low"]
    data = {d["refId"]: d["model"] for d in rule["data"]}
    condition = data[rule["condition"]]
    assert condition["type"] == "threshold"
    assert condition["conditions"][0]["evaluator"] == {"type": "lt", "params": [0.995]}
    assert (rule["for"], rule["labels"]["severity"]) == ("5m", "page")


def test_annotation_values_are_worded_for_resolved_notifications(grafana_alerting: dict[str, Any]) -> None:
    """Grafana re-expands annotations at the evaluation that resolves an alert: a value in the
    summary is "at this evaluation", never "is below" (which a resolved notification would contradict)."""
    for rule in rules(grafana_alerting):
        summary = rule["annotations"]["summary"]
        if ".Values" in summary:
            assert "at this evaluation" in summary, rule["title"]
            assert " is below" not in summary and " is above" not in summary, rule["title"]


def test_templates_cannot_be_eaten_by_env_interpolation(grafana_alerting: dict[str, Any]) -> None:
    """Grafana expands $NAME in provisioned labels (and, in some versions, annotations)."""
    for rule in rules(grafana_alerting):
        for text in [*rule["labels"].values(), *rule["annotations"].values()]:
            assert "$" not in text, f"{rule['title']}: use .Values / .Labels, not $values / $labels"


def test_contact_point_is_a_webhook_with_url_from_the_environment(grafana_alerting: dict[str, Any]) -> None:
    (point,) = grafana_alerting["contactPoints"]
    (receiver,) = point["receivers"]
    assert receiver["type"] == "webhook"
    assert receiver["settings"]["url"] == "$GRIDWATCH_DUTY_WEBHOOK_URL"
    assert receiver["disableResolveMessage"] is False


def policy_receivers(policy: dict[str, Any]) -> Iterator[str]:
    yield policy["receiver"]
    for route in policy.get("routes", []):
        yield from policy_receivers(route)


def test_notification_policy_sends_to_an_existing_contact_point(grafana_alerting: dict[str, Any]) -> None:
    points = {p["name"] for p in grafana_alerting["contactPoints"]}
    (policy,) = grafana_alerting["policies"]
    receivers = set(policy_receivers(policy))
    assert receivers and receivers <= points


PROVISIONING_FILES = sorted(str(p.relative_to(PROVISIONING)) for p in PROVISIONING.rglob("*.yml"))


@pytest.mark.parametrize("path", PROVISIONING_FILES)
def test_provisioning_files_declare_api_version_1(path: str) -> None:
    assert load_yaml(PROVISIONING / path)["apiVersion"] == 1
