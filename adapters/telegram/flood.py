"""Telegram's flood control, honoured in one place: a session request middleware.

Telegram answers 429 with `retry_after` when a bot sends too fast (about 30 messages a second in
all, fewer in one chat). Every Bot API call passes through `FloodControl`: a refused call waits
what Telegram asked and is sent again, so results and answers are not lost to a busy second; and
while Telegram pushes back, optional calls (status edits) can ask `pressure_seconds` and hold off.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import TelegramMethod

log = logging.getLogger(__name__)

# A call waits out flood control for at most this long in all. Telegram asks for longer waits only
# from a bot it treats as a spammer; then failing (and saying so) beats a handler hanging for hours.
MAX_WAIT_SECONDS = 60.0
# After a refusal, optional calls hold off this much longer than Telegram asked, so that the calls
# that matter (results, answers) go first when the wait is over.
PRESSURE_MARGIN_SECONDS = 2.0


class FloodControl(BaseRequestMiddleware):
    """Waits and resends a call Telegram refused with 429. Register it before other request
    middlewares that hold resources (a concurrency limit), so that a waiting call holds none."""

    def __init__(self, max_wait: float = MAX_WAIT_SECONDS) -> None:
        self.max_wait = max_wait
        self._chat_clear_at: dict[int | str, float] = {}  # calls to a refused chat wait until then
        self._calm_at = 0.0  # until then Telegram has recently pushed back somewhere

    @classmethod
    def of(cls, bot: Bot) -> "FloodControl | None":
        return next((m for m in bot.session.middleware if isinstance(m, cls)), None)

    def pressure_seconds(self) -> float:
        """How long optional calls should still hold off (0 when Telegram has not pushed back lately)."""
        return max(0.0, self._calm_at - time.monotonic())

    async def __call__(self, make_request: NextRequestMiddlewareType, bot: Bot, method: TelegramMethod) -> Any:
        chat_id = getattr(method, "chat_id", None)
        retry_at = waited = 0.0
        while True:
            # Other calls to a refused chat wait as well: sent now, they would only be refused too.
            pause = max(retry_at, self._chat_clear_at.get(chat_id, 0.0)) - time.monotonic()
            if pause > 0:
                waited += pause
                await asyncio.sleep(pause)
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                if waited + exc.retry_after > self.max_wait:
                    log.warning("flood control: %s%s given up after waiting %.0f s (Telegram asks for %s s more)",
                                type(method).__name__, _in_chat(chat_id), waited, exc.retry_after)
                    raise
                retry_at = time.monotonic() + exc.retry_after
                self._note_refusal(chat_id, retry_at)
                log.info("flood control: %s%s waits %s s", type(method).__name__, _in_chat(chat_id),
                         exc.retry_after)

    def _note_refusal(self, chat_id: int | str | None, retry_at: float) -> None:
        now = time.monotonic()
        self._calm_at = max(self._calm_at, retry_at + PRESSURE_MARGIN_SECONDS)
        # Forget chats whose wait is over, so that the map stays as small as the current trouble.
        self._chat_clear_at = {chat: at for chat, at in self._chat_clear_at.items() if at > now}
        if chat_id is not None:
            self._chat_clear_at[chat_id] = max(self._chat_clear_at.get(chat_id, 0.0), retry_at)


def _in_chat(chat_id: int | str | None) -> str:
    return f" in chat {chat_id}" if chat_id is not None else ""
