"""Scale-out through Celery and a real redis-server: two real worker processes, 20 jobs, one
worker killed with SIGKILL mid-job; every job's result must come back exactly once."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from artchain.core.config import load_config
from artchain.core.errors import ImageError
from artchain.core.jobs import ATTACHMENTS, JobRequest
from support import run_cli

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (Debian: apt-get install redis-server)")

# Upscale x4 and back on 800x600: long enough (~1 s) that a kill lands mid-job.
CHAIN = "resize:scale=4,resize-back"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def queue_config(tmp_path, redis_url, isolated_env):
    path = tmp_path / "queue.yaml"
    path.write_text(yaml.safe_dump({
        "device": "cpu",
        "executor": "celery",
        "queue": {"broker_url": redis_url, "name": "artchain-test", "visibility_timeout": 8,
                  "time_limit": 60, "preload": [CHAIN]}}))
    return path


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


def picture(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((800 + index, 600 + index), 30).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_two_workers_one_killed_every_result_once(tmp_path, queue_config, isolated_env):
    from artchain.core.queue import CeleryExecutor

    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [start_worker(queue_config, f"w{i + 1}", logs[i], isolated_env) for i in range(2)]
    try:
        for log in logs:
            wait_for_text(log, "ready.", 120)
        executor = CeleryExecutor(load_config(queue_config))

        async def submit_all():
            jobs = [asyncio.create_task(executor.submit(JobRequest(CHAIN, picture(i), "PNG", f"job{i}")))
                    for i in range(20)]
            # Kill worker 1 (its whole process group, as if the machine died) once it holds a job.
            await asyncio.to_thread(wait_for_text, logs[0], "received", 120)
            os.killpg(workers[0].pid, signal.SIGKILL)
            return await asyncio.gather(*jobs)

        results = asyncio.run(asyncio.wait_for(submit_all(), timeout=300))
        executor.shutdown()
    finally:
        for process in workers:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)
    assert len(results) == 20
    for index, result in enumerate(results):
        assert result.size == (800 + index, 600 + index), f"job{index} got someone else's result"
        assert Image.open(io.BytesIO(result.image)).size == result.size
    survivor = logs[1].read_text()
    assert "succeeded" in survivor and "Traceback" not in survivor
    # The killed worker had taken a job it never finished: the survivor must have run it again.
    killed_jobs = logs[0].read_text().count("received")
    finished_by_killed = logs[0].read_text().count("succeeded")
    assert killed_jobs > finished_by_killed
    assert survivor.count("succeeded") >= 20 - finished_by_killed


@pytest.mark.slow
def test_a_bad_job_fails_for_good_and_a_style_image_travels_with_its_job(tmp_path, queue_config, isolated_env):
    from artchain.core.queue import CeleryExecutor

    log = tmp_path / "w.log"
    worker = start_worker(queue_config, "solo", log, isolated_env)
    try:
        wait_for_text(log, "ready.", 120)
        executor = CeleryExecutor(load_config(queue_config))
        with pytest.raises(ImageError, match="broken.jpg: not an image file"):
            asyncio.run(executor.submit(JobRequest(CHAIN, b"not an image", "PNG", "broken.jpg")))
        # The style exists only inside the job: the worker must materialise it for the nst step.
        styled = asyncio.run(executor.submit(JobRequest(
            f"nst:style={ATTACHMENTS}/style.png:size=48:steps=2:scales=1", picture(0), "PNG", "content.png",
            attachments={"style.png": picture(7)})))
        assert styled.size == (48, 36) and styled.chain.startswith("nst:style=")
        with pytest.raises(ImageError, match="not a plain file name"):
            asyncio.run(executor.submit(JobRequest(CHAIN, picture(0), "PNG", "sneaky.png",
                                                   attachments={"../escape.png": picture(1)})))

        async def give_up_on_a_long_job():
            received = log.read_text().count("received")
            long_job = asyncio.create_task(executor.submit(JobRequest(
                f"nst:style={ATTACHMENTS}/style.png:size=256:steps=5000:scales=1:plateau=0", picture(0),
                attachments={"style.png": picture(7)})))
            while log.read_text().count("received") == received:  # until the worker holds it
                await asyncio.sleep(0.1)
            await asyncio.sleep(1)
            long_job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long_job
            started = time.monotonic()
            await executor.submit(JobRequest(CHAIN, picture(0)))
            return time.monotonic() - started

        # The abandoned job (minutes of work) is revoked, so the single worker is free at once.
        assert asyncio.run(give_up_on_a_long_job()) < 30
        executor.shutdown()
        # The command line sends the style file's bytes along too.
        content, style, output = tmp_path / "content.png", tmp_path / "style.png", tmp_path / "out.png"
        content.write_bytes(picture(0))
        style.write_bytes(picture(5))
        result = run_cli("--config", queue_config, "run", "--remote", f"nst:style={style}:size=40:steps=2:scales=1",
                         content, "-o", output, env=isolated_env)
        assert result.returncode == 0, result.stderr
        assert Image.open(output).size == (40, 30)
        assert f"{ATTACHMENTS}" not in result.stdout and "artchain-job-" in result.stdout
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
