"""The client side of the queue: `CeleryExecutor` has the same `submit` as the local executor, so
the Telegram bot, the watcher and `artchain run --remote` need not know where jobs run. The client
takes each job's result once, by task id, from the result backend."""
from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from celery.exceptions import BackendError, TimeLimitExceeded
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from artchain.core.config import Limits
from artchain.core.errors import Cancelled, ConfigError, ImageError
from artchain.core.job import Job, JobFailed, JobResult, JobStatus, QueueFull, StatusFn
from artchain.core.processor import CancelToken

from .app import PROGRESS_STATE, TASK_NAME, make_app
from .settings import QueueSettings

POLL_SECONDS = 0.2
QUEUE_LENGTH_EVERY_SECONDS = 1.0
STARTUP_CHECK_SECONDS = 3.0
# What a broker or result backend that is restarting raises; a job rides them out until its deadline.
BROKER_ERRORS = (OSError, RedisError, OperationalError, BackendError)
# Threads for the blocking broker and backend calls: during an outage each call blocks while Celery
# retries it, and on asyncio's shared default pool (5 or 6 threads on a small machine) a dozen
# waiting jobs starved everything else in the process that uses that pool.
BROKER_THREADS = 32


class CeleryExecutor:
    """Submits jobs to the queue and awaits their results without blocking the event loop."""

    def __init__(self, queue: QueueSettings, limits: Limits) -> None:
        self.queue = queue
        self.limits = limits
        self.app = make_app(queue)
        self._in_flight = 0
        self._queue_length: tuple[float, int | None] = (0.0, None)  # (when asked, answer)
        self._broker_threads = ThreadPoolExecutor(min(BROKER_THREADS, queue.max_in_flight),
                                                  thread_name_prefix="artchain-broker")

    async def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`function` on this executor's own threads, so the event loop and its default pool stay free."""
        return await asyncio.get_running_loop().run_in_executor(
            self._broker_threads, functools.partial(function, *args, **kwargs))

    @property
    def load(self) -> int:
        return self._in_flight

    def check_broker(self) -> None:
        """Fails fast, in one line, when the broker cannot be reached at all when starting (an
        outage later is waited out instead)."""
        url = self.app.connection_for_write().as_uri()  # the password masked
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=STARTUP_CHECK_SECONDS)
        except BROKER_ERRORS as exc:
            raise ConfigError(f"cannot reach the queue's broker at {url} ({type(exc).__name__}); start Redis "
                              "(e.g. `redis-server` or `docker compose up redis`) or fix queue.broker_url") from None

    def _waiting_in_broker(self) -> int | None:
        """Jobs waiting in the broker, asked at most once a second for all the jobs being awaited."""
        asked, length = self._queue_length
        if time.monotonic() - asked < QUEUE_LENGTH_EVERY_SECONDS:
            return length
        try:
            with self.app.connection_for_read() as connection:
                length = connection.default_channel.client.llen(self.queue.name)
        except Exception:  # noqa: BLE001 - a position is a courtesy; no broker answer, no position
            length = None
        self._queue_length = (time.monotonic(), length)
        return length

    async def submit(self, job: Job, on_status: StatusFn | None = None,
                     cancel: CancelToken | None = None) -> JobResult:
        job.check_sizes(self.limits.max_bytes)
        if self._in_flight >= self.queue.max_in_flight:
            raise QueueFull(f"busy: {self._in_flight} jobs in flight, the limit is {self.queue.max_in_flight}")
        cancel = cancel or CancelToken()
        self._in_flight += 1
        try:
            async_result = await self._call(self.app.send_task, TASK_NAME, args=[job.to_dict()])
            return await self._await(async_result, job, on_status, cancel)
        finally:
            self._in_flight -= 1

    async def _await(self, async_result: AsyncResult, job: Job, on_status: StatusFn | None,
                     cancel: CancelToken) -> JobResult:
        deadline = time.monotonic() + self.queue.visibility_timeout + self.queue.time_limit
        last_status = None

        async def revoke() -> None:
            # Terminating stops the pool process running it; a revoked job is not requeued.
            await self._call(async_result.revoke, terminate=True)

        try:
            while True:
                if cancel.cancelled:
                    await revoke()
                    raise Cancelled("cancelled")
                try:
                    state, info = await self._call(lambda: (async_result.state, async_result.info))
                except BROKER_ERRORS:  # the backend is restarting: ask again until the deadline
                    await asyncio.sleep(POLL_SECONDS * 5)
                    continue
                if state == "SUCCESS":
                    return self._result(info)
                if state in {"FAILURE", "REVOKED"}:
                    reason = "time limit exceeded" if isinstance(info, TimeLimitExceeded) else str(info)
                    raise JobFailed(f"{job.name}: the worker failed ({reason})")
                status = await self._call(self._status, state, info)
                if on_status and status is not None and status != last_status:
                    last_status = status
                    on_status(status)
                if time.monotonic() > deadline:
                    await revoke()
                    raise JobFailed(f"{job.name}: no worker finished the job in time")
                await asyncio.sleep(POLL_SECONDS)
        except asyncio.CancelledError:  # the caller gave up (/cancel, Ctrl-C): so does the worker
            await revoke()
            raise
        finally:
            try:
                await self._call(async_result.forget)
            except BROKER_ERRORS:
                pass  # the result expires by itself (queue.result_expires)

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
    def _result(info: Any) -> JobResult:
        if isinstance(info, dict) and "error" in info:
            raise (ImageError if info.get("kind") == "ImageError" else JobFailed)(info["error"])
        return JobResult.from_dict(info)

    def shutdown(self) -> None:
        self._broker_threads.shutdown(wait=False, cancel_futures=True)
        self.app.close()
