"""Per-user bookkeeping of jobs (limits, double taps, /cancel, a restart) and the one status message
each job keeps edited.

Everything here is keyed by user id; a job's data (its images, its chat, its status message) lives
only in its own task, so nothing one user sends can reach another user's job.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Coroutine, Hashable

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from artchain.core.job import JobStatus

from .flood import FloodControl

log = logging.getLogger(__name__)
RATE_WINDOW_SECONDS = 60.0
# After the grace period, jobs cut short by a restart get this long to tell their users so.
LAST_WORD_SECONDS = 5.0


@dataclass(eq=False)
class TrackedJob:
    user_id: int
    key: Hashable  # what it makes (a photo and a style): a second tap on the same is no second job
    task: asyncio.Task | None = None
    started: bool = False  # its computation has begun; a restart lets it finish within the grace period


class UserJobs:
    """Each user's running jobs and recent starts; refuses a job over a user's or the bot's limits,
    and ends every job when the bot stops (`drain`)."""

    def __init__(self, jobs_per_user: int, jobs_per_minute: int, max_jobs: int) -> None:
        self.jobs_per_user = jobs_per_user
        self.jobs_per_minute = jobs_per_minute
        self.max_jobs = max_jobs
        self.closing = False  # the bot is stopping: no new jobs, and a cancelled job was cut short by it
        self._running: dict[int, set[TrackedJob]] = {}
        self._starts: dict[int, deque[float]] = {}

    @property
    def count(self) -> int:
        """Jobs of all users that have not ended, from the download to the result."""
        return sum(len(jobs) for jobs in self._running.values())

    def is_running(self, user_id: int, key: Hashable) -> bool:
        return any(job.key == key for job in self._running.get(user_id, ()))

    def refusal(self, user_id: int) -> str | None:
        """Why this user may not start another job now, or None when they may."""
        if self.closing:
            return "I'm restarting; please send your picture again in a minute."
        if len(self._running.get(user_id, ())) >= self.jobs_per_user:
            if self.jobs_per_user == 1:
                return "You already have a job going; wait for it to finish or /cancel it."
            return f"You already have {self.jobs_per_user} jobs going; wait for one to finish or /cancel them."
        starts = self._recent_starts(user_id)
        if len(starts) >= self.jobs_per_minute:
            wait = max(1, round(starts[0] + RATE_WINDOW_SECONDS - time.monotonic()))
            return f"That's {self.jobs_per_minute} jobs in a minute; please try again in {wait} s."
        if self.count >= self.max_jobs:
            pictures = f"{self.count} picture{'s' if self.count != 1 else ''}"
            return f"I'm busy: my queue is full ({pictures} ahead of yours). Please try again in a few minutes."
        return None

    def start(self, user_id: int, key: Hashable, work: Callable[[TrackedJob], Coroutine]) -> TrackedJob:
        """Runs `work(job)` as this user's job; call `refusal` first."""
        self._recent_starts(user_id).append(time.monotonic())
        job = TrackedJob(user_id, key)
        self._running.setdefault(user_id, set()).add(job)
        job.task = asyncio.create_task(work(job))
        job.task.add_done_callback(lambda _: self._forget(job))
        return job

    def cancel(self, user_id: int) -> int:
        """Cancels this user's jobs, queued or running; returns how many there were."""
        tasks = [job.task for job in self._running.get(user_id, ()) if not job.task.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def drain(self, grace: float) -> None:
        """Ends every job for a restart: jobs whose computation has not begun are cancelled at once,
        the others (computing, or sending their result) get `grace` seconds to finish."""
        self.closing = True
        jobs = [job for running in self._running.values() for job in running]
        for job in jobs:
            if not job.started:
                job.task.cancel()
        if not jobs:
            return
        log.info("stopping: %d job(s) not begun are cancelled, %d get up to %g s to finish",
                 sum(not job.started for job in jobs), sum(job.started for job in jobs), grace)
        await asyncio.wait([job.task for job in jobs], timeout=grace)
        late = [job for job in jobs if not job.task.done()]
        for job in late:
            if job.started:  # the others were cancelled above and are telling their users
                job.task.cancel()
        if late:
            await asyncio.wait([job.task for job in late], timeout=LAST_WORD_SECONDS)

    def _recent_starts(self, user_id: int) -> deque[float]:
        starts = self._starts.setdefault(user_id, deque())
        horizon = time.monotonic() - RATE_WINDOW_SECONDS
        while starts and starts[0] <= horizon:
            starts.popleft()
        return starts

    def _forget(self, job: TrackedJob) -> None:
        running = self._running.get(job.user_id)
        if running is not None:
            running.discard(job)
            if not running:
                del self._running[job.user_id]
        if not self._recent_starts(job.user_id):
            del self._starts[job.user_id]


def describe_status(label: str, status: JobStatus) -> str:
    if not status.running:
        return f"{label}: waiting, number {status.position} in the queue."
    step = f"step {status.step_index + 1} of {status.step_count}"
    return f"{label}: working ({step}), {int(status.fraction * 100)}% done."


class StatusMessage:
    """One chat message that follows a job. Edits are throttled to one per `interval` seconds,
    skipped when the text would not change (Telegram rejects those), and coalesced while Telegram's
    flood control pushes back: progress waits and then shows only its newest text, while the last
    word (`finish`) goes out as soon as the chat may be written to again."""

    def __init__(self, bot: Bot, chat_id: int, message_id: int, text: str, interval: float) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.message_id = message_id
        self.interval = interval
        self._flood = FloodControl.of(bot)
        self._shown = text
        self._wanted = text
        self._last_edit = time.monotonic()
        self._flusher: asyncio.Task | None = None
        self._finished = False

    @classmethod
    async def send(cls, bot: Bot, chat_id: int, text: str, interval: float) -> "StatusMessage":
        message = await bot.send_message(chat_id, text)
        return cls(bot, chat_id, message.message_id, text, interval)

    def show(self, text: str) -> None:
        """Asks for `text` to be shown; cheap and synchronous, so it fits an executor's status callback."""
        if self._finished:  # a worker thread's progress report can arrive after the job's last word
            return
        self._wanted = text
        if self._wanted != self._shown and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._catch_up(optional=True))

    async def finish(self, text: str) -> None:
        """Shows the job's last word, after any pending edit, within the same throttle."""
        self._finished = True
        if self._flusher is not None:
            self._flusher.cancel()
        self._wanted = text
        await self._catch_up(optional=False)

    async def _catch_up(self, optional: bool) -> None:
        while self._wanted != self._shown:
            delay = self._last_edit + self.interval - time.monotonic()
            if optional and self._flood is not None:
                delay = max(delay, self._flood.pressure_seconds())
            if delay > 0:
                await asyncio.sleep(delay)
                continue  # a newer text, or new pressure, may have come meanwhile
            await self._edit(self._wanted)

    async def _edit(self, text: str) -> None:
        self._shown = text
        self._last_edit = time.monotonic()
        try:
            await self.bot.edit_message_text(text=text, chat_id=self.chat_id, message_id=self.message_id)
        except TelegramAPIError as exc:  # e.g. the user deleted the message: the job goes on
            log.info("status message %s not edited: %s", self.message_id, exc)
