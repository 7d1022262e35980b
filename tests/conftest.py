"""Fixtures shared by the core tests: isolated config/weights and image files."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from support import SHARED


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """Points artchain at an empty weights directory so no test sees another's files."""
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("ARTCHAIN_WEIGHTS_DIR", str(weights))
    monkeypatch.delenv("ARTCHAIN_CONFIG", raising=False)
    monkeypatch.delenv("ARTCHAIN_DEVICE", raising=False)
    return {**os.environ, "ARTCHAIN_WEIGHTS_DIR": str(weights)}


@pytest.fixture
def photo(tmp_path) -> Path:
    """A small real photo when the shared seed images are there, else a drawn gradient."""
    path = tmp_path / "photo.png"
    seed = SHARED / "seed-images" / "nature_original.png"
    if seed.is_file():
        image = Image.open(seed).convert("RGB")
        image.thumbnail((160, 160))
    else:
        image = Image.linear_gradient("L").resize((160, 120)).convert("RGB")
    image.save(path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_redis(port: int, folder: Path, append_only: bool = False) -> subprocess.Popen:
    """A real redis-server on 127.0.0.1:`port`, answering PING before this returns."""
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "yes" if append_only else "no", "--appendfsync", "always",
                               "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.1)


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server of the test's own on 127.0.0.1 (skips, saying so, where it is missing)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    server = start_redis(port, tmp_path)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)
