"""A real single-node Apache Kafka broker (KRaft, combined broker+controller) on 127.0.0.1.

Why this exists: the detector's tests and `make run` need a genuine broker (group rebalances,
offsets, restarts), and the only sources reachable here are Maven Central and the machine's
Java 17 - no Docker, no release tarball. So the broker is assembled from Maven jars
(`broker/pom.xml` for 3.x, `broker/pom-4.xml` for 4.x, which logs through log4j2) and launched
straight from the JVM with a config written here.

Library use: `LocalKafka.start(tmpdir)` (tests); topics are created with streams.kafkaio.create_topics.
`LocalKafka.start(tmpdir, security=BrokerSecurity(...))` serves clients over SASL_SSL instead
(docs/security.md); the default stays a PLAINTEXT listener.
CLI use: `python -m local.kafka start|stop|status` keeps one detached broker per state dir.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

DEFAULT_VERSION = "3.9.2"
# Logged by KafkaRaftServer once broker and controller are both serving (3.9 and 4.x alike).
READY_LINE = "Kafka Server started"
# Mirrors KAFKA_HEAP_OPTS of the stock scripts, sized for a 2-core / small-RAM box.
HEAP_OPTS = ("-Xms256m", "-Xmx1g")
REPO = Path(__file__).resolve().parent.parent
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


class BrokerError(RuntimeError):
    """The broker could not be fetched, formatted or started; the message carries the log tail."""


SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# Credentials end up inside JAAS strings and StorageTool's `--add-scram` syntax: no quoting there.
_CREDENTIAL_RE = re.compile(r"^[A-Za-z0-9_.~+/@%^*!-]{1,128}$")


@dataclass(frozen=True)
class BrokerSecurity:
    """A SASL_SSL listener for clients (and for the broker itself), instead of PLAINTEXT.

    `keystore` holds the broker's private key and certificate chain (PKCS12 by default, JKS via
    `keystore_type`; key and store share `keystore_password`, as keytool makes them).
    `truststore` (optional, e.g. the CA as a PEM file with `truststore_type="PEM"`) is what the
    broker trusts when it connects to its own listener, and for client certificates when
    `client_auth` is "requested" or "required".

    One user, `username`/`password`, is accepted with every mechanism in `mechanisms`: PLAIN
    through the listener's JAAS config, SCRAM through credentials written into the metadata log
    when the storage is formatted (`--add-scram`, Kafka >= 3.5). The broker talks to itself
    (inter-broker) as that user with the first mechanism. The controller listener stays
    PLAINTEXT on loopback. Passwords are kept out of `repr` and written only to the work dir's
    server.properties (mode 0600): this is a test and demo broker, not a production one.
    """

    keystore: Path
    keystore_password: str = field(repr=False)
    username: str
    password: str = field(repr=False)
    keystore_type: str = "PKCS12"
    truststore: Path | None = None
    truststore_password: str | None = field(default=None, repr=False)
    truststore_type: str = "PKCS12"
    client_auth: str = "none"
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")

    def __post_init__(self) -> None:
        if not self.mechanisms or any(m not in SASL_MECHANISMS for m in self.mechanisms):
            raise BrokerError(f"mechanisms must be some of {SASL_MECHANISMS}, got {self.mechanisms}")
        for what, value in (("username", self.username), ("password", self.password)):
            if not _CREDENTIAL_RE.match(value):
                raise BrokerError(f"the SASL {what} must be 1-128 characters of [A-Za-z0-9_.~+/@%^*!-]")
        if self.client_auth not in ("none", "requested", "required"):
            raise BrokerError(f"client_auth must be none, requested or required, got {self.client_auth!r}")

    def server_properties(self, listener: str) -> dict[str, str]:
        """server.properties entries for the SASL_SSL listener named `listener`."""
        lower = listener.lower()
        user, pw = self.username, self.password
        props = {
            "sasl.enabled.mechanisms": ",".join(self.mechanisms),
            "sasl.mechanism.inter.broker.protocol": self.mechanisms[0],
            "ssl.keystore.type": self.keystore_type,
            "ssl.keystore.location": str(Path(self.keystore).resolve()),  # the JVM runs in the work dir
            "ssl.keystore.password": self.keystore_password,
            "ssl.key.password": self.keystore_password,
            "ssl.client.auth": self.client_auth,
        }
        if self.truststore is not None:
            props["ssl.truststore.type"] = self.truststore_type
            props["ssl.truststore.location"] = str(Path(self.truststore).resolve())
            if self.truststore_password is not None:
                props["ssl.truststore.password"] = self.truststore_password
        for mech in self.mechanisms:
            if mech == "PLAIN":
                module = "org.apache.kafka.common.security.plain.PlainLoginModule"
                jaas = f'{module} required username="{user}" password="{pw}" user_{user}="{pw}";'
            else:
                module = "org.apache.kafka.common.security.scram.ScramLoginModule"
                jaas = f'{module} required username="{user}" password="{pw}";'
            props[f"listener.name.{lower}.{mech.lower()}.sasl.jaas.config"] = jaas
        return props

    def format_args(self) -> list[str]:
        """StorageTool arguments that create the SCRAM user (none when only PLAIN is on)."""
        args: list[str] = []
        for mech in self.mechanisms:
            if mech.startswith("SCRAM-"):
                args += ["--add-scram", f"{mech}=[name={self.username},password={self.password}]"]
        return args


def cache_root() -> Path:
    """Jars are shared by every checkout/test run: `${GRIDWATCH_CACHE:-~/.cache/gridwatch}`."""
    env = os.environ.get("GRIDWATCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gridwatch"


def _major(version: str) -> int:
    if not _VERSION_RE.match(version):
        raise BrokerError(f"Kafka version must look like 3.9.2, got {version!r}")
    return int(version.split(".")[0])


def _pom_for(version: str) -> Path:
    """3.x logs through reload4j, 4.x through log4j2: each needs its own slf4j binding."""
    pom = REPO / "broker" / ("pom-4.xml" if _major(version) >= 4 else "pom.xml")
    if not pom.is_file():
        raise BrokerError(f"{pom} is missing: run from a gridwatch checkout (pip install -e .)")
    return pom


def _tool(name: str) -> str:
    """Find java (JAVA_HOME first, like Kafka's scripts) or mvn, or say how to get them."""
    if name == "java" and os.environ.get("JAVA_HOME"):
        candidate = Path(os.environ["JAVA_HOME"]) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise BrokerError(
            f"`{name}` not found on PATH: the local Kafka broker needs Java 17 and Maven "
            "(run `bash scripts/setup.sh`, or apt-get install openjdk-17-jre-headless maven)"
        )
    return found


def fetch_jars(version: str) -> Path:
    """Return the directory holding Kafka `version`'s runtime jars, fetching them once via Maven.

    The download lands in a temporary sibling and is renamed into place, so a half-finished
    fetch is never mistaken for a complete one and concurrent fetches do not collide.
    """
    libs = cache_root() / f"kafka-{version}" / "libs"
    if (libs / f"kafka_2.13-{version}.jar").is_file():
        return libs
    pom = _pom_for(version)
    mvn = _tool("mvn")
    _tool("java")
    libs.parent.mkdir(parents=True, exist_ok=True)
    tmp = libs.parent / f"libs.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not (tmp / f"kafka_2.13-{version}.jar").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        out = (proc.stdout + proc.stderr).strip().splitlines()[-30:]
        raise BrokerError(f"fetching Kafka {version} jars failed: {' '.join(cmd)}\n" + "\n".join(out))
    try:
        tmp.rename(libs)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not libs.is_dir():
            raise
    return libs


def _free_port(exclude: int = 0) -> int:
    """Ask the kernel for an unused loopback port (tests run in parallel sessions)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port != exclude:
            return port


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """True if something listens on (or holds) ``host:port``, so a broker could not bind it.

    SO_REUSEADDR as the JVM's server sockets set it: a port with only TIME_WAIT connections
    left by a stopped broker counts as free, as it is for Kafka.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _cluster_id() -> str:
    """Kafka's Uuid text form; like Uuid.randomUuid, avoid a leading '-' (read as a CLI flag)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _signal_group(pid: int, sig: int) -> None:
    """The broker runs in its own session, so its process group id is its pid."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no file)"


@dataclass
class LocalKafka:
    """One broker process over one work dir (config, `data/`, `server.log`, `stdout.log`).

    The data dir survives `stop()`/`kill()`, so `restart()` brings back the same topics,
    offsets and ports - what broker-restart tests need.
    """

    workdir: Path
    port: int
    controller_port: int
    version: str = DEFAULT_VERSION
    timeout: float = 90.0
    detached: bool = False
    overrides: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    start_seconds: float = 0.0
    security: BrokerSecurity | None = None

    @classmethod
    def start(
        cls,
        workdir: str | os.PathLike[str],
        port: int = 0,
        controller_port: int = 0,
        version: str = DEFAULT_VERSION,
        timeout: float = 90.0,
        detached: bool = False,
        overrides: Mapping[str, str] | None = None,
        security: BrokerSecurity | None = None,
    ) -> LocalKafka:
        """Start a broker and return once it serves. Ports of 0 are picked free.

        `detached=True` lets the broker outlive this Python process (the CLI); otherwise an
        atexit hook kills it so an aborted test run leaves no JVM behind. `overrides` adds or
        replaces server.properties entries (e.g. a shorter broker.session.timeout.ms).
        `security` makes `port` a SASL_SSL listener (see BrokerSecurity); the security of an
        existing data dir is fixed when it is first formatted (its SCRAM users live there).
        """
        wd = Path(workdir).resolve()
        wd.mkdir(parents=True, exist_ok=True)
        port = port or _free_port()
        controller_port = controller_port or _free_port(exclude=port)
        broker = cls(
            wd, port, controller_port, version, timeout, detached, dict(overrides or {}), security=security
        )
        broker._launch()
        if not detached:
            atexit.register(broker._kill_quietly)
        return broker

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def security_protocol(self) -> str:
        """What a client must speak on `port`: PLAINTEXT, or SASL_SSL with `security`."""
        return "PLAINTEXT" if self.security is None else "SASL_SSL"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _write_config(self) -> list[str]:
        """Write server.properties + the logging config; return the JVM logging flag."""
        wd = self.workdir
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(wd / "data"),
            "num.partitions": "4",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.dedupe.buffer.size": "33554432",
        }
        if self.security is not None:
            name = "SASL_SSL"
            props.update(
                {
                    "listeners": f"{name}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    "advertised.listeners": f"{name}://127.0.0.1:{self.port}",
                    "inter.broker.listener.name": name,
                    "listener.security.protocol.map": f"{name}:SASL_SSL,CONTROLLER:PLAINTEXT",
                    **self.security.server_properties(name),
                }
            )
        props.update(self.overrides)
        config = wd / "server.properties"
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        if self.security is None:
            config.write_text(text)
        else:  # it holds the SASL password: owner-only from the first byte
            fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        log = self.log_file
        if _major(self.version) >= 4:
            cfg = wd / "log4j2.properties"
            cfg.write_text(
                "status = warn\n"
                "appender.f.type = File\n"
                "appender.f.name = F\n"
                f"appender.f.fileName = {log}\n"
                "appender.f.layout.type = PatternLayout\n"
                "appender.f.layout.pattern = [%d] %p %m (%c)%n\n"
                "rootLogger.level = INFO\n"
                "rootLogger.appenderRef.f.ref = F\n"
            )
            return [f"-Dlog4j2.configurationFile={cfg}"]
        cfg = wd / "log4j.properties"
        cfg.write_text(
            "log4j.rootLogger=INFO, F\n"
            "log4j.appender.F=org.apache.log4j.FileAppender\n"
            f"log4j.appender.F.File={log}\n"
            "log4j.appender.F.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.F.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )
        return [f"-Dlog4j.configuration=file:{cfg}"]

    def _launch(self) -> None:
        libs = fetch_jars(self.version)
        java = _tool("java")
        wd = self.workdir
        log_flag = self._write_config()
        classpath = ["-cp", f"{libs}/*"]
        props = str(wd / "server.properties")
        if not (wd / "data" / "meta.properties").exists():
            fmt = subprocess.run(
                [
                    java,
                    *log_flag,
                    *classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    _cluster_id(),
                    "-c",
                    props,
                    *(self.security.format_args() if self.security is not None else []),
                ],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            if fmt.returncode != 0:
                raise BrokerError(
                    f"formatting {wd / 'data'} failed:\n{fmt.stdout}{fmt.stderr}\n{_tail(self.log_file)}"
                )
        # Only lines written after this offset count: the log is appended across restarts.
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        heap = os.environ.get("KAFKA_HEAP_OPTS", " ".join(HEAP_OPTS)).split()
        cmd = [
            java,
            *heap,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={wd}",
            *log_flag,
            *classpath,
            "kafka.Kafka",
            props,
        ]
        began = time.monotonic()
        with open(wd / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                cmd,
                cwd=wd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = began + self.timeout
        while True:
            if self._ready_since(offset):
                self.start_seconds = time.monotonic() - began
                return
            rc = self.process.poll()
            if rc is not None:
                self.process = None
                raise BrokerError(
                    f"Kafka {self.version} exited with {rc} while starting{self._cause(offset)} "
                    f"(log: {self.log_file}){self._logs(offset)}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(
                    f"Kafka {self.version} not ready after {self.timeout:.0f}s{self._logs(offset)}"
                )
            time.sleep(0.1)

    def _ready_since(self, offset: int) -> bool:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return READY_LINE.encode() in f.read()
        except FileNotFoundError:
            return False

    def _run_lines(self, offset: int) -> list[str]:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def _cause(self, offset: int) -> str:
        """': <the run's first ERROR message>' (without timestamp and logger), or ''."""
        for line in self._run_lines(offset):
            m = re.match(r"^\[[^\]]*\] (?:ERROR|FATAL) (.*?)(?: \([\w.$]+\))?$", line)
            if m:
                return f": {m.group(1)[:200]}"
        return ""

    def _logs(self, offset: int) -> str:
        """The run's ERROR/FATAL lines first: the tail alone is mostly shutdown noise."""
        run = self._run_lines(offset)
        errors = [line for line in run if " ERROR " in line or " FATAL " in line][:10]
        stdout = self.workdir / "stdout.log"
        return (
            f"\n--- errors in {self.log_file} ---\n"
            + "\n".join(errors)
            + f"\n--- {self.log_file} (tail) ---\n"
            + "\n".join(run[-20:])
            + f"\n--- {stdout} (tail) ---\n{_tail(stdout, 20)}"
        )

    def stop(self, timeout: float = 30) -> None:
        """Graceful shutdown (SIGTERM: controlled shutdown, clean logs), SIGKILL if it hangs."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: for tests of recovery after an unclean broker death."""
        proc = self.process
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        self.process = None

    def _kill_quietly(self) -> None:
        if self.running:
            self.kill()

    def restart(self, timeout: float = 30) -> LocalKafka:
        """Start again on the same ports and data dir (stopping first if still up)."""
        self.stop(timeout)
        self._launch()
        return self

    def __enter__(self) -> LocalKafka:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- a detached broker per state dir, for `make broker-start` / `make run` ---------------------


@dataclass(frozen=True)
class BrokerStatus:
    """What a state dir says about its detached broker."""

    state_dir: Path
    running: bool
    pid: int | None = None
    bootstrap: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.running:
            return f"kafka {self.version} running at {self.bootstrap} (pid {self.pid})"
        return f"no broker running for {self.state_dir}"


def default_state_dir() -> Path:
    return Path.cwd() / ".gridwatch" / "broker"


def _is_kafka(pid: int) -> bool:
    """Alive and really a Kafka JVM (a stale pidfile's pid may have been reused)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    except ChildProcessError:
        pass
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def status(state_dir: Path | None = None) -> BrokerStatus:
    """Report the broker recorded in `state_dir` (default `.gridwatch/broker` in the cwd)."""
    sd = (state_dir or default_state_dir()).resolve()
    try:
        info = json.loads((sd / "broker.json").read_text())
        pid = int((sd / "broker.pid").read_text().strip())
    except (OSError, ValueError):
        return BrokerStatus(sd, False)
    if not _is_kafka(pid):
        return BrokerStatus(sd, False)
    return BrokerStatus(sd, True, pid, str(info["bootstrap"]), str(info["version"]))


def start_background(
    state_dir: Path | None = None,
    port: int = 9092,
    version: str = DEFAULT_VERSION,
    timeout: float = 90.0,
) -> BrokerStatus:
    """Start a detached broker recording `broker.pid`, `bootstrap` and `broker.json` in state_dir.

    If one is already running there, say so and return it rather than start a second.
    The controller port is kept across starts so the data dir's quorum stays the same.
    """
    sd = (state_dir or default_state_dir()).resolve()
    current = status(sd)
    if current.running:
        print(f"already running: {current}", file=sys.stderr)
        return current
    controller_port = 0
    try:
        controller_port = int(json.loads((sd / "broker.json").read_text())["controller_port"])
    except (OSError, ValueError, KeyError):
        pass
    # Checked first: Kafka would only say so in server.log, after a 55-line Java stack.
    if port and port_taken(port):
        raise BrokerError(
            f"port {port} on 127.0.0.1 is in use (another Kafka? see `ss -ltnp 'sport = :{port}'`): "
            "stop it, or use another port (--port)"
        )
    if controller_port and port_taken(controller_port):
        controller_port = 0  # a fresh one; the voters are rewritten into server.properties
    broker = LocalKafka.start(
        sd,
        port=port,
        controller_port=controller_port,
        version=version,
        timeout=timeout,
        detached=True,
    )
    assert broker.pid is not None
    (sd / "broker.pid").write_text(f"{broker.pid}\n")
    (sd / "bootstrap").write_text(f"{broker.bootstrap}\n")
    info = {
        "pid": broker.pid,
        "bootstrap": broker.bootstrap,
        "port": broker.port,
        "controller_port": broker.controller_port,
        "version": version,
    }
    (sd / "broker.json").write_text(json.dumps(info, indent=2) + "\n")
    return BrokerStatus(sd, True, broker.pid, broker.bootstrap, version)


def stop_background(state_dir: Path | None = None, timeout: float = 30) -> bool:
    """Stop the detached broker of state_dir (SIGTERM, then SIGKILL); False if none was running."""
    st = status(state_dir)
    sd = st.state_dir
    if st.running and st.pid is not None:
        _signal_group(st.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_kafka(st.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _is_kafka(st.pid):
            _signal_group(st.pid, signal.SIGKILL)
            while _is_kafka(st.pid):
                time.sleep(0.1)
    (sd / "broker.pid").unlink(missing_ok=True)
    return st.running


def main(argv: list[str] | None = None) -> int:
    """`python -m local.kafka start|stop|status` - used by `make broker-start/-stop`."""
    ap = argparse.ArgumentParser(prog="python -m local.kafka", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("command", choices=["start", "stop", "status"])
    ap.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="default: .gridwatch/broker in the current directory",
    )
    ap.add_argument("--port", type=int, default=9092)
    ap.add_argument("--version", default=os.environ.get("GRIDWATCH_KAFKA_VERSION", DEFAULT_VERSION))
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args(argv)
    try:
        if args.command == "start":
            print(start_background(args.state_dir, args.port, args.version, args.timeout))
        elif args.command == "stop":
            was = stop_background(args.state_dir)
            print("stopped" if was else "no broker was running")
        else:
            st = status(args.state_dir)
            print(st)
            return 0 if st.running else 1
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
