"""promtool and amtool accept the Prometheus and Alertmanager configs, and the rule unit tests pass."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from ops_support import REPO, load_yaml

ALERTMANAGER_CONFIGS = ["alertmanager/alertmanager.yml", "alertmanager/alertmanager.compose.yml"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("config", ["prometheus/prometheus.yml", "prometheus/prometheus.compose.yml"])
def test_promtool_accepts_the_config(promtool: str, config: str) -> None:
    done = run(promtool, "check", "config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_promtool_accepts_the_rules(promtool: str, rules_doc: dict[str, Any]) -> None:
    done = run(promtool, "check", "rules", "prometheus/rules/gridwatch.rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    count = sum(len(g["rules"]) for g in rules_doc["groups"])
    assert f"{count} rules found" in done.stdout


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "prometheus" / "tests").glob("*.yml"))
    assert tests
    done = run(promtool, "test", "rules", *tests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_firing_and_quiet_unit_tests(rules_doc: dict[str, Any]) -> None:
    alerts = {r["alert"] for g in rules_doc["groups"] for r in g["rules"] if "alert" in r}
    fires, quiet = set(), set()
    for path in (REPO / "prometheus" / "tests").glob("*.yml"):
        for test in load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - fires == set(), "alerts never shown firing"
    assert alerts - quiet == set(), "alerts never shown staying quiet"


@pytest.mark.parametrize("config", ALERTMANAGER_CONFIGS)
def test_amtool_accepts_the_config(amtool: str, config: str) -> None:
    done = run(amtool, "check-config", config)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("config", ALERTMANAGER_CONFIGS)
@pytest.mark.parametrize("severity", ["page", "warning"])
def test_every_alert_reaches_the_duty_webhook(amtool: str, config: str, severity: str) -> None:
    done = run(amtool, "config", "routes", "test", f"--config.file={config}",
               "--verify.receivers=duty-webhook", f"severity={severity}", "alertname=GridwatchPassRateLow")
    assert done.returncode == 0, done.stdout + done.stderr


def webhook(config: dict[str, Any]) -> dict[str, Any]:
    (receiver,) = config["receivers"]
    (hook,) = receiver["webhook_configs"]
    assert isinstance(hook, dict)
    return hook


def test_local_and_compose_alertmanager_differ_only_in_the_webhook_url() -> None:
    local, composed = (load_yaml(REPO / c) for c in ALERTMANAGER_CONFIGS)
    assert webhook(local)["url"] == "http://127.0.0.1:9095/alert"
    assert webhook(composed)["url"] == "http://host.docker.internal:9095/alert"
    for hook in (webhook(local), webhook(composed)):
        assert hook.pop("send_resolved") is True
        hook.pop("url")
    assert local == composed
    assert local["route"]["repeat_interval"] and local["route"]["group_by"]
