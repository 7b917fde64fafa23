"""The locked dependency set: consistent with pyproject.toml, and what this environment runs."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked(name: str) -> dict[str, str]:
    """Package -> pinned version, for the pins whose marker applies to this interpreter."""
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        m = PIN.match(line)
        if not m:
            continue
        pkg, version, marker = m.groups()
        if marker and not Requirement(f"x; {marker}").marker.evaluate():  # type: ignore[union-attr]
            continue
        pins[canonicalize_name(pkg)] = version
    return pins


def declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if canonicalize_name(r.name) != "gridwatch"]


@pytest.mark.parametrize(
    ("lock", "extras"), [("dev.lock", ("dev", "parquet", "build")), ("runtime.lock", ("build",))]
)
def test_lock_pins_every_declared_requirement_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    pins = locked(lock)
    for req in declared(*extras):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared but not in requirements/{lock}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {req.name}=={pins[name]}, outside {req}: run `make lock`"
        )


def test_runtime_lock_is_the_tested_set() -> None:
    dev, runtime = locked("dev.lock"), locked("runtime.lock")
    differing = {p: (v, dev.get(p)) for p, v in runtime.items() if dev.get(p) != v}
    assert not differing, f"runtime.lock pins differ from dev.lock (runtime, dev): {differing}"


def test_this_environment_runs_exactly_the_locked_versions() -> None:
    """What setup.sh installed is what the lock says (a floating install fails here first)."""
    wrong = {}
    for pkg, version in locked("dev.lock").items():
        try:
            installed = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            wrong[pkg] = (version, None)
            continue
        if installed != version:
            wrong[pkg] = (version, installed)
    assert not wrong, f"installed versions differ from requirements/dev.lock (locked, installed): {wrong}"
