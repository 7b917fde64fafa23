"""One typed settings object for a gridwatch worker: env vars (GRIDWATCH_*) or a .env file,
with defaults that run against the local broker; `load_settings` is how commands read it."""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.detection import DEFAULT_LARGE_CONSUMPTION_KWH

REPO = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRIDWATCH_", env_file=".env", extra="ignore")

    # Kafka
    bootstrap: str = "127.0.0.1:9092"
    # How long a command (topics, topology load, notify, record, replay, the worker's start)
    # waits for the broker before saying there is none: short, a missing broker is the common case.
    connect_timeout_s: float = Field(5.0, gt=0, le=600, description="seconds to wait for the broker")
    app_id: str = "gridwatch"
    partitions: int = Field(4, ge=1)
    # Off: every worker holds every meter (compact columns, ~42 bytes a meter), so a reading keyed
    # under the wrong area is forwarded whatever the assignment. On: a worker holds only the
    # meters of its partitions' areas (1/N of the memory; docs/scaling.md), but a reading of a
    # meter it never held arrives as unknown_meter: forwards across workers need every meter.
    archive_shard: bool = False
    topic_readings: str = "gridwatch.readings"
    topic_supply: str = "gridwatch.supply-readings"
    topic_topology: str = "gridwatch.topology"
    topic_lineloss: str = "gridwatch.lineloss"
    topic_deadletter: str = "gridwatch.deadletter"
    # Inspectors' verdicts (docs/suspects.md), keyed by area id so they reach the area's worker
    topic_inspections: str = "gridwatch.inspections"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None  # instead of GRIDWATCH_SASL_PASSWORD
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None  # client certificate (mutual TLS), optional
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    # Windows (seconds). The pass rate is judged on window_s; 15 min by default, daily in
    # production judging (docs/domain.md: short windows are noisy).
    interval_s: int = Field(900, ge=60, description="metering interval of the load curve")
    window_s: int = Field(900, ge=60)
    allowed_lateness_s: int = Field(7200, ge=0, description="how long a closed window accepts corrections")
    close_delay_s: int = Field(900, ge=0, description="wait after window end before first result")
    idle_close_s: float = Field(30.0, gt=0, description="close ended windows of a quiet partition")
    clock_tolerance_s: int = Field(120, ge=0)
    max_past_s: int = Field(
        35 * 86400, description="older readings are refused (concentrators buffer 31 days)"
    )
    max_future_s: int = Field(3600)
    min_completeness: float = Field(0.98, ge=0, le=1)

    # Detection (docs/detection.md): detectors run on each area-window's first close
    detect: bool = Field(True, description="run the meter and area detectors and publish alerts")
    suspects: bool = Field(True, description="rank suspects in lossy areas, look for mapping errors")
    suspect_score: float = Field(30.0, gt=0, description="publish a suspect at this score (docs/suspects.md)")
    # The volume-price-fee watch (docs/detection.md): large consumption per customer class, kWh
    # in a local day and a local month (JSON: {"residential": {"day": 300, "month": 5000}}); a
    # class not listed is not checked. Days and months end at local midnight: UTC + this offset.
    large_consumption_kwh: dict[str, dict[str, float]] = {
        c: {"day": day, "month": month} for c, (day, month) in DEFAULT_LARGE_CONSUMPTION_KWH.items()
    }
    local_utc_offset_s: int = Field(0, ge=-14 * 3600, le=14 * 3600, description="local time = UTC + this")
    # Keyed hash of customer meter ids in alerts and logs (docs/operations.md): the key from
    # GRIDWATCH_MASK_KEY or a file, never logged. Unset: ids are shown as they are.
    mask_key: SecretStr | None = None
    mask_key_file: Path | None = None

    # Grid model bootstrap (also fed live from the topology topic)
    topology_csv: Path | None = None
    areas_csv: Path | None = None

    # Endpoints bind to loopback unless set
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9308
    top_k_areas: int = Field(20, ge=0, le=200, description="worst areas exported per worker")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    data_dir: Path = Path(".gridwatch/worker")

    # Records taken from the stream at a time (Faust's take_events): consecutive readings of one
    # partition, area and interval end in a chunk are ingested together. A chunk is processed
    # when full or after chunk_within_s, which bounds the wait it adds to a quiet stream.
    chunk_records: int = Field(500, ge=1, le=100_000)
    chunk_within_s: float = Field(0.05, gt=0, le=5.0)

    # Longest a fetch waits at the broker for new records (Faust hard-codes 1500 ms, which
    # holds up every other partition behind a fetch of quiet ones: streams.kafkaio).
    fetch_max_wait_ms: int = Field(100, ge=0, le=10_000)

    # Faust timings; tests shorten these, production keeps Faust's defaults
    broker_session_timeout_s: float = 60.0
    broker_heartbeat_interval_s: float = 3.0
    broker_commit_interval_s: float = 2.8

    # gridwatch notify: the alerts topic to the duty webhook (docs/notify.md)
    topic_alerts: str = "gridwatch.alerts"
    topic_alerts_deadletter: str = "gridwatch.alerts-deadletter"
    notify_group_id: str = "gridwatch-notify"
    duty_webhook_url: str = "http://127.0.0.1:9095/alert"
    # The HMAC secret: from GRIDWATCH_WEBHOOK_SECRET or a file (one of the two), never logged.
    webhook_secret: SecretStr | None = None
    webhook_secret_file: Path | None = None
    notify_rate_per_s: float = Field(1.0, gt=0, description="sustained alerts per second to the webhook")
    notify_burst: int = Field(10, ge=1, description="alerts sent at once before the rate applies")
    notify_max_attempts: int = Field(8, ge=1, description="POSTs per alert before dead-lettering it")
    notify_max_elapsed_s: float = Field(300.0, gt=0, description="time per alert before dead-lettering it")
    notify_backoff_initial_s: float = Field(0.5, gt=0)
    notify_backoff_max_s: float = Field(30.0, gt=0)
    notify_timeout_s: float = Field(10.0, gt=0, description="one POST, connect to response")
    notify_metrics_port: int = Field(9309, ge=0, description="0: no metrics endpoint")

    # gridwatch store: results, alerts, cases and the ledger in PostgreSQL (docs/store.md)
    pg_dsn: SecretStr = SecretStr("postgresql://gridwatch@127.0.0.1:5432/gridwatch")
    store_group_id: str = "gridwatch-store"
    store_metrics_port: int = Field(9310, ge=0, description="0: no metrics endpoint")
    store_batch_records: int = Field(20_000, ge=1, le=100_000, description="records per transaction, at most")
    store_retention_days: int = Field(400, ge=1, description="area-window results kept, by window start")
    # Yuan per kWh by customer class (topology's customer_class): prices recovered kWh and
    # arrears exposure; a class not listed takes tariff_default_yuan_per_kwh. Illustrative
    # defaults near Chinese catalogue prices: set the utility's own.
    tariff_yuan_per_kwh: dict[str, float] = {"residential": 0.56, "commercial": 0.82, "industrial": 0.68}
    tariff_default_yuan_per_kwh: float = Field(0.6, ge=0)
    arrears_period_days: float = Field(30.0, gt=0, description="an arrears exposure is this long a bill")

    @field_validator("bootstrap")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        """Comma-separated host:port (Kafka clients fail on anything else only when they connect)."""
        for entry in value.split(","):
            host, _, port = entry.strip().rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {entry.strip()!r}")
        return value

    @field_validator("large_consumption_kwh")
    @classmethod
    def _class_thresholds(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Each class gives a day and a month threshold, positive kWh."""
        for name, limits in value.items():
            if set(limits) != {"day", "month"}:
                raise ValueError(
                    f'class {name!r}: expected {{"day": kWh, "month": kWh}}, got keys {sorted(limits)}'
                )
            if not all(0 < v < float("inf") for v in limits.values()):
                raise ValueError(f"class {name!r}: thresholds must be positive kWh, got {limits}")
        return value

    @property
    def large_consumption_limits(self) -> dict[str, tuple[float, float]]:
        """Class -> (day kWh, month kWh), as models.detection.Detection takes them."""
        return {c: (v["day"], v["month"]) for c, v in self.large_consumption_kwh.items()}

    @property
    def max_past(self) -> timedelta:
        return timedelta(seconds=self.max_past_s)

    @property
    def max_future(self) -> timedelta:
        return timedelta(seconds=self.max_future_s)

    def check(self) -> None:
        """Refuse window settings that cannot work together."""
        if self.window_s % self.interval_s:
            raise ValueError(
                f"GRIDWATCH_WINDOW_S={self.window_s} is not a multiple of "
                f"GRIDWATCH_INTERVAL_S={self.interval_s}"
            )


PREFIX = "GRIDWATCH_"
# GRIDWATCH_* variables read by tooling, not by Settings: not typos.
TOOLING_VARIABLES = frozenset(
    {
        "GRIDWATCH_CACHE",  # local/kafka.py: where the Kafka jars are kept
        "GRIDWATCH_KAFKA_VERSION",  # local/kafka.py, tests: the local broker's version
        "GRIDWATCH_LOGLEVEL",  # local/run.py: the demo worker's log level
        "GRIDWATCH_CRASH_KILLS",  # tests/streams/test_crash_kafka.py
        "GRIDWATCH_FUZZ_RECORDS",  # tests/streams/test_fuzz_kafka.py
        "GRIDWATCH_FUZZ_SEED",
        "GRIDWATCH_KAFKA4_VERSION",  # .ci/run: the second leg's broker version
        "GRIDWATCH_KAFKA_HOST_PORT",  # docker-compose.yml
        "GRIDWATCH_KAFKA_CLUSTER_ID",
        "GRIDWATCH_IMAGE_TAG",
        "GRIDWATCH_ARCHIVE_DIR",
        "GRIDWATCH_SIM_AREAS",
        "GRIDWATCH_SIM_DAYS",
        "GRIDWATCH_SIM_SPEED",
        "GRIDWATCH_PROMETHEUS_PORT",
        "GRIDWATCH_PROMETHEUS_URL",
        "GRIDWATCH_GRAFANA_PORT",
        "GRIDWATCH_ALERTMANAGER_PORT",
        "GRIDWATCH_ALERTMANAGER_URL",
        "GRIDWATCH_PG_ADDRESS",  # docker-compose.yml -> Grafana's PostgreSQL datasource
        "GRIDWATCH_PG_USER",
        "GRIDWATCH_PG_PASSWORD",
        "GRIDWATCH_PG_HOST_PORT",
    }
)


class SettingsError(ValueError):
    """A setting cannot be used; the message names the environment variable, one per line."""


def variable(field: str) -> str:
    """The environment variable of a Settings field.

    >>> variable("window_s")
    'GRIDWATCH_WINDOW_S'
    """
    return f"{PREFIX}{field.upper()}"


def _secret(field: str) -> bool:
    return field in {"sasl_password", "mask_key", "webhook_secret"}


def unknown_variables(names: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """GRIDWATCH_* names that no setting reads, each with the closest valid one (or None).

    >>> unknown_variables({"GRIDWATCH_WINDOWS_S": "86400", "GRIDWATCH_WINDOW_S": "900", "HOME": "/"})
    [('GRIDWATCH_WINDOWS_S', 'GRIDWATCH_WINDOW_S')]
    """
    valid = [variable(f) for f in Settings.model_fields]
    out = []
    for name in sorted(names):
        upper = name.upper()  # pydantic-settings matches names case-insensitively
        if not upper.startswith(PREFIX) or upper in valid or upper in TOOLING_VARIABLES:
            continue
        close = difflib.get_close_matches(upper, valid, n=1, cutoff=0.6)
        out.append((name, close[0] if close else None))
    return out


def _dotenv(env_file: Path) -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(env_file).items()} if env_file.is_file() else {}


def load_settings(
    *, env_file: Path = Path(".env"), warn: TextIO | None = sys.stderr, **overrides: Any
) -> Settings:
    """Settings from the environment and ``env_file``, with ``overrides`` (command-line options)
    on top. Unknown GRIDWATCH_* names are warned about on ``warn`` with the closest valid name
    (a typo would otherwise be silently ignored); invalid values raise SettingsError naming the
    variable, where it came from and what is wrong.
    """
    from_file = _dotenv(env_file)
    if warn is not None:
        for source, names in (("the environment", dict(os.environ)), (str(env_file), from_file)):
            for name, close in unknown_variables(names):
                hint = f"did you mean {close}?" if close else "ignored"
                print(f"gridwatch: warning: {name} in {source} is not a setting: {hint}", file=warn)
    try:
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
        settings.check()
    except ValidationError as exc:
        raise SettingsError(_explain(exc, from_file, env_file)) from None
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return settings


def _explain(exc: ValidationError, from_file: Mapping[str, str], env_file: Path) -> str:
    """One line per invalid value: the variable, its value (never a secret's), its source, why."""
    in_env = {k.upper() for k in os.environ}
    in_file = {k.upper() for k in from_file}
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        name = variable(field)
        where = "environment" if name in in_env else str(env_file) if name in in_file else "command line"
        shown = "" if _secret(field) else f"={err.get('input')!r}"
        why = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}{shown} ({where}): {why}")
    return "\n".join(lines)


def effective(settings: Settings, env_file: Path = Path(".env")) -> list[tuple[str, str, str]]:
    """(variable, value, where it came from) of every setting; secrets only as set or unset.

    >>> rows = {name: (value, src) for name, value, src in effective(Settings(webhook_secret="x" * 16))}
    >>> rows["GRIDWATCH_WEBHOOK_SECRET"][0], rows["GRIDWATCH_APP_ID"]
    ('(set, hidden)', ('gridwatch', 'default'))
    """
    in_env = {k.upper() for k in os.environ}
    in_file = {k.upper() for k in _dotenv(env_file)}
    rows = []
    for field in Settings.model_fields:
        value, name = getattr(settings, field), variable(field)
        if _secret(field):
            shown = "(unset)" if value is None else "(set, hidden)"
        else:
            shown = "" if value is None else str(value)
        source = "environment" if name in in_env else str(env_file) if name in in_file else "default"
        rows.append((name, shown, source))
    return rows
