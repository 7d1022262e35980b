"""Scale-out: jobs travel through Celery (Redis as broker and result backend) to worker machines.

`CeleryExecutor` has the same `submit` as `LocalExecutor`, so the Telegram bot, the watcher and
`artchain run --remote` need not know where jobs run. Reliability comes from Celery's own settings:
late acknowledgement and a prefetch of one, so a job whose worker dies is handed to another worker
(immediately when a pool process dies; after `queue.visibility_timeout` when a whole machine
vanishes); the client takes each job's result once, by task id, from the result backend.

Messages are JSON with the images base64-encoded: nothing is unpickled from the network.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from celery import Celery, signals
from celery.exceptions import TimeLimitExceeded
from celery.result import AsyncResult

from .config import Config
from .errors import ArtchainError, Cancelled, ImageError
from .jobs import JobRequest, JobResult, JobStatus, QueueFull, StatusFn, run_job
from .processor import CancelToken

log = logging.getLogger(__name__)
TASK_NAME = "artchain.run_job"
PROGRESS_STATE = "PROGRESS"
POLL_SECONDS = 0.2
QUEUE_LENGTH_EVERY_SECONDS = 1.0
PROGRESS_EVERY_SECONDS = 0.5


class JobFailed(ArtchainError):
    """A worker could not finish a job (the job's own error, or a time limit)."""


def make_app(config: Config) -> Celery:
    queue = config.queue
    app = Celery("artchain", broker=queue.broker_url, backend=queue.result_backend or queue.broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue.name,
        task_time_limit=queue.time_limit,
        task_soft_time_limit=max(1, queue.time_limit - 5),
        result_expires=queue.result_expires,
        broker_transport_options={
            "visibility_timeout": queue.visibility_timeout,
            # kombu scans for jobs of vanished workers every 10 x 10 s by default; scanning a few
            # times per visibility timeout hands them on soon after it expires, at the cost of one
            # small Redis query per scan.
            "unacked_restore_interval": max(1, min(10, queue.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": queue.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK_NAME, bind=True)(_run_job_task)
    return app


# -- the worker side ---------------------------------------------------------------------------------
_worker_engine = None


def _engine():
    global _worker_engine
    if _worker_engine is None:
        from .engine import Engine

        _worker_engine = Engine()
    return _worker_engine


def _run_job_task(task, payload: dict[str, Any]) -> dict[str, Any]:
    engine = _engine()
    image = base64.b64decode(payload["image"])
    attachments = {name: base64.b64decode(data) for name, data in payload.get("attachments", {}).items()}
    request = JobRequest(payload["chain"], image, payload["output_format"], payload["name"], payload.get("device"),
                         attachments)
    last = [0.0]

    def report(status: JobStatus) -> None:
        if time.monotonic() - last[0] >= PROGRESS_EVERY_SECONDS or status.fraction >= 1.0:
            last[0] = time.monotonic()
            task.update_state(state=PROGRESS_STATE, meta={
                "step": status.step, "step_index": status.step_index,
                "step_count": status.step_count, "fraction": status.fraction})

    try:
        result = run_job(engine, request, report)
    except ArtchainError as exc:
        # Fails for good: the same input would fail on any worker, so it is not retried.
        return {"error": str(exc), "kind": type(exc).__name__}
    if len(result.image) > engine.config.queue.max_result_bytes:
        return {"error": f"{request.name}: result of {len(result.image)} bytes is over "
                         f"queue.max_result_bytes", "kind": "ImageError"}
    return {"image": base64.b64encode(result.image).decode("ascii"), "output_format": result.output_format,
            "size": list(result.size), "chain": result.chain, "seconds": result.seconds}


@signals.worker_process_init.connect
def _preload(**_: Any) -> None:
    """Each pool process loads the models of `queue.preload` before its first job, so no job waits
    for a load (and none is shared across a fork)."""
    engine = _engine()
    for chain_text in engine.config.queue.preload:
        try:
            chain, device = engine.prepare(chain_text)
        except ArtchainError as exc:
            log.warning("not preloading %s: %s", chain_text, exc)
            continue
        for step in chain.steps:
            processor = engine.processor(step)
            engine.cache.get((step.name, processor.model_key(step.params), str(device)),
                             lambda: processor.load(step.params, engine.store, device))


# -- the client side ---------------------------------------------------------------------------------
class CeleryExecutor:
    """Submits jobs to the queue and awaits their results without blocking the event loop."""

    def __init__(self, config: Config, app: Celery | None = None) -> None:
        self.config = config
        self.app = app or make_app(config)
        self._in_flight = 0
        self._queue_length: tuple[float, int | None] = (0.0, None)  # (when asked, answer)

    @property
    def load(self) -> int:
        return self._in_flight

    def _waiting_in_broker(self) -> int | None:
        """Jobs waiting in the broker, asked at most once a second for all the jobs being awaited."""
        asked, length = self._queue_length
        if time.monotonic() - asked < QUEUE_LENGTH_EVERY_SECONDS:
            return length
        try:
            with self.app.connection_for_read() as connection:
                length = connection.default_channel.client.llen(self.config.queue.name)
        except Exception:  # noqa: BLE001 - a position is a courtesy; no broker answer, no position
            length = None
        self._queue_length = (time.monotonic(), length)
        return length

    async def submit(self, request: JobRequest, on_status: StatusFn | None = None,
                     cancel: CancelToken | None = None) -> JobResult:
        for data in (request.image, *request.attachments.values()):
            if len(data) > self.config.limits.max_bytes:
                raise ImageError(f"{request.name}: {len(data)} bytes is over the limit of "
                                 f"{self.config.limits.max_bytes}")
        if self._in_flight >= self.config.queue.max_in_flight:
            raise QueueFull(f"busy: {self._in_flight} jobs in flight, the limit is {self.config.queue.max_in_flight}")
        cancel = cancel or CancelToken()
        payload = {"chain": request.chain, "image": base64.b64encode(request.image).decode("ascii"),
                   "output_format": request.output_format, "name": request.name, "device": request.device,
                   "attachments": {name: base64.b64encode(data).decode("ascii")
                                   for name, data in request.attachments.items()}}
        self._in_flight += 1
        try:
            async_result = await asyncio.to_thread(self.app.send_task, TASK_NAME, args=[payload])
            return await self._await(async_result, request, on_status, cancel)
        finally:
            self._in_flight -= 1

    async def _await(self, async_result: AsyncResult, request: JobRequest, on_status: StatusFn | None,
                     cancel: CancelToken) -> JobResult:
        deadline = time.monotonic() + self.config.queue.visibility_timeout + self.config.queue.time_limit
        last_status = None

        async def revoke() -> None:
            # Terminating stops the pool process running it; a revoked job is not requeued.
            await asyncio.to_thread(async_result.revoke, terminate=True)

        try:
            while True:
                if cancel.cancelled:
                    await revoke()
                    raise Cancelled("cancelled")
                state, info = await asyncio.to_thread(lambda: (async_result.state, async_result.info))
                if state == "SUCCESS":
                    return self._result(info, request)
                if state in {"FAILURE", "REVOKED"}:
                    reason = "time limit exceeded" if isinstance(info, TimeLimitExceeded) else str(info)
                    raise JobFailed(f"{request.name}: the worker failed ({reason})")
                status = await asyncio.to_thread(self._status, state, info)
                if on_status and status is not None and status != last_status:
                    last_status = status
                    on_status(status)
                if time.monotonic() > deadline:
                    await revoke()
                    raise JobFailed(f"{request.name}: no worker finished the job in time")
                await asyncio.sleep(POLL_SECONDS)
        except asyncio.CancelledError:  # the caller gave up (/cancel, Ctrl-C): so does the worker
            await revoke()
            raise
        finally:
            await asyncio.to_thread(async_result.forget)

    def _status(self, state: str, info: Any) -> JobStatus | None:
        # State and info are read one after the other: a job that finished in between has its
        # result as info already, and the next poll sees SUCCESS.
        if state == PROGRESS_STATE and isinstance(info, dict) and "step" in info:
            return JobStatus(0, info["step"], info["step_index"], info["step_count"], info["fraction"])
        if state == "PENDING":
            waiting = self._waiting_in_broker()
            return JobStatus(position=waiting) if waiting else None
        return None

    @staticmethod
    def _result(info: dict[str, Any], request: JobRequest) -> JobResult:
        if "error" in info:
            raise (ImageError if info.get("kind") == "ImageError" else JobFailed)(info["error"])
        return JobResult(base64.b64decode(info["image"]), info["output_format"], tuple(info["size"]),
                         info["chain"], info["seconds"])

    def shutdown(self) -> None:
        self.app.close()


def run_worker(config: Config, concurrency: int | None = None, loglevel: str = "INFO",
               name: str | None = None) -> None:
    """Runs a Celery worker (prefork pool: hard time limits work, and a job whose pool process dies
    goes back to the queue at once)."""
    app = make_app(config)
    app.worker_main(["worker", "--pool=prefork", f"--concurrency={concurrency or config.queue.worker_concurrency}",
                     "--without-gossip", "--without-mingle", f"--queues={config.queue.name}",
                     f"--loglevel={loglevel}", *([f"--hostname={name}"] if name else [])])
