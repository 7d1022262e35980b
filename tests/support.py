"""Helpers the tests import (pytest puts tests/ on sys.path, see pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
import time
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


def start_worker(config: Path, name: str, log: Path, env: dict) -> subprocess.Popen:
    executable = Path(sys.executable).with_name("artchain")
    with open(log, "wb") as handle:
        return subprocess.Popen([str(executable), "--config", str(config), "worker", "--concurrency", "1",
                                 "--name", f"{name}@localhost"], stdout=handle, stderr=subprocess.STDOUT,
                                env={**env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def wait_for_text(log: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{log.name}: no {text!r} after {timeout}s:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
