"""Per-user bookkeeping of jobs (limits, /cancel) and the one status message each job keeps edited.

Everything here is keyed by user id; a job's data (its images, its chat, its status message) lives
only in its own task, so nothing one user sends can reach another user's job.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Coroutine

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError

from artchain.core.job import JobStatus

log = logging.getLogger(__name__)
RATE_WINDOW_SECONDS = 60.0


class UserJobs:
    """Each user's running jobs and recent starts; refuses a job over a user's limits."""

    def __init__(self, jobs_per_user: int, jobs_per_minute: int) -> None:
        self.jobs_per_user = jobs_per_user
        self.jobs_per_minute = jobs_per_minute
        self._running: dict[int, set[asyncio.Task]] = {}
        self._starts: dict[int, deque[float]] = {}

    def refusal(self, user_id: int) -> str | None:
        """Why this user may not start another job now, or None when they may."""
        if len(self._running.get(user_id, ())) >= self.jobs_per_user:
            if self.jobs_per_user == 1:
                return "You already have a job going; wait for it to finish or /cancel it."
            return f"You already have {self.jobs_per_user} jobs going; wait for one to finish or /cancel them."
        starts = self._recent_starts(user_id)
        if len(starts) >= self.jobs_per_minute:
            wait = max(1, round(starts[0] + RATE_WINDOW_SECONDS - time.monotonic()))
            return f"That's {self.jobs_per_minute} jobs in a minute; please try again in {wait} s."
        return None

    def start(self, user_id: int, work: Coroutine) -> None:
        """Runs `work` as this user's job; call `refusal` first."""
        self._recent_starts(user_id).append(time.monotonic())
        task = asyncio.create_task(work)
        running = self._running.setdefault(user_id, set())
        running.add(task)
        task.add_done_callback(lambda done: self._forget(user_id, done))

    def cancel(self, user_id: int) -> int:
        """Cancels this user's jobs, queued or running; returns how many there were."""
        tasks = [task for task in self._running.get(user_id, ()) if not task.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)

    async def cancel_everything(self) -> None:
        tasks = [task for running in self._running.values() for task in running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _recent_starts(self, user_id: int) -> deque[float]:
        starts = self._starts.setdefault(user_id, deque())
        horizon = time.monotonic() - RATE_WINDOW_SECONDS
        while starts and starts[0] <= horizon:
            starts.popleft()
        return starts

    def _forget(self, user_id: int, task: asyncio.Task) -> None:
        running = self._running.get(user_id)
        if running is not None:
            running.discard(task)
            if not running:
                del self._running[user_id]
        if not self._recent_starts(user_id):
            del self._starts[user_id]


def describe_status(status: JobStatus) -> str:
    if not status.running:
        return f"Waiting in the queue: number {status.position}."
    return (f"Working: {status.step} (step {status.step_index + 1} of {status.step_count}), "
            f"{int(status.fraction * 100)}% done.")


class StatusMessage:
    """One chat message that follows a job. Edits are throttled to one per `interval` seconds and
    skipped when the text would not change (Telegram rejects those and rate-limits chatty bots)."""

    def __init__(self, bot: Bot, chat_id: int, message_id: int, text: str, interval: float) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.message_id = message_id
        self.interval = interval
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
            self._flusher = asyncio.create_task(self._catch_up())

    def show_status(self, status: JobStatus) -> None:
        self.show(describe_status(status))

    async def finish(self, text: str) -> None:
        """Shows the job's last word, after any pending edit, within the same throttle."""
        self._finished = True
        if self._flusher is not None:
            self._flusher.cancel()
        self._wanted = text
        await self._catch_up()

    async def _catch_up(self) -> None:
        while self._wanted != self._shown:
            delay = self._last_edit + self.interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._edit(self._wanted)

    async def _edit(self, text: str) -> None:
        self._shown = text
        self._last_edit = time.monotonic()
        try:
            await self.bot.edit_message_text(text=text, chat_id=self.chat_id, message_id=self.message_id)
        except TelegramAPIError as exc:  # e.g. the user deleted the message: the job goes on
            log.info("status message %s not edited: %s", self.message_id, exc)
