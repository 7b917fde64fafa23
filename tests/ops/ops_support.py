"""Helpers for tests/ops: paths, YAML, compose interpolation, metric and PromQL names."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from ruamel.yaml import YAML

from streams.metrics import Metrics, NotifyMetrics, StoreMetrics

REPO = Path(__file__).resolve().parents[2]
DATASOURCE_UID = "gridwatch-prometheus"
# Series Prometheus itself makes: `up` per scrape target, `ALERTS` per pending or firing alert.
PROMETHEUS_BUILTINS = frozenset({"up", "ALERTS"})
def load_yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text())


class ComposeVariableMissing(ValueError):
    """A ``${VAR:?message}`` whose variable is not set: compose refuses the file."""


def interpolate_compose(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's own interpolation (what `docker compose config` does) with the variables in
    ``env``: ${VAR:-default} -> VAR or default, ${VAR} -> VAR or "", $$ -> $, and
    ${VAR:?message} -> VAR, or ComposeVariableMissing naming VAR and the message."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op") or "", m.group("arg") or ""
        value = env.get(name)
        if op.endswith("?") and not value:
            raise ComposeVariableMissing(f"{name}: {arg}")
        return value if value else arg if op.endswith("-") else ""

    return re.sub(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}", sub, text)


# The variables docker-compose.yml requires (``${VAR:?...}``), as a test sets them.
COMPOSE_REQUIRED = {"GF_ADMIN_PASSWORD": "not-a-default", "GRIDWATCH_PG_PASSWORD": "not-a-default-either"}


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with ``env`` (default: only the required variables)."""
    env = COMPOSE_REQUIRED if env is None else env
    text = interpolate_compose((REPO / "docker-compose.yml").read_text(), env)
    doc = YAML(typ="safe", pure=True).load(text)
    assert isinstance(doc, dict)
    return doc


def runbook_base() -> str:
    """The one base every alert's runbook_url starts with (a deployment sets its own:
    docs/operations.md, "Runbook links"); fails if the rules use more than one."""
    doc = load_yaml(REPO / "prometheus" / "rules" / "gridwatch.rules.yml")
    bases = {r["annotations"]["runbook_url"].split("#")[0]
             for g in doc["groups"] for r in g["rules"] if "alert" in r}
    assert len(bases) == 1, f"runbook_url bases: {sorted(bases)}"
    (base,) = bases
    assert base.startswith(("https://", "http://")) and base.endswith("/operations.md"), base
    return str(base)


def metric_families() -> dict[str, str]:
    """{family name: type} of every metric a gridwatch service exports: the worker's
    (streams.metrics.Metrics, process metrics included), notify's and the store's."""
    families: dict[str, str] = {}
    for build in (Metrics, NotifyMetrics, StoreMetrics):
        registry = CollectorRegistry()
        build(registry)
        families.update({family.name: family.type for family in registry.collect()})
    return families


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
# An identifier not preceded by a digit, dot or name character (so 1e-9 is no name) and not
# followed by "(" (a function); possessive so that "sum(" cannot match as "su".
_NAME = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*+)(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                       "group_left", "group_right", "inf", "nan", "atan2"})


def promql_names(expr: str) -> set[str]:
    """The metric names an expression selects (strings, matchers, ranges, grouping labels,
    Grafana variables, functions and keywords removed)."""
    text = _STRINGS.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _VARIABLES.sub(" ", text)
    return {n for n in _NAME.findall(text) if n.lower() not in _KEYWORDS}
