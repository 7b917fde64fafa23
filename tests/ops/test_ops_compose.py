"""docker-compose.yml against the Compose Specification schema, plus what the stack relies on."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from ops_support import (
    COMPOSE_REQUIRED,
    REPO,
    ComposeVariableMissing,
    interpolate_compose,
    load_compose,
    load_yaml,
)

from local.kafka import DEFAULT_VERSION
from streams.settings import Settings
from streams.topics import topic_specs


def compose_schema() -> dict[str, Any]:
    """compose-spec.json as vendored by check-jsonschema (Apache-2.0, from compose-spec/compose-spec).

    Located without importing check_jsonschema: its CLI module needs a newer click than
    faust-streaming allows, and only the data file is wanted here."""
    spec = importlib.util.find_spec("check_jsonschema")
    assert spec is not None and spec.origin, "check-jsonschema is not installed (dev extra)"
    path = Path(spec.origin).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(path.read_text())
    assert isinstance(schema, dict)
    return schema


def schema_errors(doc: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    # The vendored file says draft-07 under an https URL that jsonschema does not map to it.
    cls = jsonschema.Draft7Validator if "draft-07" in schema.get("$schema", "") else None
    validator = (cls or jsonschema.validators.validator_for(schema))(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_the_schema_refuses_what_compose_refuses(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken["services"]["grafana"]["helthcheck"] = broken["services"]["grafana"].pop("healthcheck")
    errors = schema_errors(broken)
    assert any("depends_on" in e for e in errors), errors
    assert any("helthcheck" in e for e in errors), errors


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_every_dependency_exists_and_its_condition_can_be_met(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health"
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target} must be a one-shot"


@pytest.mark.parametrize("name", ["kafka", "worker", "notify", "prometheus", "alertmanager", "grafana"])
def test_long_running_services_have_healthchecks(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name]["healthcheck"]
    assert check["test"] and not check.get("disable", False)


GRIDWATCH_SERVICES = ("worker", "notify", "archive-load", "simulator", "store")


def test_one_image_is_built_once_and_runs_every_gridwatch_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    built = [name for name, s in services.items() if "build" in s]
    assert built == ["worker"], "the same image would be built once per service"
    image = services["worker"]["image"]
    assert image == "gridwatch:local"
    for name in GRIDWATCH_SERVICES:
        assert services[name]["image"] == image, name
        assert services[name]["command"][0] == "gridwatch", name
        if name != "worker":
            # the tag exists only on this machine: compose must never try a registry for it
            assert services[name]["pull_policy"] == "never", name
            # and it is built before them: `up` of any one of them starts (so builds) the worker
            assert name == "notify" or "worker" in depends_on(services[name]), name
    others = {s.get("image", "").split(":")[0] for n, s in services.items() if n not in GRIDWATCH_SERVICES}
    assert "gridwatch" not in others


def test_worker_is_built_here_and_can_be_scaled(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert worker["build"] == "."
    assert "container_name" not in worker
    assert "ports" not in worker, "a host port would collide as soon as the worker is scaled"
    assert worker["command"] == ["gridwatch", "worker"]
    env = worker["environment"]
    assert env["GRIDWATCH_BOOTSTRAP"] == "kafka:9092"
    assert env["GRIDWATCH_METRICS_HOST"] == "0.0.0.0"
    assert depends_on(worker)["topic-init"] == "service_completed_successfully"


def test_notify_runs_from_the_worker_image_once_the_topics_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    notify, worker = services["notify"], services["worker"]
    assert notify["image"] == worker["image"] and "build" not in notify
    assert notify["command"] == ["gridwatch", "notify"]
    assert depends_on(notify) == {"kafka": "service_healthy", "topic-init": "service_completed_successfully"}
    env = notify["environment"]
    assert env["GRIDWATCH_BOOTSTRAP"] == worker["environment"]["GRIDWATCH_BOOTSTRAP"]
    assert env["GRIDWATCH_PARTITIONS"] == worker["environment"]["GRIDWATCH_PARTITIONS"]
    # The HMAC secret is passed through from the caller's environment, never written in the file.
    assert "GRIDWATCH_WEBHOOK_SECRET" in env and env["GRIDWATCH_WEBHOOK_SECRET"] is None
    assert "GRIDWATCH_WEBHOOK_SECRET_FILE" not in env
    s = Settings.model_construct()
    port = int(env["GRIDWATCH_NOTIFY_METRICS_PORT"])
    assert port == s.notify_metrics_port and str(port) in " ".join(notify["healthcheck"]["test"])
    assert "ports" not in notify


DUTY_DEFAULT = "http://host.docker.internal:9095/alert"


def test_one_variable_sets_the_duty_webhook_and_grafana_sends_nothing(compose: dict[str, Any]) -> None:
    raw = load_yaml(REPO / "docker-compose.yml")  # not interpolated: the expressions themselves
    expected = f"${{GRIDWATCH_DUTY_WEBHOOK_URL:-{DUTY_DEFAULT}}}"
    assert raw["services"]["notify"]["environment"]["GRIDWATCH_DUTY_WEBHOOK_URL"] == expected
    assert compose["services"]["notify"]["environment"]["GRIDWATCH_DUTY_WEBHOOK_URL"] == DUTY_DEFAULT
    assert "host.docker.internal:host-gateway" in compose["services"]["notify"]["extra_hosts"]
    # Grafana is a view (one paging path): it is not given the duty webhook at all.
    assert "GRIDWATCH_DUTY_WEBHOOK_URL" not in compose["services"]["grafana"]["environment"]
    # ... and it is the setting `gridwatch notify` reads (streams.settings: prefix + field name).
    assert "duty_webhook_url" in Settings.model_fields
    assert f"{Settings.model_config['env_prefix']}DUTY_WEBHOOK_URL" == "GRIDWATCH_DUTY_WEBHOOK_URL"


def test_alertmanager_in_compose_posts_to_the_same_default_duty_webhook(compose: dict[str, Any]) -> None:
    """Alertmanager cannot read GRIDWATCH_DUTY_WEBHOOK_URL: its URL is the variable's default."""
    receivers = load_yaml(REPO / "alertmanager" / "alertmanager.compose.yml")["receivers"]
    (receiver,) = [r for r in receivers if r["name"] == "duty-webhook"]
    assert [h["url"] for h in receiver["webhook_configs"]] == [DUTY_DEFAULT]
    assert "host.docker.internal:host-gateway" in compose["services"]["alertmanager"]["extra_hosts"]


