"""Helpers the tests import (pytest puts tests/ on sys.path, see pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def run_cli(*args, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs the installed `artchain` console script as a user would."""
    executable = Path(sys.executable).with_name("artchain")
    return subprocess.run([str(executable), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
