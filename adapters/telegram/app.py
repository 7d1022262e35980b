"""Putting the bot together: the Bot (token, API server), the Dispatcher (routers, FSM, allow-list),
and running it by long polling or behind a webhook."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import signal
from typing import Any, Awaitable, Callable

import yaml
from aiohttp import web
from aiogram import BaseMiddleware, Bot, Dispatcher
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.fsm.storage.memory import MemoryStorage
from aiogram.methods import GetUpdates, TelegramMethod
from aiogram.types import BotCommand, CallbackQuery, MenuButtonCommands, Message, TelegramObject, User
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application

from artchain.core.config import Config, bundled_config_text
from artchain.core.job import Executor

from .flood import FloodControl
from .handlers import BotContext, build_router
from .menu import ChainMenu
from .settings import TelegramSettings
from .tracking import UserJobs

log = logging.getLogger(__name__)

COMMANDS = [
    BotCommand(command="start", description="what this bot does"),
    BotCommand(command="styles", description="the styles I can apply"),
    BotCommand(command="help", description="how to use me"),
    BotCommand(command="cancel", description="stop your jobs"),
]
PRIVATE_BOT = "Sorry, this bot is private."


class AllowList(BaseMiddleware):
    """Turns away users not on `telegram.allowed_users` (when that list is not empty)."""

    def __init__(self, allowed: list[int]) -> None:
        self.allowed = frozenset(allowed)

    async def __call__(self, handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
                       event: TelegramObject, data: dict[str, Any]) -> Any:
        user: User | None = data.get("event_from_user")
        if user is not None and user.id in self.allowed:
            return await handler(event, data)
        if isinstance(event, Message):
            await event.answer(PRIVATE_BOT)
        elif isinstance(event, CallbackQuery):
            await event.answer(PRIVATE_BOT, show_alert=True)
        return None


class RequestLimit(BaseRequestMiddleware):
    """At most `limit` Bot API calls in flight. A burst of users then queues here instead of
    waking dozens of tasks in the same event-loop turn, which is what stretches the loop's lag."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)

    async def __call__(self, make_request: NextRequestMiddlewareType, bot: Bot, method: TelegramMethod) -> Any:
        if isinstance(method, GetUpdates):  # a long poll waits for minutes; it must not hold a slot
            return await make_request(bot, method)
        async with self._slots:
            return await make_request(bot, method)


def create_bot(token: str, settings: TelegramSettings) -> Bot:
    api = TelegramAPIServer.from_base(settings.api_url) if settings.api_url else PRODUCTION
    bot = Bot(token, session=AiohttpSession(api=api))
    # Outermost first: a call waiting out flood control holds no request slot meanwhile.
    bot.session.middleware(FloodControl())
    bot.session.middleware(RequestLimit(settings.concurrent_requests))
    return bot


def offered_presets(config: Config) -> list[str]:
    """The presets that get a button of their own: with `offer_presets`, those of the operator's
    config. The presets artchain bundles get one only where the operator's `chains` keeps them."""
    if not config.telegram.offer_presets:
        return []
    bundled = yaml.safe_load(bundled_config_text()).get("presets") or {}
    return [name for name, chain in config.presets.items() if bundled.get(name) != chain]


def create_dispatcher(config: Config, parser, executor: Executor) -> Dispatcher:
    """`parser` is the engine's chain parser: the keyboard offers what it accepts."""
    settings = config.telegram
    context = BotContext(executor=executor, menu=ChainMenu(parser, settings.chains, offered_presets(config)),
                         jobs=UserJobs(settings.jobs_per_user, settings.jobs_per_minute, settings.max_queue),
                         settings=settings, limits=config.limits)
    dispatcher = Dispatcher(storage=MemoryStorage(), context=context)
    if settings.allowed_users:
        allow_list = AllowList(settings.allowed_users)
        dispatcher.message.outer_middleware(allow_list)
        dispatcher.callback_query.outer_middleware(allow_list)
    dispatcher.include_router(build_router())
    dispatcher.startup.register(_announce_commands)
    dispatcher.startup.register(_freeze_long_lived_objects)

    async def finish_jobs() -> None:
        # Runs before the bot's session closes, so the last results and notes still reach users.
        await context.jobs.drain(settings.shutdown_grace)

    dispatcher.shutdown.register(finish_jobs)
    if not context.menu.options:
        log.warning("no configured chain can run with the installed plugins; the bot offers no styles")
    return dispatcher


async def _announce_commands(bot: Bot) -> None:
    await bot.set_my_commands(COMMANDS)
    await bot.set_chat_menu_button(menu_button=MenuButtonCommands())


async def _freeze_long_lived_objects() -> None:
    # What is loaded by now (torch, aiogram, plugins) lives as long as the process. Freezing it
    # keeps full garbage collections, which pause the event loop, from walking it again and again
    # (measured in the tests on a busy 2-core machine: 300 ms pauses before, none over 20 ms after).
    gc.freeze()


async def run_polling(bot: Bot, dispatcher: Dispatcher, handle_signals: bool = True) -> None:
    # A webhook left over from an earlier run would make getUpdates fail.
    await bot.delete_webhook()
    await dispatcher.start_polling(bot, handle_signals=handle_signals,
                                   tasks_concurrency_limit=dispatcher["context"].settings.concurrent_requests)


async def run_webhook(bot: Bot, dispatcher: Dispatcher, settings: TelegramSettings,
                      handle_signals: bool = True) -> None:
    """Serves Telegram's webhook calls until SIGTERM or Ctrl-C (or until cancelled)."""
    webhook = settings.webhook
    # Without a secret anyone who finds the URL could post forged updates; Telegram sends back
    # whatever secret it was given, so a fresh random one per start needs no configuration.
    secret = webhook.secret or secrets.token_urlsafe(32)
    app = web.Application()
    # The dispatcher's shutdown (finishing jobs) is registered first so it runs before the
    # request handler's, which closes the bot's session.
    setup_application(app, dispatcher, bot=bot)
    SimpleRequestHandler(dispatcher, bot, secret_token=secret).register(app, path=webhook.path)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, webhook.host, webhook.port).start()
        await bot.set_webhook(webhook.url, secret_token=secret,
                              allowed_updates=dispatcher.resolve_used_update_types())
        log.info("webhook server listening on %s:%s%s", webhook.host, webhook.port, webhook.path)
        await _until_stopped(handle_signals)
    finally:
        await runner.cleanup()


async def _until_stopped(handle_signals: bool) -> None:
    """Waits for SIGTERM or Ctrl-C, so that a webhook bot stops as gracefully as a polling one."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    try:
        for stop_signal in handled:
            with contextlib.suppress(NotImplementedError):  # Windows has no loop signal handlers
                loop.add_signal_handler(stop_signal, _stopping, stop_signal, stop)
        await stop.wait()
    finally:
        for stop_signal in handled:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(stop_signal)


def _stopping(received: signal.Signals, stop: asyncio.Event) -> None:
    log.warning("received %s: stopping", received.name)
    stop.set()


async def serve(token: str, config: Config, parser, executor: Executor) -> None:
    """Runs the bot until stopped: by webhook when `telegram.webhook.url` is set, else long polling."""
    bot = create_bot(token, config.telegram)
    dispatcher = create_dispatcher(config, parser, executor)
    try:
        if config.telegram.webhook.url:
            await run_webhook(bot, dispatcher, config.telegram)
        else:
            await run_polling(bot, dispatcher)
    finally:
        await bot.session.close()  # also when start-up fails, e.g. a refused token
