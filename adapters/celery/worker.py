"""The worker side: `artchain worker` takes jobs from the queue and runs them with this process's
engine (prefork pool: hard time limits work, and a job whose pool process dies goes back to the
queue at once)."""
from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, signals

from artchain.core.errors import ArtchainError
from artchain.core.job import Job, JobStatus, run_job
from artchain.runtime import Runtime

from .app import PROGRESS_STATE, TASK_NAME, make_app

log = logging.getLogger(__name__)
PROGRESS_EVERY_SECONDS = 0.5


class _Worker:
    """This pool process's runtime; each process builds its own engine after the fork."""

    runtime: Runtime | None = None


def _run_job_task(task, payload: dict[str, Any]) -> dict[str, Any]:
    engine = _Worker.runtime.engine
    last = [0.0]

    def report(status: JobStatus) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_SECONDS or status.fraction >= 1.0:
            last[0] = time.monotonic()
            try:
                task.update_state(state=PROGRESS_STATE, meta={
                    "step": status.step, "step_index": status.step_index,
                    "step_count": status.step_count, "fraction": status.fraction})
            except Exception as exc:  # noqa: BLE001 - progress is a courtesy; the job must go on
                log.warning("progress of job %s not reported: %s", task.request.id, type(exc).__name__)

    try:
        job = Job.from_dict(payload)
        result = run_job(engine, job, report)
    except ArtchainError as exc:
        # Fails for good: the same input would fail on any worker, so it is not retried.
        return {"error": str(exc), "kind": type(exc).__name__}
    limit = _Worker.runtime.config.queue.max_result_bytes
    if len(result.image) > limit:
        return {"error": f"{job.name}: result of {len(result.image)} bytes is over queue.max_result_bytes",
                "kind": "ImageError"}
    return result.to_dict()


def _preload(**_: Any) -> None:
    """Each pool process loads the models of `queue.preload` before its first job, so no job waits
    for a load (and none is shared across a fork)."""
    engine = _Worker.runtime.engine
    for chain_text in _Worker.runtime.config.queue.preload:
        try:
            engine.preload(chain_text)
        except ArtchainError as exc:
            log.warning("not preloading %s: %s", chain_text, exc)


def worker_app(runtime: Runtime) -> Celery:
    _Worker.runtime = runtime
    app = make_app(runtime.config.queue)
    app.task(name=TASK_NAME, bind=True)(_run_job_task)
    signals.worker_process_init.connect(_preload, weak=False)
    return app


def run_worker(runtime: Runtime, concurrency: int | None = None, loglevel: str = "INFO",
               name: str | None = None) -> None:
    queue = runtime.config.queue
    worker_app(runtime).worker_main([
        "worker", "--pool=prefork", f"--concurrency={concurrency or queue.worker_concurrency}",
        "--without-gossip", "--without-mingle", f"--queues={queue.name}", f"--loglevel={loglevel}",
        *([f"--hostname={name}"] if name else [])])
