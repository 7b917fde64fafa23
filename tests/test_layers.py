"""Layers import only downwards (docs/architecture.md): every module of the repo, every import.

An import inside a function or under TYPE_CHECKING counts too: a lazy import is still a
dependency, and the layer it reaches decides what a lower layer can be reused without.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Top-level module or package -> layer. A module imports from its own layer or lower ones.
LAYERS: dict[str, int] = {
    # the meter archive and the area topology: plain data, no framework
    "topology": 0,
    "archive": 0,
    "archive_csv": 0,
    "meter_directory": 0,
    # pure detectors and line-loss arithmetic
    "models": 1,
    # stream processing: the worker, its Kafka I/O, contracts, metrics, settings
    "streams": 2,
    # services and tools built on the worker's package
    "evaluation": 3,
    "notifier": 3,
    "local": 3,
    "store": 3,
    "simulator": 3,
    # entry points: the command line and the benchmark scripts
    "cli_errors": 4,
    "cli": 4,
    "benchmarks": 4,
}

SKIP = {"tests", ".git", ".gridwatch", "node_modules", ".venv", "build"}


def top_of(path: Path) -> str:
    """The top-level module or package a repo file belongs to."""
    rel = path.relative_to(REPO)
    return rel.parts[0].removesuffix(".py")


def repo_modules() -> list[Path]:
    """Every Python file of the repo outside the tests."""
    out = []
    for p in sorted(REPO.rglob("*.py")):
        parts = p.relative_to(REPO).parts
        if any(part in SKIP or part.startswith(".") for part in parts[:-1]):
            continue
        out.append(p)
    return out


def imported_tops(source: str, own_top: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in ``source``; relative imports stay in ``own_top``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            top = own_top if node.level else (node.module or "").split(".")[0]
            found.append((node.lineno, top))
    return found


def upward_imports(source: str, own_top: str) -> list[str]:
    """The imports of a module of ``own_top`` that reach a higher layer, as 'line N: top (layer)'."""
    mine = LAYERS[own_top]
    return [
        f"line {line}: {top} (layer {LAYERS[top]})"
        for line, top in imported_tops(source, own_top)
        if top in LAYERS and LAYERS[top] > mine
    ]


def test_every_module_has_a_layer() -> None:
    """A new top-level module or package must be placed in the table, not silently unchecked."""
    unplaced = sorted({top_of(p) for p in repo_modules()} - set(LAYERS))
    assert not unplaced, f"add to LAYERS in tests/test_layers.py: {unplaced}"


@pytest.mark.parametrize("path", repo_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_only_downwards(path: Path) -> None:
    top = top_of(path)
    if top not in LAYERS:
        pytest.fail(f"{top} has no layer (see test_every_module_has_a_layer)")
    bad = upward_imports(path.read_text(encoding="utf-8"), top)
    assert not bad, f"{path.relative_to(REPO)} (layer {LAYERS[top]}) imports upwards: {bad}"


def test_the_check_sees_lazy_relative_and_typing_imports() -> None:
    """The checker itself: each kind of upward import is caught, same-layer and third-party are not."""
    source = "\n".join(
        [
            "from __future__ import annotations",
            "import numpy",
            "from typing import TYPE_CHECKING",
            "from models.windows import snap",
            "from . import engine",
            "if TYPE_CHECKING:",
            "    from local.run import WorkerProcess",
            "def f():",
            "    import cli",
            "    from evaluation import report",
        ]
    )
    assert upward_imports(source, "streams") == [
        "line 7: local (layer 3)",
        "line 9: cli (layer 4)",
        "line 10: evaluation (layer 3)",
    ]
    assert upward_imports(source, "cli") == []
