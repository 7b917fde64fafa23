"""Every service exports its build and process metrics, and notify's counters start at 0 for
every label value the alerts rely on (a series born at 1 is no increase to Prometheus).
The running worker and notify are scraped by real Prometheus in test_alerting_e2e.py."""

from __future__ import annotations

import platform
import urllib.request
from importlib.metadata import version
from typing import get_args, get_type_hints

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from local.run import free_port
from notifier.notify import classify
from streams.contracts import Alert
from streams.metrics import (
    NOTIFY_DEAD_LETTER_REASONS,
    NOTIFY_RETRY_REASONS,
    NOTIFY_SEVERITIES,
    Metrics,
    NotifyMetrics,
)


def scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The registry served over HTTP as a service serves it, parsed back: {sample name: samples}."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
        thread.join(timeout=5)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


@pytest.mark.parametrize("service", [Metrics, NotifyMetrics], ids=["worker", "notify"])
def test_build_info_and_process_metrics_are_served(service: type) -> None:
    registry = CollectorRegistry()
    service(registry)
    samples = scrape(registry)
    ((labels, value),) = samples["gridwatch_build_info"]
    assert value == 1.0
    assert labels == {"version": version("gridwatch"), "python": platform.python_version(),
                      "kafka_client": f"aiokafka {version('aiokafka')}"}
    ((_, rss),) = samples["process_resident_memory_bytes"]
    assert rss > 10e6  # this Python process with its libraries
    ((_, cpu),) = samples["process_cpu_seconds_total"]
    assert cpu > 0
    ((_, started),) = samples["process_start_time_seconds"]
    assert started > 1.7e9


def test_notify_label_values_are_the_ones_notify_sets() -> None:
    assert set(NOTIFY_SEVERITIES) == set(get_args(get_type_hints(Alert)["severity"]))
    # POST failures that are retried: the HTTP ones classify() names, plus no answer at all.
    http_retries = {classify(status) for status in range(100, 600)} - {"delivered", "rejected"}
    assert set(NOTIFY_RETRY_REASONS) == http_retries | {"connection", "timeout"}
    assert set(NOTIFY_DEAD_LETTER_REASONS) == {"json", "schema", "rejected", "retries_exhausted"}


def test_notify_counters_start_at_zero_for_every_label_value() -> None:
    registry = CollectorRegistry()
    NotifyMetrics(registry)
    samples = scrape(registry)
    for name, label, values in (
        ("gridwatch_notify_delivered_total", "severity", NOTIFY_SEVERITIES),
        ("gridwatch_notify_retries_total", "reason", NOTIFY_RETRY_REASONS),
        ("gridwatch_notify_dead_lettered_total", "reason", NOTIFY_DEAD_LETTER_REASONS),
    ):
        assert {labels[label]: value for labels, value in samples[name]} == dict.fromkeys(values, 0.0), name
