"""Jobs: what adapters hand to an executor instead of calling the engine themselves.

A job is data: the steps to run as written (`StepSpec`s), the image as bytes, and the files the
steps read (nst's style image) as bytes keyed by (step index, parameter name). Its result is an
encoded image as bytes. Bytes in and out keep adapters away from torch and let the same job travel
to another process or machine: `to_dict`/`from_dict` give the one JSON-safe form every executor
uses.

An executor runs jobs (`Executor`); `LocalExecutor` runs them on a bounded thread pool beside an
asyncio event loop, so a bot or a watcher never blocks its loop, reports queue position and
progress, and refuses work politely when its queue is full. Other executors (the Celery adapter)
have the same `submit` and call `run_job` where the job lands.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from .chain import Chain, StepSpec
from .errors import ArtchainError, ImageError
from .processor import CancelToken

OUTPUT_FORMATS = ("PNG", "JPEG", "WEBP")
FileKey = tuple[int, str]  # (index of the step as written, parameter name)


class QueueFull(ArtchainError):
    """The executor holds as many jobs as it may; try again later."""


class JobFailed(ArtchainError):
    """An executor could not finish a job (the job's own error comes as itself; this is the rest:
    a worker's time limit, a worker that vanished, no result in time)."""


class BadJob(ArtchainError):
    """A job's serialised form is malformed (a broken or foreign message)."""


@dataclass(frozen=True)
class InputFile:
    name: str  # for messages: a file name, "photo from the chat", ...
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Job:
    steps: tuple[StepSpec, ...]
    image: InputFile
    files: Mapping[FileKey, tuple[InputFile, ...]] = field(default_factory=dict)
    output_format: str = "PNG"
    device: str | None = None

    @property
    def name(self) -> str:
        return self.image.name

    def all_files(self) -> tuple[InputFile, ...]:
        return (self.image, *(f for files in self.files.values() for f in files))

    def check_sizes(self, max_bytes: int) -> None:
        """Refuses a job whose image or any file is over the byte limit, naming the file."""
        for item in self.all_files():
            if len(item.data) > max_bytes:
                raise ImageError(f"{item.name}: {len(item.data)} bytes is over the limit of {max_bytes}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [{"name": spec.name, "params": dict(spec.params)} for spec in self.steps],
            "image": _file_to_dict(self.image),
            "files": [{"step": step, "param": param, "files": [_file_to_dict(f) for f in files]}
                      for (step, param), files in self.files.items()],
            "output_format": self.output_format,
            "device": self.device,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "Job":
        try:
            steps = tuple(StepSpec(_text(step["name"]), {_text(k): _text(v) for k, v in step["params"].items()})
                          for step in data["steps"])
            files = {(_index(entry["step"]), _text(entry["param"])): tuple(_file_from_dict(f) for f in entry["files"])
                     for entry in data["files"]}
            job = cls(steps, _file_from_dict(data["image"]), files, _text(data["output_format"]),
                      None if data["device"] is None else _text(data["device"]))
        except (KeyError, TypeError, AttributeError, ValueError, binascii.Error) as exc:
            raise BadJob(f"malformed job ({type(exc).__name__}: {exc})") from None
        if job.output_format not in OUTPUT_FORMATS:
            raise BadJob(f"malformed job: output format {job.output_format!r}")
        return job


@dataclass(frozen=True)
class JobResult:
    image: bytes = field(repr=False)
    output_format: str
    size: tuple[int, int]
    chain: str  # what actually ran, step by step
    step_seconds: tuple[tuple[str, float], ...]  # (step, seconds) in the order they ran

    @property
    def seconds(self) -> float:
        return sum(seconds for _, seconds in self.step_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"image": base64.b64encode(self.image).decode("ascii"), "output_format": self.output_format,
                "size": list(self.size), "chain": self.chain,
                "step_seconds": [[name, seconds] for name, seconds in self.step_seconds]}

    @classmethod
    def from_dict(cls, data: Any) -> "JobResult":
        try:
            width, height = (int(side) for side in data["size"])
            return cls(base64.b64decode(data["image"], validate=True), _text(data["output_format"]),
                       (width, height), _text(data["chain"]),
                       tuple((_text(name), float(seconds)) for name, seconds in data["step_seconds"]))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise BadJob(f"malformed job result ({type(exc).__name__}: {exc})") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _index(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a step index, got {value!r}")
    return value


def _file_to_dict(item: InputFile) -> dict[str, str]:
    return {"name": item.name, "data": base64.b64encode(item.data).decode("ascii")}


def _file_from_dict(data: Any) -> InputFile:
    return InputFile(_text(data["name"]), base64.b64decode(_text(data["data"]), validate=True))


def read_step_files(chain: Chain, max_bytes: int) -> dict[FileKey, tuple[InputFile, ...]]:
    """The files a chain's steps name, read from this machine's disk so that the job carries them."""
    files: dict[FileKey, tuple[InputFile, ...]] = {}
    for step in chain.steps:
        for param in step.processor.file_params():
            key = (step.origin, param.name)
            if param.name in step.params and key not in files:
                files[key] = tuple(read_file(Path(name).expanduser(), max_bytes, f"{step.name} {param.name}")
                                   for name in step.params[param.name])
    return files


def read_file(path: Path, max_bytes: int, role: str = "input") -> InputFile:
    """A file from disk for a job; too large a file is refused before it is read."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ImageError(f"{role} {path} is a directory, not an image")
        if size > max_bytes:
            raise ImageError(f"{path}: {size} bytes is over the limit of {max_bytes}")
        return InputFile(str(path), path.read_bytes())
    except OSError as exc:
        raise ImageError(f"{role} {path}: cannot read ({exc.strerror or exc})") from None


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


class Executor(Protocol):
    """Where jobs run. `submit` never blocks the event loop; it raises QueueFull when full,
    Cancelled when `cancel` fires, and the job's own ArtchainError when the job fails."""

    @property
    def load(self) -> int: ...

    async def submit(self, job: Job, on_status: StatusFn | None = None,
                     cancel: CancelToken | None = None) -> JobResult: ...

    def shutdown(self) -> None: ...


def run_job(engine, job: Job, on_status: StatusFn | None = None, cancel: CancelToken | None = None) -> JobResult:
    """Checks, decodes, runs and encodes one job synchronously; every executor ends here."""
    from . import imageio  # decoding needs torch; a client that only submits jobs never gets here

    limits = engine.config.limits
    job.check_sizes(limits.max_bytes)
    plan = engine.check(job.steps, job.files, job.device)
    picture = imageio.decode_image(job.image.data, limits, job.name)
    status = JobStatus()

    def progress(index: int, count: int, name: str, fraction: float) -> None:
        status.step, status.step_index, status.step_count = name, index, count
        status.fraction = (index + fraction) / count
        if on_status:
            on_status(status)

    result = engine.execute(plan, picture, progress=progress, cancel=cancel)
    data = imageio.encode_image(result.image, job.output_format, engine.config.output, picture.exif)
    return JobResult(data, job.output_format, result.image.size, result.chain.describe(),
                     tuple((timing.name, timing.seconds) for timing in result.timings))


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

    @property
    def load(self) -> int:
        return self._running + len(self._waiting)

    async def submit(self, job: Job, on_status: StatusFn | None = None,
                     cancel: CancelToken | None = None) -> JobResult:
        """Queues a job and waits for its result; `on_status` is called on the event loop's thread."""
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
            return await loop.run_in_executor(self._pool, run_job, self.engine, job, report, cancel)
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
