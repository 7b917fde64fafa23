"""A local PostgreSQL server from Debian's `postgresql` package, on 127.0.0.1, for tests and `make run`.

Like local/kafka.py does for Kafka: `LocalPostgres.start(workdir)` runs `initdb` once (a
`gridwatch` role and database, a random password kept in the work dir, mode 0600) and starts
`postgres` on a free loopback port in its own session. The server refuses to run as root, so
when gridwatch runs as root the server runs as the `postgres` OS user (which the Debian
package creates) and the work dir is handed to it; its parent folders must let that user in
(tests use a fresh folder under /tmp, `make run` uses `.gridwatch/postgres`).
CLI use: `python -m local.postgres start|stop|status` keeps one detached server per state dir;
`psql "$(python -m local.postgres dsn)"` connects to it.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from local.kafka import _tail  # the same log tail in errors as the broker's
from local.run import free_port

if TYPE_CHECKING:
    import psycopg

DEBIAN_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # the OS user the Debian package creates; used only when we are root
DB = "gridwatch"
ROLE = "gridwatch"


class PostgresError(RuntimeError):
    """The server could not be found, initialised or started; the message carries the log tail."""


def bin_dir() -> Path:
    """The newest Debian server binaries (/usr/lib/postgresql/<ver>/bin), or say how to get them."""
    env = os.environ.get("GRIDWATCH_PG_BIN")
    if env:
        return Path(env)
    found = sorted(
        (p for p in DEBIAN_ROOT.glob("*/bin") if (p / "postgres").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise PostgresError(
            f"no PostgreSQL server under {DEBIAN_ROOT}: run `bash scripts/setup.sh` "
            "(or apt-get install postgresql), or set GRIDWATCH_PG_BIN"
        )
    return found[-1]


def _run_as() -> pwd.struct_passwd | None:
    """The OS user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresError(
            f"running as root and there is no `{SERVER_USER}` OS user for the server "
            "(apt-get install postgresql creates it)"
        ) from None


