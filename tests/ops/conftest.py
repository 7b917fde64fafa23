"""Fixtures for tests/ops: parsed configs, metric and rule names, promtool and amtool."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest
from ops_support import REPO, load_compose, load_yaml, metric_families


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with only the required variables set (defaults applied)."""
    return load_compose()


@pytest.fixture(scope="session")
def rules_doc() -> dict[str, Any]:
    doc = load_yaml(REPO / "prometheus" / "rules" / "gridwatch.rules.yml")
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="session")
def grafana_alerting() -> dict[str, Any]:
    doc = load_yaml(REPO / "grafana" / "provisioning" / "alerting" / "gridwatch.yml")
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    doc = json.loads((REPO / "grafana" / "dashboards" / "gridwatch-overview.json").read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="session")
def exported_names() -> frozenset[str]:
    """Every series name the workers can expose (labelled metrics have no sample until first
    use, so the names are derived from each family's type, as the exposition format does)."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"],
                "summary": ["", "_count", "_sum"]}
    names = set()
    for family, kind in metric_families().items():
        names.update(family + s for s in suffixes[kind])
    return frozenset(names)


@pytest.fixture(scope="session")
def recorded_names(rules_doc: dict[str, Any]) -> frozenset[str]:
    return frozenset(r["record"] for g in rules_doc["groups"] for r in g["rules"] if "record" in r)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: scripts/setup.sh installs it (apt)")
        pytest.skip(f"{name} not installed here (bash scripts/setup.sh installs it)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _tool("amtool")