def test_host_ports_do_not_collide(compose: dict[str, Any]) -> None:
    published = [p.rsplit(":", 1)[0] for s in compose["services"].values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), published


def test_optional_services_only_run_with_their_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["simulator"]["profiles"] == ["sim"]
    assert services["archive-load"]["profiles"] == ["load"]
    optional = {"simulator", "archive-load"}
    assert all("profiles" not in s for n, s in services.items() if n not in optional)
    for name in optional:
        assert services[name]["restart"] == "no", f"{name} is a one-shot"


def test_the_sim_profile_streams_a_demo_city_into_the_worker_topics(compose: dict[str, Any]) -> None:
    sim = compose["services"]["simulator"]
    args = sim["command"]
    assert args[:4] == ["gridwatch", "simulate", "--to=kafka", "--speed=60"]
    # each option is one the simulate command has, spelled as typer parses it
    from typer.main import get_command

    from cli import app

    simulate = get_command(app).commands["simulate"]  # type: ignore[attr-defined]
    known = {opt for p in simulate.params for opt in p.opts + p.secondary_opts}
    for arg in args[2:]:
        assert arg.split("=", 1)[0] in known, arg
    worker = compose["services"]["worker"]["environment"]
    assert sim["environment"]["GRIDWATCH_BOOTSTRAP"] == worker["GRIDWATCH_BOOTSTRAP"]
    assert sim["environment"]["GRIDWATCH_PARTITIONS"] == worker["GRIDWATCH_PARTITIONS"]
    assert depends_on(sim)["topic-init"] == "service_completed_successfully"


ARCHIVE = "/etc/gridwatch"