@dataclass
class LocalPostgres:
    """One server over one work dir (`data/`, `server.log`, `password`); data survives stop()."""

    workdir: Path
    port: int
    detached: bool = False
    timeout: float = 60.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls, workdir: str | os.PathLike[str], port: int = 0, detached: bool = False, timeout: float = 60.0
    ) -> LocalPostgres:
        """Initialise (first time) and start the server; return once it accepts connections."""
        wd = Path(workdir).resolve()
        wd.mkdir(parents=True, exist_ok=True)
        server = cls(wd, port or free_port(), detached, timeout)
        server._launch()
        if not detached:
            atexit.register(server._kill_quietly)
        return server

    @property
    def password(self) -> str:
        return (self.workdir / "password").read_text().strip()

    @property
    def dsn(self) -> str:
        """A libpq connection string for the `gridwatch` database."""
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DB}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _as_user(self) -> tuple[int | None, int | None]:
        """(uid, gid) for subprocess: None (ourselves) unless we are root."""
        user = _run_as()
        return (None, None) if user is None else (user.pw_uid, user.pw_gid)

    def _initdb(self, bins: Path) -> None:
        wd, data = self.workdir, self.workdir / "data"
        pwfile = wd / "password"
        if not pwfile.exists():
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
        user = _run_as()
        if user is not None:  # the server's user owns its files; the password stays readable to it
            for path in (wd, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
            if not os.access(wd, os.X_OK) or not _reachable(wd, user):
                raise PostgresError(f"{wd} is not reachable by the OS user {SERVER_USER!r}")
        proc = subprocess.run(
            [
                str(bins / "initdb"),
                "-D",
                str(data),
                "-U",
                ROLE,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=wd,
            user=self._as_user()[0],
            group=self._as_user()[1],
        )
        if proc.returncode != 0:
            shutil.rmtree(data, ignore_errors=True)
            raise PostgresError(f"initdb {data} failed:\n{proc.stdout}{proc.stderr}")

    def _launch(self) -> None:
        bins = bin_dir()
        wd, data = self.workdir, self.workdir / "data"
        fresh = not (data / "PG_VERSION").exists()
        if fresh:
            self._initdb(bins)
        sockets = wd / "run"
        sockets.mkdir(exist_ok=True)
        user = _run_as()
        if user is not None:
            os.chown(sockets, user.pw_uid, user.pw_gid)
        cmd = [
            str(bins / "postgres"),
            "-D",
            str(data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={sockets}",
            # a test and demo server: durable commits, but small memory and no fsync storms
            "-c",
            "shared_buffers=128MB",
            "-c",
            "max_connections=40",
            "-c",
            "max_wal_size=1GB",
        ]
        with open(self.log_file, "ab") as log:
            if user is not None:
                os.chown(self.log_file, user.pw_uid, user.pw_gid)
            self.process = subprocess.Popen(
                cmd,
                cwd=wd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=self._as_user()[0],
                group=self._as_user()[1],
            )
        deadline = time.monotonic() + self.timeout
        while not self._ready():
            if self.process.poll() is not None:
                rc = self.process.returncode
                self.process = None
                raise PostgresError(f"postgres exited with {rc} while starting:\n{_tail(self.log_file)}")
            if time.monotonic() > deadline:
                self.kill()
                raise PostgresError(f"postgres not ready after {self.timeout:.0f}s:\n{_tail(self.log_file)}")
            time.sleep(0.1)
        if fresh:
            self._create_db()

    def _admin(self, **kw: Any) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection to the maintenance database as the gridwatch role."""
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=ROLE, password=self.password, dbname="postgres", **kw
        )

    def _ready(self) -> bool:
        import psycopg

        try:
            with self._admin(connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _create_db(self) -> None:
        with self._admin(autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone() is None:
                conn.execute(f"CREATE DATABASE {DB}")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back open transactions, checkpoint), SIGKILL if it hangs."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.process = None

    def kill(self) -> None:
        proc = self.process
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.process = None

    def _kill_quietly(self) -> None:
        if self.running:
            self.stop(timeout=10)

    def __enter__(self) -> LocalPostgres:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _reachable(path: Path, user: pwd.struct_passwd) -> bool:
    """Every parent of `path` lets `user` through (x for others, or owned by it)."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid != user.pw_uid and not st.st_mode & 0o001:
            return False
    return True


# --- a detached server per state dir, for `make run` -------------------------------------------


def default_state_dir() -> Path:
    return Path.cwd() / ".gridwatch" / "postgres"


@dataclass(frozen=True)
class PostgresStatus:
    state_dir: Path
    running: bool
    pid: int | None = None
    dsn: str | None = None

    def __str__(self) -> str:
        if self.running and self.dsn:
            shown = self.dsn.split("@", 1)[-1]
            return f"postgres running at {shown} (pid {self.pid}, password in {self.state_dir / 'password'})"
        return f"no postgres running for {self.state_dir}"


def _is_postgres(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"postgres")
    except OSError:
        return False


def status(state_dir: Path | None = None) -> PostgresStatus:
    sd = (state_dir or default_state_dir()).resolve()
    try:
        info = json.loads((sd / "postgres.json").read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError):
        return PostgresStatus(sd, False)
    if not _is_postgres(pid):
        return PostgresStatus(sd, False)
    return PostgresStatus(sd, True, pid, str(info["dsn"]))


def start_background(state_dir: Path | None = None, port: int = 0) -> PostgresStatus:
    """Start a detached server recording its pid and DSN in `postgres.json` (mode 0600)."""
    sd = (state_dir or default_state_dir()).resolve()
    current = status(sd)
    if current.running:
        return current
    if not port:
        try:
            port = int(json.loads((sd / "postgres.json").read_text())["port"])
        except (OSError, ValueError, KeyError):
            port = 0
    server = LocalPostgres.start(sd, port=port, detached=True)
    assert server.process is not None
    info = {"pid": server.process.pid, "port": server.port, "dsn": server.dsn}
    target = sd / "postgres.json"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(info, indent=2) + "\n")
    return PostgresStatus(sd, True, server.process.pid, server.dsn)


def stop_background(state_dir: Path | None = None, timeout: float = 30.0) -> bool:
    st = status(state_dir)
    if st.running and st.pid is not None:
        os.killpg(st.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while _is_postgres(st.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _is_postgres(st.pid):
            os.killpg(st.pid, signal.SIGKILL)
    return st.running


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m local.postgres", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("command", choices=["start", "stop", "status", "dsn"])
    ap.add_argument("--state-dir", type=Path, default=None, help="default: .gridwatch/postgres")
    ap.add_argument("--port", type=int, default=0, help="default: the last one, else a free one")
    args = ap.parse_args(argv)
    try:
        if args.command == "start":
            print(start_background(args.state_dir, args.port))
        elif args.command == "stop":
            print("stopped" if stop_background(args.state_dir) else "no postgres was running")
        else:
            st = status(args.state_dir)
            print(st.dsn if args.command == "dsn" and st.dsn else st)
            return 0 if st.running else 1
    except PostgresError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
