"""Every GRIDWATCH_* name the deployment files use is a setting or a known tooling variable, so
a user who copies them into .env gets no "did you mean" warning for our own names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from streams.settings import PREFIX, TOOLING_VARIABLES, Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = (
    "docker-compose.yml",
    "Dockerfile",
    "Makefile",
    ".ci/",
    "scripts/",
    "grafana/",
    "prometheus/",
    "alertmanager/",
)


def test_deployment_files_use_only_known_variables() -> None:
    files = subprocess.run(
        ["git", "ls-files", *DEPLOYMENT], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "docker-compose.yml" in files and len(files) > 10
    settings = {PREFIX + name.upper() for name in Settings.model_fields}
    unknown = {}
    for name in files:
        for var in re.findall(r"GRIDWATCH_[A-Z0-9_]*[A-Z0-9]", (ROOT / name).read_text()):
            if var not in settings and var not in TOOLING_VARIABLES:
                unknown.setdefault(var, name)
    assert not unknown, f"neither a setting nor in streams.settings.TOOLING_VARIABLES: {unknown}"
