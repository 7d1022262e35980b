"""Helpers the tests import (pytest puts tests/ on sys.path, see pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_file(*parts: str) -> Path:
    """A file from the seeds' shared folder beside the repository (never copied into it); the test
    is skipped, saying so, where that folder is absent."""
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent (shared/ is not beside the repository)")
    return path


def run_cli(*args, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Runs the installed `artchain` console script as a user would."""
    executable = Path(sys.executable).with_name("artchain")
    return subprocess.run([str(executable), *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)
