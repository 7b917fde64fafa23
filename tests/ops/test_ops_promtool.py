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
    # The watchdog cannot be quiet: it is the one alert that always fires.
    assert alerts - quiet == {WATCHDOG}, "alerts never shown staying quiet"


WATCHDOG = "GridwatchWatchdog"


def alert_rules(rules_doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules_doc["groups"] for r in g["rules"] if "alert" in r}


def test_the_watchdog_always_fires_and_pages_nobody(rules_doc: dict[str, Any]) -> None:
    rule = alert_rules(rules_doc)[WATCHDOG]
    assert rule["expr"] == "vector(1)" and "for" not in rule
    assert rule["labels"]["severity"] == "none"


@pytest.mark.parametrize("config", ALERTMANAGER_CONFIGS)
def test_each_alert_has_exactly_one_receiver(amtool: str, config: str, rules_doc: dict[str, Any]) -> None:
    """One paging path: every alert reaches the duty webhook once (one matching route), the
    watchdog only the dead man's switch."""
    for name, rule in alert_rules(rules_doc).items():
        expected = "deadmans-switch" if name == WATCHDOG else "duty-webhook"
        done = run(amtool, "config", "routes", "test", f"--config.file={config}",
                   f"--verify.receivers={expected}", f"alertname={name}",
                   f"severity={rule['labels']['severity']}", "system=gridwatch")
        assert done.returncode == 0, (name, done.stdout + done.stderr)
        assert done.stdout.split() == [expected], (name, done.stdout)


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


def webhook(config: dict[str, Any], name: str) -> dict[str, Any]:
    (receiver,) = [r for r in config["receivers"] if r["name"] == name]
    (hook,) = receiver["webhook_configs"]
    assert isinstance(hook, dict)
    return hook


def test_local_and_compose_alertmanager_differ_only_in_the_webhook_urls() -> None:
    local, composed = (load_yaml(REPO / c) for c in ALERTMANAGER_CONFIGS)
    assert {r["name"] for r in local["receivers"]} == {"duty-webhook", "deadmans-switch"}
    assert webhook(local, "duty-webhook")["url"] == "http://127.0.0.1:9095/alert"
    assert webhook(composed, "duty-webhook")["url"] == "http://host.docker.internal:9095/alert"
    assert webhook(local, "deadmans-switch")["url"] == "http://127.0.0.1:9095/watchdog"
    assert webhook(composed, "deadmans-switch")["url"] == "http://host.docker.internal:9095/watchdog"
    for config in (local, composed):
        assert webhook(config, "duty-webhook")["send_resolved"] is True
        assert webhook(config, "deadmans-switch")["send_resolved"] is False  # a heartbeat never resolves
        for receiver in config["receivers"]:
            receiver["webhook_configs"][0].pop("url")
    assert local == composed
    assert local["route"]["repeat_interval"] and local["route"]["group_by"]
