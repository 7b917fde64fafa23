"""Every failure a new user meets is one line on stderr with what to do, and exit 1 (runtime) or
2 (usage, settings, input). The CLI runs as a subprocess in a fresh directory, as a user runs it.

"No broker" needs no broker: a loopback port nobody listens on, and a 1 s connect time-out.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from local.kafka import LocalKafka
from local.run import free_port

REPO = Path(__file__).resolve().parents[1]
METER_HEADER = ["meter_id", "area_id", "role", "multiplier", "customer_class", "active", "effective_from"]
METER_ROWS = [
    ["SA", "A", "supply", "80", "supply", "true", "1970-01-01T00:00:00Z"],
    ["a1", "A", "customer", "1", "residential", "true", "1970-01-01T00:00:00Z"],
]
NO_BROKER_HINT = "start one with `gridwatch broker start` or set GRIDWATCH_BOOTSTRAP"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def gridwatch(*args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 90) -> Run:
    """`gridwatch ARGS` from this checkout, in ``cwd``, with only the GRIDWATCH_* variables given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    base["PYTHONPATH"] = str(REPO)
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - began)


def one_line_error(run: Run, code: int, prefix: str) -> str:
    """The run failed with ``code`` and one line on stderr starting with ``prefix``; returns it."""
    assert run.code == code, run
    assert "Traceback" not in run.stderr, run.stderr
    assert len(run.error_lines) == 1, run.stderr
    assert run.error_lines[0].startswith(prefix), run.stderr
    return run.error_lines[0]


def write_csv(
    path: Path, rows: list[list[str]], *, delimiter: str = ",", newline: str = "\n", bom: bool = False
) -> Path:
    text = "".join(delimiter.join(cells) + newline for cells in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def recording(path: Path) -> Path:
    """A one-record file in `gridwatch record`'s format."""
    header = {"format": "gridwatch-record", "version": 1, "topics": {"t": {"partitions": 1, "records": 1}}}
    rec = {
        "topic": "t",
        "partition": 0,
        "offset": 0,
        "timestamp_ms": 1767225600000,
        "timestamp_type": 0,
        "key": base64.b64encode(b"k").decode(),
        "value": base64.b64encode(b"v").decode(),
    }
    path.write_text(json.dumps(header) + "\n" + json.dumps(rec) + "\n")
    return path


# ---- no broker: every command that talks to Kafka ----------------------------------------------

NO_BROKER_COMMANDS = {
    "topics": ["topics"],
    "topology load": ["topology", "load", "meters.csv"],
    "worker": ["worker"],
    "notify": ["notify"],
    "record": ["record", "t", "--out", "out.jsonl"],
    "replay": ["replay", "rec.jsonl"],
    "simulate": ["simulate", "--to", "kafka", "--areas", "1", "--days", "0.05", "--no-progress"],
}


@pytest.fixture(scope="module")
def no_broker_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Run, Path, str]]]:
    """Every Kafka command against a port nobody listens on, each in its own fresh directory,
    run side by side (they spend most of their time waiting)."""
    bootstrap = f"127.0.0.1:{free_port()}"
    env = {"GRIDWATCH_BOOTSTRAP": bootstrap, "GRIDWATCH_CONNECT_TIMEOUT_S": "1"}
    dirs = {}
    for name in NO_BROKER_COMMANDS:
        d = tmp_path_factory.mktemp(name.replace(" ", "-"))
        write_csv(d / "meters.csv", [METER_HEADER, *METER_ROWS])
        recording(d / "rec.jsonl")
        dirs[name] = d
    with ThreadPoolExecutor(len(NO_BROKER_COMMANDS)) as pool:
        futures = {
            name: pool.submit(gridwatch, *args, cwd=dirs[name], env=env)
            for name, args in NO_BROKER_COMMANDS.items()
        }
        yield {name: (f.result(), dirs[name], bootstrap) for name, f in futures.items()}


