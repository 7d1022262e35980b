"""What the bot answers. A photo (or an image file) gets a keyboard of chains; a tap starts a job;
a style chain first asks for the style image. Each job runs in its own task through the executor."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from aiohttp import ClientError
from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.filters import Command, CommandStart
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import BufferedInputFile, CallbackQuery, Message, ReplyParameters

from artchain.core.config import Limits
from artchain.core.errors import ArtchainError, Cancelled
from artchain.core.job import Executor, InputFile, Job, JobResult, QueueFull

from .menu import ChainChoice, ChainMenu, ChainOption
from .settings import TelegramSettings
from .tracking import StatusMessage, UserJobs

log = logging.getLogger(__name__)

# Telegram's limits for sendPhoto; it also scales photos down to 2560 px, so a larger result is
# sent as a document as well to keep every pixel.
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDES_SUM = 10_000
PHOTO_MAX_ASPECT = 20
PHOTO_KEPT_SIDE = 2560
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
UNSUPPORTED_NAMES = {"sticker": "stickers", "animation": "GIFs", "voice": "voice messages", "video": "videos",
                     "video_note": "video messages", "audio": "audio files"}
NO_STYLES = "No styles are installed yet; please ask the bot's owner."
PHOTO_KEY = "photo"
STYLE_OPTION_KEY = "style_option"


@dataclass
class BotContext:
    """What every handler needs; passed in through the dispatcher, never a module global."""

    executor: Executor
    menu: ChainMenu
    jobs: UserJobs
    settings: TelegramSettings
    limits: Limits


class Dialog(StatesGroup):
    waiting_for_style = State()


@dataclass(frozen=True)
class Source:
    """An image a user sent, as far as the bot needs to fetch it again."""

    file_id: str
    message_id: int
    name: str
    as_document: bool


class Refused(Exception):
    """An input the bot will not take; the message is the friendly answer."""


def image_source(message: Message, settings: TelegramSettings, limits: Limits) -> Source:
    """The image in a photo or document message, checked against what the bot can fetch and decode."""
    if message.photo:
        photo = message.photo[-1]  # the largest size Telegram made
        _check_download(photo.file_size, settings)
        if photo.width * photo.height > limits.max_pixels:
            raise Refused(f"That image is {photo.width}x{photo.height}; the most I take is "
                          f"{limits.max_pixels:,} pixels.")
        return Source(photo.file_id, message.message_id, "photo", as_document=False)
    document = message.document
    mime = document.mime_type or ""
    suffix = Path(document.file_name or "").suffix.lower()
    if not (mime.startswith("image/") or suffix in IMAGE_SUFFIXES):
        raise Refused("That file isn't an image. Send a photo, or a PNG, JPEG or WEBP file.")
    _check_download(document.file_size, settings)
    return Source(document.file_id, message.message_id, document.file_name or "image", as_document=True)


def _check_download(size: int | None, settings: TelegramSettings) -> None:
    if size and size > settings.max_download_bytes:
        limit = settings.max_download_bytes / (1024 * 1024)
        raise Refused(f"That file is over {limit:g} MB, the most a bot can download. Please send a smaller one.")


async def on_start(message: Message) -> None:
    await message.answer("Hi! Send me a photo (or an image file) and tap a style under it.\n"
                         "/styles lists the styles, /help tells more, /cancel stops your jobs.")


async def on_help(message: Message, context: BotContext) -> None:
    settings = context.settings
    await message.answer(
        "Send a photo for a quick result, or the image as a file to get a full-quality file back.\n"
        "Tap a style under it; I edit one status message while it runs.\n"
        "Styles marked (two images) use the first image as content, then ask for a style image.\n"
        f"You can have {settings.jobs_per_user} jobs at once and start {settings.jobs_per_minute} a minute.\n"
        "/styles: what I can do\n/cancel: stop your jobs and any dialog")


async def on_styles(message: Message, context: BotContext) -> None:
    if not context.menu.options:
        await message.answer(NO_STYLES)
        return
    lines = [f"{option.label}{' (two images)' if option.needs_style else ''}: {option.description}"
             for option in context.menu.options]
    await message.answer("\n".join(lines))


async def on_cancel(message: Message, state: FSMContext, context: BotContext) -> None:
    had_dialog = await state.get_state() is not None
    await state.set_state(None)  # the latest photo stays, so its keyboard still works
    cancelled = context.jobs.cancel(message.from_user.id)
    if cancelled:
        await message.answer(f"Cancelled {cancelled} job{'s' if cancelled > 1 else ''}.")
    elif had_dialog:
        await message.answer("OK, I won't wait for a style image.")
    else:
        await message.answer("Nothing to cancel.")


async def on_image(message: Message, state: FSMContext, context: BotContext) -> None:
    try:
        source = image_source(message, context.settings, context.limits)
    except Refused as refusal:
        await message.answer(str(refusal))
        return
    if not context.menu.options:
        await message.answer(NO_STYLES)
        return
    await state.update_data({PHOTO_KEY: asdict(source)})
    await message.reply("Pick a style:", reply_markup=context.menu.keyboard(source.message_id))


async def on_chain_choice(callback: CallbackQuery, callback_data: ChainChoice, state: FSMContext,
                          bot: Bot, context: BotContext) -> None:
    option = context.menu.get(callback_data.option)
    stored = (await state.get_data()).get(PHOTO_KEY)
    if option is None or stored is None or stored["message_id"] != callback_data.photo:
        await callback.answer("I only keep your latest photo; please send this one again.", show_alert=True)
        return
    await callback.answer()
    chat_id = callback.message.chat.id
    if option.needs_style:
        await state.set_state(Dialog.waiting_for_style)
        await state.update_data({STYLE_OPTION_KEY: callback_data.option})
        await bot.send_message(chat_id, f"{option.label}: now send the style image (a painting, a pattern...), "
                                        "or /cancel.")
        return
    await start_job(bot, context, callback.from_user.id, chat_id, option, Source(**stored))


async def on_style_image(message: Message, state: FSMContext, bot: Bot, context: BotContext) -> None:
    try:
        style = image_source(message, context.settings, context.limits)
    except Refused as refusal:
        await message.answer(f"{refusal} I'm still waiting for the style image (or /cancel).")
        return
    data = await state.get_data()
    await state.set_state(None)
    option = context.menu.get(data[STYLE_OPTION_KEY])
    await start_job(bot, context, message.from_user.id, message.chat.id, option, Source(**data[PHOTO_KEY]), style)


async def on_waiting_for_style(message: Message) -> None:
    await message.answer("I'm waiting for the style image: send a photo or an image file, or /cancel.")


async def on_unsupported(message: Message) -> None:
    kind = UNSUPPORTED_NAMES.get(message.content_type, "that kind of message")
    await message.answer(f"I can't work with {kind}. Send me a photo or an image file; /help tells more.")


async def on_text(message: Message) -> None:
    await message.answer("Send me a photo or an image file and pick a style; /help tells more.")


async def start_job(bot: Bot, context: BotContext, user_id: int, chat_id: int, option: ChainOption,
                    content: Source, style: Source | None = None) -> None:
    refusal = context.jobs.refusal(user_id)
    if refusal:
        await bot.send_message(chat_id, refusal)
        return
    context.jobs.start(user_id, run_job(bot, context, chat_id, option, content, style))


def describe_failure(exc: Exception) -> str:
    """What went wrong talking to Telegram, by type and status only: an aiohttp error's text holds
    the request URL, and file URLs hold the token."""
    status, errno = getattr(exc, "status", None), getattr(exc, "errno", None)
    detail = f"HTTP {status}" if status else f"errno {errno}" if errno else ""
    return type(exc).__name__ + (f" ({detail})" if detail else "")


async def run_job(bot: Bot, context: BotContext, chat_id: int, option: ChainOption, content: Source,
                  style: Source | None) -> None:
    try:
        status = await StatusMessage.send(bot, chat_id, f"{option.label}: fetching your image...",
                                          context.settings.status_interval)
    except (TelegramAPIError, ClientError) as exc:  # e.g. the user blocked the bot meanwhile
        log.warning("job for chat %s not started: %s", chat_id, describe_failure(exc))
        return
    try:
        result = await _process(bot, context, status, option, content, style)
        await _send_result(bot, chat_id, result, content)
    except asyncio.CancelledError:
        await status.finish("Cancelled.")
        raise
    except Cancelled:
        outcome = "Cancelled."
    except QueueFull:
        outcome = "I'm busy with many images right now; please try again in a few minutes."
    except ArtchainError as exc:
        outcome = f"Sorry, that didn't work: {exc}"
    except (TelegramAPIError, ClientError) as exc:
        log.warning("job for chat %s: Telegram transfer failed: %s", chat_id, describe_failure(exc))
        outcome = "Sorry, Telegram didn't pass the image along; please try again."
    except Exception:  # noqa: BLE001 - whatever broke, the user gets an answer and the bot goes on
        log.exception("job for chat %s failed unexpectedly", chat_id)
        outcome = "Sorry, something went wrong on my side; please try again later."
    else:
        outcome = f"Done: {result.chain}, {result.size[0]}x{result.size[1]} in {result.seconds:.1f} s."
    await status.finish(outcome)


async def _process(bot: Bot, context: BotContext, status: StatusMessage, option: ChainOption, content: Source,
                   style: Source | None) -> JobResult:
    image = InputFile(content.name, await _download(bot, content))
    files = {}
    if style is not None and option.style_slot is not None:
        # The style travels inside the job, so it stays this job's own, on any worker.
        files[option.style_slot] = (InputFile(f"style image {style.name}", await _download(bot, style)),)
    job = Job(option.steps, image, files, "PNG" if content.as_document else "JPEG")
    status.show(f"{option.label}: queued...")
    return await context.executor.submit(job, on_status=status.show_status)


async def _download(bot: Bot, source: Source) -> bytes:
    buffer = await bot.download(source.file_id)
    return buffer.getvalue()


async def _send_result(bot: Bot, chat_id: int, result: JobResult, content: Source) -> None:
    width, height = result.size
    extension = "png" if result.output_format == "PNG" else result.output_format.lower()
    file = BufferedInputFile(result.image, filename=f"{Path(content.name).stem}-artchain.{extension}")
    reply = ReplyParameters(message_id=content.message_id, allow_sending_without_reply=True)
    fits_photo = (len(result.image) <= PHOTO_MAX_BYTES and width + height <= PHOTO_MAX_SIDES_SUM
                  and max(width, height) <= PHOTO_MAX_ASPECT * min(width, height))
    if not content.as_document and fits_photo:
        await bot.send_photo(chat_id, file, reply_parameters=reply)
        if max(width, height) <= PHOTO_KEPT_SIDE:
            return
    await bot.send_document(chat_id, file, reply_parameters=reply)


def build_router() -> Router:
    """A fresh router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="artchain")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_styles, Command("styles"))
    router.message.register(on_cancel, Command("cancel"))
    # Animations also carry a `document`, so they are turned away before documents are taken.
    router.message.register(on_unsupported, F.sticker | F.animation | F.voice | F.video | F.video_note | F.audio)
    router.message.register(on_style_image, Dialog.waiting_for_style, F.photo | F.document)
    router.message.register(on_waiting_for_style, Dialog.waiting_for_style)
    router.message.register(on_image, F.photo | F.document)
    router.message.register(on_text, F.text)
    router.message.register(on_unsupported)
    router.callback_query.register(on_chain_choice, ChainChoice.filter())
    return router