def test_the_utilitys_areas_and_meters_are_mounted(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker, load = services["worker"], services["archive-load"]
    for service in (worker, load):
        assert volume(service, ARCHIVE) == "./data/sample"
        assert f"{ARCHIVE}:ro" in " ".join(service["volumes"]), "read-only"
    assert Path(worker["environment"]["GRIDWATCH_AREAS_CSV"]) == Path(ARCHIVE) / "areas.csv"
    assert load["command"] == ["gridwatch", "topology", "load", f"{ARCHIVE}/meters.csv"]
    # the default directory holds both files
    for name in ("areas.csv", "meters.csv"):
        assert (REPO / "data" / "sample" / name).is_file(), name
    # one variable moves both services to the utility's own directory
    doc = load_compose({**COMPOSE_REQUIRED, "GRIDWATCH_ARCHIVE_DIR": "/srv/utility"})
    for name in ("worker", "archive-load"):
        assert volume(doc["services"][name], ARCHIVE) == "/srv/utility", name


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("kafka", "/var/lib/kafka/data"),
        ("prometheus", "/prometheus"),
        ("alertmanager", "/alertmanager"),
        ("grafana", "/var/lib/grafana"),
    ],
)
def test_state_survives_a_restart_in_named_volumes(compose: dict[str, Any], name: str, target: str) -> None:
    service = compose["services"][name]
    source = volume(service, target)
    assert source in compose["volumes"], f"{source} is not a named volume"
    # ... and the service writes its state there
    written = {
        "kafka": lambda: service["environment"]["KAFKA_LOG_DIRS"],
        "prometheus": lambda: flag(service, "storage.tsdb.path"),
        "alertmanager": lambda: flag(service, "storage.path"),
        "grafana": lambda: "/var/lib/grafana",  # the image's GF_PATHS_DATA
    }[name]()
    assert written == target