@pytest.mark.parametrize("command", list(NO_BROKER_COMMANDS))
def test_no_broker_is_one_line_exit_1(no_broker_runs: dict[str, tuple[Run, Path, str]], command: str) -> None:
    run, cwd, bootstrap = no_broker_runs[command]
    line = one_line_error(run, 1, f"gridwatch {command}: no Kafka broker reachable at {bootstrap}")
    assert line.endswith(NO_BROKER_HINT)
    assert run.stdout == ""


def test_worker_without_broker_fails_on_the_broker_not_the_data_dir(
    no_broker_runs: dict[str, tuple[Run, Path, str]],
) -> None:
    run, cwd, _ = no_broker_runs["worker"]
    assert "FileNotFoundError" not in run.stderr and ".gridwatch/worker" not in run.stderr
    assert not (cwd / ".gridwatch").exists()  # nothing created for a worker that never ran


# ---- the local broker's port -------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port someone else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(
    "args", [["run", "--port"], ["broker", "start", "--port"]], ids=["run", "broker start"]
)
def test_port_in_use_is_said_before_starting_kafka(tmp_path: Path, taken_port: int, args: list[str]) -> None:
    run = gridwatch(*args, str(taken_port), cwd=tmp_path)
    command = " ".join(a for a in args if not a.startswith("-"))
    line = one_line_error(run, 1, f"gridwatch {command}: port {taken_port} on 127.0.0.1 is in use")
    assert "--port" in line


@pytest.mark.parametrize(
    ("command", "variable"),
    [
        ("worker", "GRIDWATCH_METRICS_PORT"),
        ("worker", "GRIDWATCH_WEB_PORT"),
        ("notify", "GRIDWATCH_NOTIFY_METRICS_PORT"),
    ],
)
def test_endpoint_port_in_use_names_the_variable(
    tmp_path: Path, taken_port: int, command: str, variable: str
) -> None:
    run = gridwatch(command, cwd=tmp_path, env={variable: str(taken_port)})
    line = one_line_error(run, 1, f"gridwatch {command}: port {taken_port} on 127.0.0.1 is in use")
    assert line.endswith(f"set {variable}")


# ---- settings ----------------------------------------------------------------------------------


def test_bad_setting_names_the_variable_and_its_source(tmp_path: Path) -> None:
    run = gridwatch("topics", cwd=tmp_path, env={"GRIDWATCH_PARTITIONS": "four"})
    line = one_line_error(run, 2, "gridwatch topics: GRIDWATCH_PARTITIONS='four' (environment): ")
    assert "valid integer" in line


def test_bad_setting_in_dotenv_and_each_problem_on_its_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GRIDWATCH_WINDOW_S=10\nGRIDWATCH_BOOTSTRAP=localhost\n")
    run = gridwatch("worker", cwd=tmp_path)
    assert run.code == 2 and "Traceback" not in run.stderr
    assert sorted(run.error_lines) == [
        "gridwatch worker: GRIDWATCH_BOOTSTRAP='localhost' (.env): expected host:port[,host:port...], "
        "got 'localhost'",
        "gridwatch worker: GRIDWATCH_WINDOW_S='10' (.env): Input should be greater than or equal to 60",
    ]


def test_settings_that_do_not_fit_together(tmp_path: Path) -> None:
    run = gridwatch("topics", cwd=tmp_path, env={"GRIDWATCH_WINDOW_S": "1000"})
    line = one_line_error(run, 2, "gridwatch topics: ")
    assert line.endswith("GRIDWATCH_WINDOW_S=1000 is not a multiple of GRIDWATCH_INTERVAL_S=900")


def test_typo_is_warned_with_the_closest_name_from_env_and_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("GRIDWATCH_WINDOWS_S=86400\n")
    run = gridwatch(
        "settings", cwd=tmp_path, env={"GRIDWATCH_BOOTSTAP": "10.0.0.1:9092", "GRIDWATCH_CACHE": "/x"}
    )
    assert run.code == 0, run
    assert run.error_lines == [
        "gridwatch: warning: GRIDWATCH_BOOTSTAP in the environment is not a setting: "
        "did you mean GRIDWATCH_BOOTSTRAP?",
        "gridwatch: warning: GRIDWATCH_WINDOWS_S in .env is not a setting: did you mean GRIDWATCH_WINDOW_S?",
    ]
    shown = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()}
    assert shown["GRIDWATCH_WINDOW_S"] == ["900", "default"]  # the typo changed nothing
    assert shown["GRIDWATCH_BOOTSTRAP"] == ["127.0.0.1:9092", "default"]


