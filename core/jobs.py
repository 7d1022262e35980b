"""Jobs: what adapters submit instead of calling the engine themselves.

A job is an image as bytes plus a chain; its result is an encoded image as bytes. Bytes in and out
keep adapters away from torch and let the same job travel to another process or machine (see the
scale-out executor). `LocalExecutor` runs jobs on a bounded thread pool beside an asyncio event loop,
so a bot or a watcher never blocks its loop, reports queue position and progress, and refuses work
politely when its queue is full.
"""
from __future__ import annotations

import asyncio
import itertools
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from . import imageio
from .chain import Chain, Step
from .errors import ArtchainError, ImageError
from .processor import CancelToken

# A chain refers to a job's attachment NAME as "{attachments}/NAME"; the job runner writes the
# attachments into a folder of the job's own and puts that folder's path in place of the marker.
ATTACHMENTS = "{attachments}"
_ATTACHMENT_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


class QueueFull(ArtchainError):
    """The executor holds as many jobs as it may; try again later."""


@dataclass(frozen=True)
class JobRequest:
    chain: str
    image: bytes
    output_format: str = "PNG"  # PNG, JPEG or WEBP
    name: str = "image"  # for messages: a file name, "photo from @user", ...
    device: str | None = None
    # Further images a step reads as files (nst's style image), by file name. They travel inside
    # the job, so a worker on another machine has them too.
    attachments: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    image: bytes
    output_format: str
    size: tuple[int, int]
    chain: str  # what actually ran, step by step
    seconds: float


@dataclass
class JobStatus:
    """What an adapter shows while a job runs: its place in the queue, then its progress."""

    position: int = 0  # jobs ahead of it; 0 once it runs
    step: str = ""
    step_index: int = 0
    step_count: int = 0
    fraction: float = 0.0  # of the whole chain

    @property
    def running(self) -> bool:
        return bool(self.step)


StatusFn = Callable[[JobStatus], None]


def run_job(engine, request: JobRequest, on_status: StatusFn | None = None,
            cancel: CancelToken | None = None) -> JobResult:
    """Decodes, runs and encodes one job synchronously; every executor calls this."""
    picture = imageio.decode_image(request.image, engine.config.limits, request.name)
    _check_attachments(request, engine.config.limits.max_bytes)
    status = JobStatus()

    def progress(index: int, count: int, name: str, fraction: float) -> None:
        status.step, status.step_index, status.step_count = name, index, count
        status.fraction = (index + fraction) / count
        if on_status:
            on_status(status)

    with tempfile.TemporaryDirectory(prefix="artchain-job-") as folder:
        for file_name, data in request.attachments.items():
            (Path(folder) / file_name).write_bytes(data)
        chain = request.chain.replace(ATTACHMENTS, folder)
        result = engine.execute(chain, picture, device=request.device, progress=progress, cancel=cancel)
    data = imageio.encode_image(result.image, request.output_format, engine.config.output, picture.exif)
    return JobResult(data, request.output_format, result.image.size, result.chain.describe(), result.seconds)


def with_attachments(chain: Chain) -> tuple[str, dict[str, bytes]]:
    """The chain as text in which every file a step reads (a path parameter, like nst's style) is
    replaced by a job attachment, and those attachments: the job then carries its files to
    whichever machine runs it."""
    steps, attachments = [], {}
    for index, step in enumerate(chain.steps):
        params = dict(step.params)
        for param in step.processor.params:
            path = params.get(param.name)
            if param.type is not Path or path is None:
                continue
            file_name = f"{index}-{param.name}{path.suffix.lower()}"
            if not _ATTACHMENT_NAME.fullmatch(file_name):  # an odd suffix; the content decides anyway
                file_name = f"{index}-{param.name}"
            try:
                attachments[file_name] = path.read_bytes()
            except OSError as exc:
                raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
            params[param.name] = Path(f"{ATTACHMENTS}/{file_name}")
        steps.append(Step(step.processor, params, step.source).describe())
    return ",".join(steps), attachments


def _check_attachments(request: JobRequest, max_bytes: int) -> None:
    for file_name, data in request.attachments.items():
        if not _ATTACHMENT_NAME.fullmatch(file_name):
            raise ImageError(f"{request.name}: attachment name {file_name!r} is not a plain file name")
        if len(data) > max_bytes:
            raise ImageError(f"{request.name}: attachment {file_name} is {len(data)} bytes, over the "
                             f"limit of {max_bytes}")


@dataclass(eq=False)
class _Waiting:
    number: int
    on_status: StatusFn | None
    admitted: asyncio.Event = field(default_factory=asyncio.Event)


class LocalExecutor:
    """Runs jobs in this process: `workers` at a time, at most `max_jobs` held (running + waiting)."""

    def __init__(self, engine, workers: int = 1, max_jobs: int = 32) -> None:
        self.engine = engine
        self.workers = workers
        self.max_jobs = max_jobs
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="artchain-job")
        self._waiting: list[_Waiting] = []
        self._running = 0
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    @property
    def load(self) -> int:
        return self._running + len(self._waiting)

    async def submit(self, request: JobRequest, on_status: StatusFn | None = None,
                     cancel: CancelToken | None = None) -> JobResult:
        """Queues a job and waits for its result without blocking the event loop.

        `on_status` is called on the event loop's thread. Raises QueueFull when the executor is
        full, Cancelled when `cancel` fires, and the job's own ArtchainError when it fails.
        """
        loop = asyncio.get_running_loop()
        cancel = cancel or CancelToken()
        if self.load >= self.max_jobs:
            raise QueueFull(f"busy: {self.load} jobs queued, the limit is {self.max_jobs}")
        ticket = _Waiting(next(self._numbers), on_status)
        self._waiting.append(ticket)
        self._admit()
        self._announce_positions()
        try:
            await ticket.admitted.wait()
        except asyncio.CancelledError:
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                self._announce_positions()
            else:  # admitted in the same instant it was cancelled: give the slot back
                self._release()
            raise

        def report(status: JobStatus) -> None:
            if on_status:
                snapshot = JobStatus(0, status.step, status.step_index, status.step_count, status.fraction)
                loop.call_soon_threadsafe(on_status, snapshot)

        try:
            cancel.check()
            return await loop.run_in_executor(self._pool, run_job, self.engine, request, report, cancel)
        except asyncio.CancelledError:
            cancel.cancel()  # the worker thread stops at its next check
            raise
        finally:
            self._release()

    def _release(self) -> None:
        self._running -= 1
        self._admit()
        self._announce_positions()

    def _admit(self) -> None:
        while self._waiting and self._running < self.workers:
            ticket = self._waiting.pop(0)
            self._running += 1
            ticket.admitted.set()

    def _announce_positions(self) -> None:
        for position, ticket in enumerate(self._waiting, start=1):
            if ticket.on_status:
                ticket.on_status(JobStatus(position=position))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def executor_from_config(engine, workers: int, max_jobs: int):
    """The executor `config.executor` names: this process's thread pool, or the Celery queue."""
    if engine.config.executor == "celery":
        from .queue import CeleryExecutor

        return CeleryExecutor(engine.config)
    return LocalExecutor(engine, workers, max_jobs)