def test_kafka_keeps_its_cluster_id_across_restarts(compose: dict[str, Any]) -> None:
    """The image formats an empty log directory with CLUSTER_ID and refuses a directory
    formatted with another one: a fixed id, 16 bytes in URL-safe base64 as Kafka's Uuid."""
    cluster_id = compose["services"]["kafka"]["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_grafana_admin_password_is_required_from_the_environment(compose: dict[str, Any]) -> None:
    raw = load_yaml(REPO / "docker-compose.yml")
    password = raw["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password == "${GF_ADMIN_PASSWORD:?set GF_ADMIN_PASSWORD}"
    text = (REPO / "docker-compose.yml").read_text()
    for name in COMPOSE_REQUIRED:  # each secret is required on its own: none has a default
        others = {k: v for k, v in COMPOSE_REQUIRED.items() if k != name}
        with pytest.raises(ComposeVariableMissing, match=f"{name}: set {name}"):
            interpolate_compose(text, others)
    assert compose["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "not-a-default"
    pg = COMPOSE_REQUIRED["GRIDWATCH_PG_PASSWORD"]
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == pg
    assert f":{pg}@postgres:" in compose["services"]["store"]["environment"]["GRIDWATCH_PG_DSN"]
    assert "admin" not in re.findall(r":-([^}]*)\}", (REPO / "docker-compose.yml").read_text())


def test_kafka_runs_the_version_the_local_broker_runs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"] == f"apache/kafka:{DEFAULT_VERSION}"
    assert services["topic-init"]["image"] == services["kafka"]["image"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def created_topics(compose: dict[str, Any]) -> dict[str, tuple[int, dict[str, str]]]:
    script = compose["services"]["topic-init"]["command"][0]
    lines = script.splitlines()
    prefix = re.fullmatch(r'topics="(.*)"', lines[0])
    assert prefix and "--create --if-not-exists" in prefix.group(1)
    topics = {}
    for line in lines[1:]:
        args = shlex.split(line)
        assert args[0] == "$topics", line
        opts: dict[str, list[str]] = {}
        for flag, value in zip(args[1::2], args[2::2], strict=True):
            opts.setdefault(flag, []).append(value)
        config = dict(c.split("=", 1) for c in opts.get("--config", []))
        topics[opts["--topic"][0]] = (int(opts["--partitions"][0]), config)
    return topics


def test_topic_init_creates_the_topics_of_streams_topics(compose: dict[str, Any]) -> None:
    expected = {t.name: (t.partitions, t.config) for t in topic_specs(Settings.model_construct())}
    assert created_topics(compose) == expected


def test_worker_and_topics_agree_on_partitions(compose: dict[str, Any]) -> None:
    env = compose["services"]["worker"]["environment"]
    assert {p for p, _ in created_topics(compose).values()} == {int(env["GRIDWATCH_PARTITIONS"])}


def volume(service: dict[str, Any], target: str) -> str:
    for v in service.get("volumes", []):
        source, dest = v.split(":")[:2]
        if dest == target:
            return str(source)
    raise AssertionError(f"nothing mounted at {target}: {service.get('volumes')}")


def test_grafana_mounts_provisioning_and_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert volume(grafana, "/etc/grafana/provisioning") == "./grafana/provisioning"
    provider = load_yaml(REPO / "grafana" / "provisioning" / "dashboards" / "gridwatch.yml")["providers"][0]
    assert volume(grafana, provider["options"]["path"]) == "./grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "grafana" / "dashboards" / Path(home).relative_to(provider["options"]["path"])).is_file()


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


def test_grafana_gets_every_variable_its_provisioning_uses(compose: dict[str, Any]) -> None:
    env = compose["services"]["grafana"]["environment"]
    used = set()
    for path in sorted((REPO / "grafana" / "provisioning").rglob("*.yml")):
        for value in strings(load_yaml(path)):
            used.update(re.findall(r"\$\{?([A-Za-z_]\w*)\}?", value))
    pg = {"GRIDWATCH_PG_ADDRESS", "GRIDWATCH_PG_USER", "GRIDWATCH_PG_PASSWORD"}  # the results store
    assert used == {"GRIDWATCH_PROMETHEUS_URL", "GRIDWATCH_ALERTMANAGER_URL"} | pg
    for name in used:
        assert env.get(name), f"provisioning uses ${name}, not set for grafana in docker-compose.yml"
    assert env["GRIDWATCH_ALERTMANAGER_URL"].split("//")[1].split(":")[0] in compose["services"]


def flag(service: dict[str, Any], name: str) -> str:
    values = [a.split("=", 1)[1] for a in service["command"] if a.startswith(f"--{name}=")]
    assert len(values) == 1, service["command"]
    return values[0]


def test_prometheus_and_alertmanager_read_the_compose_configs(compose: dict[str, Any]) -> None:
    for name, directory in (("prometheus", "/etc/prometheus"), ("alertmanager", "/etc/alertmanager")):
        service = compose["services"][name]
        config = Path(flag(service, "config.file"))
        assert config.parent == Path(directory)
        assert (REPO / volume(service, directory) / config.name).is_file()


# job name -> (compose service, its metrics port variable); the store's port is agreed for issue 15.
SCRAPED = {"gridwatch": ("worker", "GRIDWATCH_METRICS_PORT"),
           "gridwatch-notify": ("notify", "GRIDWATCH_NOTIFY_METRICS_PORT")}
STORE_METRICS_PORT = 9310


def test_prometheus_finds_every_replica_of_every_service(compose: dict[str, Any]) -> None:
    prom = load_yaml(REPO / "prometheus" / "prometheus.compose.yml")
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert set(jobs) == {*SCRAPED, "gridwatch-store"}
    for name, job in jobs.items():
        (sd,) = job["dns_sd_configs"]
        assert sd["type"] == "A", name
        if name in SCRAPED:
            service, variable = SCRAPED[name]
            assert sd["names"] == [service]
            assert sd["port"] == int(compose["services"][service]["environment"][variable])
            assert compose["services"][service]["environment"]["GRIDWATCH_METRICS_HOST"] == "0.0.0.0"
    # The store service comes with issue 15's PostgreSQL sink; scraped by its service name.
    store = jobs["gridwatch-store"]["dns_sd_configs"][0]
    assert (store["names"], store["port"]) == (["store"], STORE_METRICS_PORT)
    (am,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am.split(":")[0] in compose["services"]


def test_local_prometheus_scrapes_the_default_endpoints() -> None:
    prom = load_yaml(REPO / "prometheus" / "prometheus.yml")
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prom["scrape_configs"]}
    s = Settings.model_construct()
    assert targets == {
        "gridwatch": [f"{s.metrics_host}:{s.metrics_port}"],
        "gridwatch-notify": [f"{s.metrics_host}:{s.notify_metrics_port}"],
        "gridwatch-store": [f"{s.metrics_host}:{STORE_METRICS_PORT}"],
    }


def test_interpolation_follows_compose_rules() -> None:
    assert interpolate_compose("a ${X:-4} $${y} ${Z}") == "a 4 ${y} "
    assert interpolate_compose("a ${X:-4} ${Z} ${P:?no}", {"X": "5", "Z": "z", "P": "p"}) == "a 5 z p"
    assert interpolate_compose("${X-4}${Y:-}", {}) == "4"
    for text in ("${P:?set P}", "${P?set P}"):
        with pytest.raises(ComposeVariableMissing, match="P: set P"):
            interpolate_compose(text)