def test_settings_shows_effective_values_and_hides_secrets(tmp_path: Path) -> None:
    secret = "s3cret-webhook-key-0123456789"
    (tmp_path / ".env").write_text("GRIDWATCH_WINDOW_S=3600\n")
    env = {
        "GRIDWATCH_WEBHOOK_SECRET": secret,
        "GRIDWATCH_SASL_PASSWORD": "hunter2hunter2",
        "GRIDWATCH_PARTITIONS": "8",
    }
    run = gridwatch("settings", cwd=tmp_path, env=env)
    assert run.code == 0 and run.stderr == "", run
    assert secret not in run.stdout and "hunter2" not in run.stdout
    shown = {line.split()[0]: " ".join(line.split()[1:]) for line in run.stdout.splitlines()}
    assert shown["GRIDWATCH_WEBHOOK_SECRET"] == "(set, hidden) environment"
    assert shown["GRIDWATCH_SASL_PASSWORD"] == "(set, hidden) environment"
    assert shown["GRIDWATCH_MASK_KEY"] == "(unset) default"
    assert shown["GRIDWATCH_PARTITIONS"] == "8 environment"
    assert shown["GRIDWATCH_WINDOW_S"] == "3600 .env"
    assert shown["GRIDWATCH_CONNECT_TIMEOUT_S"] == "5.0 default"


# ---- meters CSV --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "meters.csv: the file is empty: expected a header (meter_id, area_id, multiplier) and rows"),
        (",".join(METER_HEADER) + "\n", "meters.csv: no rows after the header"),
        (
            ",".join(METER_HEADER) + "\nb1,B,customer,,residential,true,1970-01-01T00:00:00Z\n",
            "meters.csv: line 2: multiplier is blank: give the CT x PT ratio (1 for a direct meter)",
        ),
        (
            "meter_id;area_id\nm1;A\n",
            "meters.csv: line 1: no column multiplier in the header (meter_id, area_id; delimiter ';')",
        ),
    ],
    ids=["empty", "header only", "blank multiplier", "no multiplier column"],
)
def test_bad_meters_csv_is_one_line_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "meters.csv").write_text(text)
    run = gridwatch("topology", "load", "meters.csv", cwd=tmp_path)
    assert one_line_error(run, 2, "gridwatch topology load: ") == f"gridwatch topology load: {expected}"


def test_every_bad_row_is_listed_with_its_line(tmp_path: Path) -> None:
    rows = [
        METER_HEADER,
        METER_ROWS[1],
        ["a2", "A", "customer", "", "residential", "true", ""],
        ["a3", "A", "boss", "1", "residential", "true", ""],
        ["a4", "A", "customer", "1"],
    ]
    write_csv(tmp_path / "meters.csv", rows, delimiter=";", newline="\r\n", bom=True)
    run = gridwatch("topology", "load", "meters.csv", cwd=tmp_path)
    assert run.code == 2 and "Traceback" not in run.stderr
    assert run.error_lines == [
        "gridwatch topology load: meters.csv: 3 bad rows",
        "  line 3: multiplier is blank: give the CT x PT ratio (1 for a direct meter)",
        "  line 4: 'boss' is not a valid Role",
        "  line 5: 4 cells, the header has 7",
    ]


