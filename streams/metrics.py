"""Every Prometheus metric gridwatch exports, built against a registry passed in.

Labels are of bounded cardinality only (state, reason, area class, role); never a meter id.
Pass rate is exported as numerator and denominator too, so that several workers are summed
(never averaged) by recording rules.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from models.lineloss import LossResult, LossState, pass_rate


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def register_process_metrics(registry: CollectorRegistry, *, kafka_client: str = "aiokafka") -> Gauge:
    """Add what every gridwatch service exports about itself to ``registry``; returns the build gauge.

    ``process_*`` (resident memory, CPU seconds, open fds, start time: prometheus_client's
    ProcessCollector, read from /proc at scrape time) and ``gridwatch_build_info`` = 1 with the
    gridwatch version, the Python version and ``kafka_client`` (a distribution name) with its
    version. Each service calls it once on its own registry (the store too).

    >>> reg = CollectorRegistry()
    >>> _ = register_process_metrics(reg, kafka_client="aiokafka")
    >>> reg.get_sample_value("gridwatch_build_info", {
    ...     "version": _dist_version("gridwatch"), "python": platform.python_version(),
    ...     "kafka_client": "aiokafka " + _dist_version("aiokafka")})
    1.0
    >>> reg.get_sample_value("process_resident_memory_bytes") > 0
    True
    """
    ProcessCollector(registry=registry)
    build_info = Gauge(
        "gridwatch_build_info",
        "Always 1; the labels say which gridwatch, Python and Kafka client this process runs",
        ["version", "python", "kafka_client"],
        registry=registry,
    )
    build_info.labels(
        version=_dist_version("gridwatch"),
        python=platform.python_version(),
        kafka_client=f"{kafka_client} {_dist_version(kafka_client)}",
    ).set(1)
    return build_info


class Metrics:
    def __init__(self, registry: CollectorRegistry, *, top_k: int = 20) -> None:
        self.registry = registry
        self.top_k = top_k
        # Faust's consumer and producer are aiokafka's.
        self.build_info = register_process_metrics(registry, kafka_client="aiokafka")
        self.readings = Counter(
            "gridwatch_readings_total",
            "Meter readings by outcome (accepted, duplicate, replaced, rejected, late, rerouted, directed)",
            ["outcome", "role"],
            registry=registry,
        )
        self.rejected = Counter(
            "gridwatch_readings_rejected_total",
            "Readings sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        self.messages = Counter(
            "gridwatch_messages_total", "Kafka records consumed", ["kind"], registry=registry
        )
        self.windows_closed = Counter(
            "gridwatch_area_windows_emitted_total",
            "Area-window line-loss records emitted (first results and corrections), by state",
            ["state"],
            registry=registry,
        )
        self.pass_ratio = Gauge(
            "gridwatch_pass_ratio",
            "Qualified / judged areas in the latest closed window (this worker's areas)",
            registry=registry,
        )
        self.pass_ratio_by_class = Gauge(
            "gridwatch_pass_ratio_by_class",
            "Pass ratio of the latest closed window per area class",
            ["area_class"],
            registry=registry,
        )
        self.areas_qualified = Gauge(
            "gridwatch_areas_qualified",
            "Qualified areas in the latest closed window (pass-rate numerator)",
            registry=registry,
        )
        self.areas_judged = Gauge(
            "gridwatch_areas_judged",
            "Judged areas (qualified + high + negative loss) in the latest closed window",
            registry=registry,
        )
        self.areas_by_state = Gauge(
            "gridwatch_areas",
            "Areas by line-loss state in the latest closed window",
            ["state"],
            registry=registry,
        )
        self.areas_qualified_by_class = Gauge(
            "gridwatch_areas_qualified_by_class",
            "Qualified areas in the latest closed window, per area class (numerator)",
            ["area_class"],
            registry=registry,
        )
        self.areas_judged_by_class = Gauge(
            "gridwatch_areas_judged_by_class",
            "Judged areas in the latest closed window, per area class (denominator)",
            ["area_class"],
            registry=registry,
        )
        self.meters_expected = Gauge(
            "gridwatch_customer_meters_expected",
            "Active customer meters of this worker's areas in the latest closed window",
            registry=registry,
        )
        self.meters_reported = Gauge(
            "gridwatch_customer_meters_reported",
            "Customer meters that reported the whole latest closed window",
            registry=registry,
        )
        self.worst_areas = Gauge(
            "gridwatch_worst_area_loss_ratio",
            "Loss rate of the top-k judged areas by loss rate in the latest closed window "
            "(bounded: k series per worker)",
            ["area_id", "area_class", "state"],
            registry=registry,
        )
        self.completeness = Gauge(
            "gridwatch_collection_completeness_ratio",
            "Customer meters that reported the whole latest closed window / expected",
            registry=registry,
        )
        self.window_start = Gauge(
            "gridwatch_latest_window_start_seconds",
            "Start (epoch seconds) of the latest closed window behind the pass-ratio gauges",
            registry=registry,
        )
        self.supply_energy = Gauge(
            "gridwatch_window_supply_energy_kwh",
            "Energy supplied into judged areas in the latest closed window, kWh",
            registry=registry,
        )
        self.billed_energy = Gauge(
            "gridwatch_window_billed_energy_kwh",
            "Energy billed in judged areas in the latest closed window, kWh",
            registry=registry,
        )
        self.watermark_lag = Gauge(
            "gridwatch_event_time_lag_seconds",
            "Wall clock minus the newest event time seen, worst partition",
            registry=registry,
        )
        self.open_windows = Gauge(
            "gridwatch_open_area_windows", "Area-windows held in state", registry=registry
        )
        self.latency = Histogram(
            "gridwatch_processing_seconds",
            "Time to process one consumed record",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=registry,
        )
        self.offset_gaps = Counter(
            "gridwatch_offset_gaps_healed_total",
            "Ranges of records the Faust stream skipped that were read back and processed",
            registry=registry,
        )
        self.window_writes = Counter(
            "gridwatch_window_writes_total",
            "Area-window and watermark entries written to the window table's changelog "
            "(once per changed window per offset commit)",
            registry=registry,
        )
        self.stalled_partitions = Counter(
            "gridwatch_stalled_partitions_resumed_total",
            "Input partitions with records waiting that the Faust stream stopped delivering, "
            "resumed and re-read from the next offset to process (and changelog partitions "
            "table recovery waited for in vain, re-read from recovery's offset)",
            registry=registry,
        )
        self.anomalies_open = Gauge(
            "gridwatch_anomalies_open",
            "Alerts open now on this worker's areas and meters, by alert type",
            ["type"],
            registry=registry,
        )
        self.alerts_emitted = Counter(
            "gridwatch_alerts_emitted_total",
            "Alert records written to the alerts topic, by alert type and event (opened, resolved)",
            ["type", "event"],
            registry=registry,
        )
        self.detector_meters = Gauge(
            "gridwatch_detector_meters", "Meters with detector state in this worker", registry=registry
        )
        self.detector_state_unsaved = Counter(
            "gridwatch_detector_state_unsaved",
            "Area detector states too large for one changelog record, not saved (relearned after a restart)",
            registry=registry,
        )
        self.detector_state_bytes = Gauge(
            "gridwatch_detector_state_bytes",
            "Bytes of per-meter detector state (numpy arrays) in this worker",
            registry=registry,
        )
        self.worst_area_suspects = Gauge(
            "gridwatch_worst_area_suspects",
            "Open theft suspects in each of the top-k worst areas (bounded: k series per worker)",
            ["area_id"],
            registry=registry,
        )
        self.worst_area_suspect_share = Gauge(
            "gridwatch_worst_area_suspect_share_ratio",
            "Largest share of the area's loss one open suspect explains, top-k worst areas",
            ["area_id"],
            registry=registry,
        )
        self.verdicts = Counter(
            "gridwatch_inspection_verdicts_total",
            "Inspection verdicts read, by verdict and whether they matched a published suspect here",
            ["verdict", "matched"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "gridwatch_consumer_lag_records",
            "Records on the broker not yet processed by this worker (high watermark - position), by topic",
            ["topic"],
            registry=registry,
        )
        self.topology_records = Gauge(
            "gridwatch_topology_meters", "Meters known to the grid model", registry=registry
        )

    def observe_window(self, window_start: int, results: Iterable[LossResult]) -> None:
        """Set the latest-window gauges from all results of one closed window."""
        results = list(results)
        pr = pass_rate(window_start, results)
        self.window_start.set(window_start)
        self.areas_qualified.set(pr.qualified)
        self.areas_judged.set(pr.judged)
        if pr.pass_rate is not None:
            self.pass_ratio.set(pr.pass_rate)
        if pr.collection_ratio is not None:
            self.completeness.set(pr.collection_ratio)
        for state, n in pr.by_state.items():
            self.areas_by_state.labels(state=state).set(n)
        self.meters_expected.set(pr.customers_expected)
        self.meters_reported.set(pr.customers_reported)
        for cls in sorted({r.area_class for r in results}):
            cls_pr = pass_rate(window_start, [r for r in results if r.area_class == cls])
            self.areas_qualified_by_class.labels(area_class=cls).set(cls_pr.qualified)
            self.areas_judged_by_class.labels(area_class=cls).set(cls_pr.judged)
            if cls_pr.pass_rate is not None:
                self.pass_ratio_by_class.labels(area_class=cls).set(cls_pr.pass_rate)
        judged = [r for r in results if r.state in _JUDGED]
        self.supply_energy.set(sum(r.supply_kwh for r in judged))
        self.billed_energy.set(sum(r.sales_kwh for r in judged))
        # Replace, not accumulate: the label set stays at k series whatever the area count.
        self.worst_areas.clear()
        worst = sorted(judged, key=lambda r: (-(r.loss_rate or 0.0), r.area_id))[: self.top_k]
        for r in worst:
            self.worst_areas.labels(area_id=r.area_id, area_class=r.area_class, state=r.state.value).set(
                r.loss_rate or 0.0
            )


_JUDGED = {LossState.QUALIFIED, LossState.HIGH_LOSS, LossState.NEGATIVE_LOSS}


# The label values notifier.notify can set (tests/ops checks them against the code's own sets).
NOTIFY_SEVERITIES = ("info", "warning", "page")
NOTIFY_RETRY_REASONS = ("connection", "timeout", "http_5xx", "http_429")
NOTIFY_DEAD_LETTER_REASONS = ("json", "schema", "rejected", "retries_exhausted")


class NotifyMetrics:
    """Metrics of ``gridwatch notify``, a process of its own (so not part of the worker's set)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.build_info = register_process_metrics(registry, kafka_client="aiokafka")
        self.delivered = Counter(
            "gridwatch_notify_delivered_total",
            "Alerts the duty webhook accepted (2xx), by severity",
            ["severity"],
            registry=registry,
        )
        self.retried = Counter(
            "gridwatch_notify_retries_total",
            "Webhook POSTs repeated, by what failed (connection, timeout, http_5xx, http_429)",
            ["reason"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "gridwatch_notify_dead_lettered_total",
            "Alerts sent to the alerts dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        # Every label value exported from the start at 0: a counter's first series appearing at 1
        # is no increase to Prometheus, so the first dead letter after a start would never page.
        for severity in NOTIFY_SEVERITIES:
            self.delivered.labels(severity=severity)
        for reason in NOTIFY_RETRY_REASONS:
            self.retried.labels(reason=reason)
        for reason in NOTIFY_DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason=reason)
        self.duplicates = Counter(
            "gridwatch_notify_duplicates_total",
            "Alert records skipped because the same (id, event) was delivered lately",
            registry=registry,
        )
        self.rate_limited = Counter(
            "gridwatch_notify_rate_limited_total",
            "Alerts held back by the rate limit before their first POST",
            registry=registry,
        )
        self.latency = Histogram(
            "gridwatch_notify_delivery_seconds",
            "From taking an alert off the topic to the webhook accepting it (rate limit, retries included)",
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=registry,
        )


class StoreMetrics:
    """``gridwatch store``: what it wrote to PostgreSQL, what it refused, how far behind it is."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.build_info = register_process_metrics(registry, kafka_client="aiokafka")
        self.records = Counter(
            "gridwatch_store_records_total",
            "Records consumed by the store, by topic kind and outcome (stored, rejected, expired)",
            ["kind", "outcome"],
            registry=registry,
        )
        self.rows_written = Counter(
            "gridwatch_store_rows_written_total",
            "Rows inserted or updated in PostgreSQL, by table",
            ["table"],
            registry=registry,
        )
        self.write_errors = Counter(
            "gridwatch_store_write_errors_total",
            "Batches whose write to PostgreSQL failed (retried; offsets not committed)",
            registry=registry,
        )
        self.lag = Gauge(
            "gridwatch_store_lag_records",
            "Records behind the end of the store's topics, summed over its partitions",
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "gridwatch_store_batch_seconds",
            "Time to write and commit one batch",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.delay_seconds = Histogram(
            "gridwatch_store_delay_seconds",
            "From a record's Kafka timestamp to its batch committed in PostgreSQL (oldest of the batch)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=registry,
        )
