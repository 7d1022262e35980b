"""Scale-out through Celery and a real redis-server: two real worker processes, 20 jobs, one
worker killed with SIGKILL mid-job; every job's result must come back exactly once."""
from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import time

import pytest
import yaml
from PIL import Image

from artchain.core.chain import StepSpec, parse_steps
from artchain.core.errors import ImageError
from artchain.core.job import InputFile, Job
from artchain.runtime import Runtime, load_settings
from conftest import free_port, start_redis
from support import run_cli, start_worker, wait_for_text

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (Debian: apt-get install redis-server)")

# Upscale x4 and back on 800x600: long enough (~1 s) that a kill lands mid-job.
CHAIN = "resize:scale=4,resize-back"


@pytest.fixture
def queue_config(tmp_path, redis_url, isolated_env):
    path = tmp_path / "queue.yaml"
    path.write_text(yaml.safe_dump({
        "device": "cpu",
        "executor": "celery",
        "queue": {"broker_url": redis_url, "name": "artchain-test", "visibility_timeout": 8,
                  "time_limit": 60, "preload": [CHAIN]}}))
    return path


def job(chain: str, image: bytes, name: str = "image", files=None) -> Job:
    return Job(parse_steps(chain), InputFile(name, image), files or {})


def picture(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((800 + index, 600 + index), 30).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_two_workers_one_killed_every_result_once(tmp_path, queue_config, isolated_env):
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [start_worker(queue_config, f"w{i + 1}", logs[i], isolated_env) for i in range(2)]
    try:
        for log in logs:
            wait_for_text(log, "ready.", 120)
        executor = Runtime(load_settings(queue_config)).celery_executor()

        async def submit_all():
            jobs = [asyncio.create_task(executor.submit(job(CHAIN, picture(i), f"job{i}")))
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
    log = tmp_path / "w.log"
    worker = start_worker(queue_config, "solo", log, isolated_env)
    style = {(0, "style"): (InputFile("style.png", picture(7)),)}
    try:
        wait_for_text(log, "ready.", 120)
        executor = Runtime(load_settings(queue_config)).celery_executor()
        with pytest.raises(ImageError, match="broken.jpg: not an image file"):
            asyncio.run(executor.submit(job(CHAIN, b"not an image", "broken.jpg")))
        # The style exists only inside the job, keyed by its step and parameter.
        styled = asyncio.run(executor.submit(Job(
            (StepSpec("nst", {"size": "48", "steps": "2", "scales": "1"}),), InputFile("content.png", picture(0)),
            style)))
        assert styled.size == (48, 36) and styled.chain.startswith("nst:")
        with pytest.raises(ImageError, match="nst style broken.png: not an image file"):
            asyncio.run(executor.submit(job("nst:size=48", picture(0), files={
                (0, "style"): (InputFile("broken.png", b"GIF89a but not really"),)})))

        async def give_up_on_a_long_job():
            received = log.read_text().count("received")
            long_job = asyncio.create_task(executor.submit(job(
                "nst:size=256:steps=5000:scales=1:plateau=0", picture(0), files=style)))
            while log.read_text().count("received") == received:  # until the worker holds it
                await asyncio.sleep(0.1)
            await asyncio.sleep(1)
            long_job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long_job
            started = time.monotonic()
            await executor.submit(job(CHAIN, picture(0)))
            return time.monotonic() - started

        # The abandoned job (minutes of work) is revoked, so the single worker is free at once.
        assert asyncio.run(give_up_on_a_long_job()) < 30
        executor.shutdown()
        # The command line sends the style file's bytes along too.
        content, style, output = tmp_path / "content.png", tmp_path / "style.png", tmp_path / "out.png"
        content.write_bytes(picture(0))  # the worker never sees this path, only the job's bytes
        style.write_bytes(picture(5))
        result = run_cli("--config", queue_config, "run", "--remote", f"nst:style={style}:size=40:steps=2:scales=1",
                         content, "-o", output, env=isolated_env)
        assert result.returncode == 0, result.stderr
        assert Image.open(output).size == (40, 30)
        # The worker ran the step with the style (without its bytes it refuses: "the job does not include").
        assert f"nst:style={style}" in result.stdout
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)


@pytest.mark.slow
def test_a_broker_restart_loses_no_job(tmp_path, isolated_env):
    """Redis stopped and started again (append-only file on, as in deploy/compose.yaml) while three
    clients wait on twelve jobs: every client gets its own result, nothing fails."""
    port = free_port()
    redis = start_redis(port, tmp_path, append_only=True)
    config = tmp_path / "queue.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "queue": {
        "broker_url": f"redis://127.0.0.1:{port}/0", "name": "restart", "visibility_timeout": 30,
        "time_limit": 120}}))
    log = tmp_path / "worker.log"
    worker = start_worker(config, "survivor", log, isolated_env)
    try:
        wait_for_text(log, "ready.", 120)
        clients = [Runtime(load_settings(config)).celery_executor() for _ in range(3)]

        async def scenario():
            jobs = [asyncio.create_task(clients[i % 3].submit(job(CHAIN, picture(i), f"job{i}"))) for i in range(12)]
            await asyncio.to_thread(wait_for_text, log, "succeeded", 120)  # mid-run
            redis.terminate()
            await asyncio.to_thread(redis.wait, 10)
            await asyncio.sleep(2)
            restarted = await asyncio.to_thread(start_redis, port, tmp_path, True)
            try:
                return await asyncio.gather(*jobs)
            finally:
                for client in clients:
                    client.shutdown()
                restarted.terminate()
                restarted.wait(timeout=10)

        results = asyncio.run(asyncio.wait_for(scenario(), 300))
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        if redis.poll() is None:
            redis.kill()
    assert [result.size for result in results] == [(800 + i, 600 + i) for i in range(12)]
    assert "Traceback" not in log.read_text()