@pytest.mark.parametrize(
    ("delimiter", "newline", "bom", "dialect"),
    [
        (",", "\r\n", True, "delimiter ',', UTF-8 BOM, CRLF"),
        (";", "\r\n", True, "delimiter ';', UTF-8 BOM, CRLF"),
        ("\t", "\n", False, "delimiter tab"),
    ],
    ids=["excel-utf8", "excel-semicolon", "tab"],
)
def test_meters_csv_as_excel_saves_it_is_published(
    kafka_broker: LocalKafka, tmp_path: Path, delimiter: str, newline: str, bom: bool, dialect: str
) -> None:
    from streams.kafkaio import create_topics, read_topic
    from streams.topics import TopicSpec

    topic = f"topology-{tmp_path.name}"
    create_topics(kafka_broker.bootstrap, [TopicSpec(topic, 1)])
    write_csv(
        tmp_path / "meters.csv", [METER_HEADER, *METER_ROWS], delimiter=delimiter, newline=newline, bom=bom
    )
    env = {"GRIDWATCH_BOOTSTRAP": kafka_broker.bootstrap, "GRIDWATCH_TOPIC_TOPOLOGY": topic}
    run = gridwatch("topology", "load", "meters.csv", cwd=tmp_path, env=env)
    assert run.code == 0 and run.stderr == "", run
    assert run.stdout.strip() == f"published 2 meter records to {topic} (read meters.csv: {dialect})"
    published = [json.loads(r.value or b"") for r in read_topic(kafka_broker.bootstrap, topic)]
    assert [(m["meter_id"], m["role"], m["multiplier"]) for m in published] == [
        ("SA", "supply", 80.0),
        ("a1", "customer", 1.0),
    ]


# ---- a fresh directory -------------------------------------------------------------------------


def test_worker_in_a_fresh_directory_creates_its_data_dir(kafka_broker: LocalKafka, tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {
        "GRIDWATCH_BOOTSTRAP": kafka_broker.bootstrap,
        "GRIDWATCH_APP_ID": f"fresh-{tmp_path.name}",
        "GRIDWATCH_METRICS_PORT": str(metrics_port),
        "GRIDWATCH_WEB_PORT": str(free_port()),
        "GRIDWATCH_TOPIC_READINGS": f"fresh-{tmp_path.name}.readings",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRIDWATCH_")}
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "worker", "--loglevel", "warning"],
        cwd=tmp_path,
        env={**base, "PYTHONPATH": str(REPO), **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        up = False
        while time.monotonic() < deadline and proc.poll() is None and not up:
            time.sleep(0.5)
            with socket.socket() as s:
                up = s.connect_ex(("127.0.0.1", metrics_port)) == 0
        text = (tmp_path / "worker.log").read_text(errors="replace")
        assert up, text
        assert (tmp_path / ".gridwatch" / "worker").is_dir()
        assert "FileNotFoundError" not in text and "Traceback" not in text
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=60)
        log.close()


# ---- usage and help ----------------------------------------------------------------------------


def test_usage_error_is_one_line_exit_2(tmp_path: Path) -> None:
    run = gridwatch("simulate", "--to", "nowhere", cwd=tmp_path)
    line = one_line_error(run, 2, "gridwatch simulate: ")
    assert (
        "--to must be one of jsonl, jsonl.gz, parquet, kafka" in line and "gridwatch simulate --help" in line
    )


def test_help_lists_every_command_in_plain_text(tmp_path: Path) -> None:
    from typer.main import get_command

    from cli import app

    top = gridwatch("--help", cwd=tmp_path)
    assert top.code == 0
    group = get_command(app)
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        assert f"  {name} " in top.stdout, name
        assert cmd.help, name
    helps = [top.stdout] + [
        gridwatch(*c.split(), "--help", cwd=tmp_path).stdout
        for c in ("evaluate", "simulate", "run", "topology load", "broker start")
    ]
    for text in helps:
        assert text.startswith("Usage: gridwatch")
        for artefact in ("<bool>", "{", "``", "\x1b["):
            assert artefact not in text, (artefact, text)
    assert "Usage: gridwatch evaluate [OPTIONS] DIR\n" in helps[1]


def test_every_option_and_argument_is_described() -> None:
    from typer.main import get_command

    from cli import app

    def walk(cmd: object, path: str) -> Iterator[tuple[str, object]]:
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    missing = [
        f"{path} {param.name}"
        for path, cmd in walk(get_command(app), "gridwatch")
        for param in getattr(cmd, "params", [])
        if not getattr(param, "help", None)
    ]
    assert missing == []


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    run = gridwatch("--version", cwd=tmp_path)
    assert (run.code, run.stdout, run.stderr) == (0, f"gridwatch {version('gridwatch')}\n", "")
