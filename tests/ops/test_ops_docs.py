"""docs/metrics.md lists every metric, rule and alert (notify's own metrics: docs/notify.md);
docs/operations.md has every runbook."""

from __future__ import annotations

import re
from typing import Any

from ops_support import REPO, load_yaml, runbook_base
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from streams.metrics import Metrics, NotifyMetrics, StoreMetrics

METRICS_MD = (REPO / "docs" / "metrics.md").read_text()
OPERATIONS_MD = (REPO / "docs" / "operations.md").read_text()
NOTIFY_MD = (REPO / "docs" / "notify.md").read_text()
STORE_MD = (REPO / "docs" / "store.md").read_text()


def table_rows(markdown: str) -> dict[str, list[str]]:
    """First-column code name -> cells, for every table row that starts with `name`."""
    rows = {}
    for line in markdown.splitlines():
        m = re.match(r"\| `([^`]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    """{exposed name: (type, label names)} straight from streams.metrics (worker, notify, store)."""
    out = {}
    classes = (Metrics, NotifyMetrics, StoreMetrics)
    metrics = [m for cls in classes for m in vars(cls(CollectorRegistry())).values()]
    for metric in metrics:
        if isinstance(metric, MetricWrapperBase):
            (family,) = metric.describe()
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = (family.type, tuple(metric._labelnames))  # no public accessor for labels
    return out


def test_every_metric_is_documented_with_type_and_labels() -> None:
    rows = table_rows(METRICS_MD) | table_rows(NOTIFY_MD) | table_rows(STORE_MD)
    metrics = exported()
    assert "gridwatch_areas_judged" in metrics and len(metrics) > 10  # the discovery found them
    for name, (kind, labels) in metrics.items():
        assert name in rows, f"{name} missing from docs/metrics.md"
        doc_type, doc_labels = rows[name][0], rows[name][1]
        assert doc_type == kind, name
        assert set(re.findall(r"`(\w+)`", doc_labels)) == set(labels), name
        assert rows[name][2] and rows[name][3], f"{name}: meaning and unit"


def test_no_documented_metric_is_invented() -> None:
    rows = table_rows(METRICS_MD) | table_rows(NOTIFY_MD) | table_rows(STORE_MD)
    documented = {n for n in rows if n.startswith("gridwatch_")}
    assert documented == set(exported())


def test_every_rule_is_documented(rules_doc: dict[str, Any]) -> None:
    rows = table_rows(METRICS_MD)
    for group in rules_doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            assert name in rows, f"{name} missing from docs/metrics.md"
            if "alert" in rule:
                assert rows[name][1:] == [rule.get("for", "-"), rule["labels"]["severity"]], name


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_runbook_section(rules_doc: dict[str, Any]) -> None:
    """runbook_url: absolute (a link in any receiver), one base for all, an existing section."""
    anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", OPERATIONS_MD, flags=re.M)}
    alerts = [r for g in rules_doc["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 14
    for rule in alerts:
        assert "runbook" not in rule["annotations"], rule["alert"]
        base, anchor = rule["annotations"]["runbook_url"].split("#")
        assert base == runbook_base(), rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]


def test_the_promtool_tests_expect_the_same_runbook_base() -> None:
    for path in (REPO / "prometheus" / "tests").glob("*.yml"):
        bases = set(re.findall(r"runbook_url: (\S+)#", path.read_text()))
        assert bases <= {runbook_base()}, path


def test_operations_names_the_webhook_urls_that_are_configured() -> None:
    for config in ("alertmanager/alertmanager.yml", "alertmanager/alertmanager.compose.yml"):
        for receiver in load_yaml(REPO / config)["receivers"]:
            assert receiver["webhook_configs"][0]["url"] in OPERATIONS_MD, (config, receiver["name"])
    assert "GRIDWATCH_DUTY_WEBHOOK_URL" in OPERATIONS_MD
