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
from aiogram.filters import Command, CommandStart, ExceptionTypeFilter
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import BufferedInputFile, CallbackQuery, ErrorEvent, Message, ReplyParameters

from artchain.core.config import Limits
from artchain.core.errors import ArtchainError, Cancelled
from artchain.core.job import Executor, InputFile, Job, JobResult, JobStatus, QueueFull, StatusFn

from .menu import ChainChoice, ChainMenu, ChainOption
from .replies import describe_failure, friendly_error
from .settings import TelegramSettings
from .tracking import StatusMessage, TrackedJob, UserJobs, describe_status

log = logging.getLogger(__name__)

# Telegram's limits for sendPhoto; it also scales photos down to 2560 px, so a larger result is
# sent as a document as well to keep every pixel.
PHOTO_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_SIDES_SUM = 10_000
PHOTO_MAX_ASPECT = 20
PHOTO_KEPT_SIDE = 2560
CAPTION_MAX_CHARS = 1024
# Files the engine reads (by content; these are how Telegram labels them). A file Telegram could
# not type is judged by its name.
IMAGE_MIME_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "image/tiff",
                    "image/gif"}
UNTYPED_MIME_TYPES = {"", "application/octet-stream"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
UNSUPPORTED_NAMES = {"sticker": "stickers", "animation": "GIFs", "voice": "voice messages", "video": "videos",
                     "video_note": "video messages", "audio": "audio files"}
NO_STYLES = "No styles are installed yet; please ask the bot's owner."
STALE_BUTTON = "That button is out of date; please send the photo again."
BUSY = "I'm busy with many pictures right now; please try again in a few minutes."
RESTARTED = "the bot restarted before your picture was done; please send it again."
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
    mime = (document.mime_type or "").lower()
    suffix = Path(document.file_name or "").suffix.lower()
    if not (mime in IMAGE_MIME_TYPES or (mime in UNTYPED_MIME_TYPES and suffix in IMAGE_SUFFIXES)):
        raise Refused("That file isn't a picture I can read. Send a photo, or a JPEG, PNG or WEBP file.")
    _check_download(document.file_size, settings)
    return Source(document.file_id, message.message_id, document.file_name or "image", as_document=True)


def _check_download(size: int | None, settings: TelegramSettings) -> None:
    if size and size > settings.max_download_bytes:
        limit = settings.max_download_bytes / (1024 * 1024)
        raise Refused(f"That file is over {limit:g} MB, the most a bot can download. Please send a smaller one.")


# Every command leaves the style dialog, so that the next photo is content again and gets a keyboard.
async def on_start(message: Message, state: FSMContext) -> None:
    await state.set_state(None)
    await message.answer("Hi! Send me a photo (or an image file) and tap a style under it.\n"
                         "/styles lists the styles, /help tells more, /cancel stops your jobs.")


async def on_help(message: Message, state: FSMContext, context: BotContext) -> None:
    await state.set_state(None)
    settings = context.settings
    await message.answer(
        "Send a photo for a quick result, or the image as a file to get a full-quality file back.\n"
        "Tap a style under it; I edit one status message while it runs.\n"
        "Styles marked (two pictures) use the first picture as content, then ask for a style picture.\n"
        f"You can have {settings.jobs_per_user} jobs at once and start {settings.jobs_per_minute} a minute.\n"
        "/styles: what I can do\n/cancel: stop your jobs and any dialog")


async def on_styles(message: Message, state: FSMContext, context: BotContext) -> None:
    await state.set_state(None)
    if not context.menu.options:
        await message.answer(NO_STYLES)
        return
    lines = [f"{option.label}{' (two pictures)' if option.needs_style else ''}: {option.description}"
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


async def on_unknown_command(message: Message, state: FSMContext) -> None:
    await state.set_state(None)
    await message.answer("I don't know that command; /help lists what I understand.")


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
    if context.jobs.is_running(callback.from_user.id, _job_key(callback_data)):
        await callback.answer("Already on it: that picture is on its way.")  # a double tap
        return
    chat_id = callback.message.chat.id
    if option.needs_style:
        await callback.answer()
        await state.set_state(Dialog.waiting_for_style)
        await state.update_data({STYLE_OPTION_KEY: callback_data.option})
        await bot.send_message(chat_id, f"{option.label}: now send the style image (a painting, a pattern...), "
                                        "or /cancel.")
        return
    # Started before the first await: a second tap on the same button finds it running.
    refusal = start_job(bot, context, callback.from_user.id, chat_id, callback_data, Source(**stored))
    await callback.answer()
    if refusal:
        await bot.send_message(chat_id, refusal)


async def on_stale_button(callback: CallbackQuery) -> None:
    """A button from another version of the bot, or callback data that is not ours: answered all
    the same, so the user's app stops showing its spinner."""
    await callback.answer(STALE_BUTTON, show_alert=True)


async def on_style_image(message: Message, state: FSMContext, bot: Bot, context: BotContext) -> None:
    try:
        style = image_source(message, context.settings, context.limits)
    except Refused as refusal:
        await message.answer(f"{refusal} I'm still waiting for the style image (or /cancel).")
        return
    data = await state.get_data()
    await state.set_state(None)
    content = Source(**data[PHOTO_KEY])
    choice = ChainChoice(option=data[STYLE_OPTION_KEY], photo=content.message_id)
    refusal = start_job(bot, context, message.from_user.id, message.chat.id, choice, content, style)
    if refusal:
        await message.answer(refusal)


async def on_waiting_for_style(message: Message) -> None:
    await message.answer("I'm waiting for the style image: send a photo or an image file, or /cancel.")


async def on_unsupported(message: Message) -> None:
    kind = UNSUPPORTED_NAMES.get(message.content_type, "that kind of message")
    await message.answer(f"I can't work with {kind}. Send me a photo or an image file; /help tells more.")


async def on_text(message: Message) -> None:
    await message.answer("Send me a photo or an image file and pick a style; /help tells more.")


async def on_telegram_failure(event: ErrorEvent) -> bool:
    """A call to Telegram that failed in a handler (after flood control gave up, or the network
    dropped): one line in the log instead of a traceback; the bot goes on."""
    log.warning("update %s: Telegram call failed: %s", event.update.update_id, describe_failure(event.exception))
    return True


def _job_key(choice: ChainChoice) -> tuple[int, int]:
    return choice.photo, choice.option


def start_job(bot: Bot, context: BotContext, user_id: int, chat_id: int, choice: ChainChoice,
              content: Source, style: Source | None = None) -> str | None:
    """Starts the job, or returns why not: limits and a full queue are checked before anything is
    downloaded."""
    refusal = context.jobs.refusal(user_id)
    if refusal is None:
        option = context.menu.get(choice.option)
        context.jobs.start(user_id, _job_key(choice),
                           lambda job: run_job(bot, context, job, chat_id, option, content, style))
    return refusal


async def run_job(bot: Bot, context: BotContext, job: TrackedJob, chat_id: int, option: ChainOption,
                  content: Source, style: Source | None) -> None:
    label = option.label
    try:
        status = await StatusMessage.send(bot, chat_id, f"{label}: fetching your picture...",
                                          context.settings.status_interval)
    except (TelegramAPIError, ClientError) as exc:  # e.g. the user blocked the bot meanwhile
        log.warning("job for chat %s not started: %s", chat_id, describe_failure(exc))
        return

    def on_status(update: JobStatus) -> None:
        job.started = job.started or update.running
        status.show(describe_status(label, update))

    try:
        result = await _process(bot, context, option, content, style, on_status)
        job.started = True  # computed: a restart now waits for it to be sent
        status.show(f"{label}: sending your picture...")
        await _send_result(bot, chat_id, result, content, f"{label}: {option.description}")
    except asyncio.CancelledError:
        await status.finish(f"{label}: {RESTARTED if context.jobs.closing else 'cancelled.'}")
        raise
    except Cancelled:
        outcome = "cancelled."
    except QueueFull:
        outcome = BUSY
    except ArtchainError as exc:
        log.info("job for chat %s failed: %s", chat_id, exc)  # the technical text, for the operator
        outcome = friendly_error(exc, content.as_document)
    except (TelegramAPIError, ClientError) as exc:
        log.warning("job for chat %s: Telegram transfer failed: %s", chat_id, describe_failure(exc))
        outcome = "Sorry, Telegram didn't pass the picture along; please try again."
    except Exception:  # noqa: BLE001 - whatever broke, the user gets an answer and the bot goes on
        log.exception("job for chat %s failed unexpectedly", chat_id)
        outcome = "Sorry, something went wrong on my side; please try again later."
    else:
        outcome = f"done, {result.size[0]}x{result.size[1]} in {result.seconds:.1f} s."
    await status.finish(f"{label}: {outcome}")


async def _process(bot: Bot, context: BotContext, option: ChainOption, content: Source, style: Source | None,
                   on_status: StatusFn) -> JobResult:
    image = InputFile(content.name, await _download(bot, content))
    files = {}
    if style is not None and option.style_slot is not None:
        # The style travels inside the job, so it stays this job's own, on any worker.
        files[option.style_slot] = (InputFile(f"style image {style.name}", await _download(bot, style)),)
    job = Job(option.steps, image, files, "PNG" if content.as_document else "JPEG")
    return await context.executor.submit(job, on_status=on_status)


async def _download(bot: Bot, source: Source) -> bytes:
    buffer = await bot.download(source.file_id)
    return buffer.getvalue()


async def _send_result(bot: Bot, chat_id: int, result: JobResult, content: Source, caption: str) -> None:
    width, height = result.size
    extension = "png" if result.output_format == "PNG" else result.output_format.lower()
    file = BufferedInputFile(result.image, filename=f"{Path(content.name).stem}-artchain.{extension}")
    reply = ReplyParameters(message_id=content.message_id, allow_sending_without_reply=True)
    if len(caption) > CAPTION_MAX_CHARS:
        caption = caption[:CAPTION_MAX_CHARS - 1] + "…"
    fits_photo = (len(result.image) <= PHOTO_MAX_BYTES and width + height <= PHOTO_MAX_SIDES_SUM
                  and max(width, height) <= PHOTO_MAX_ASPECT * min(width, height))
    if not content.as_document and fits_photo:
        await bot.send_photo(chat_id, file, caption=caption, reply_parameters=reply)
        if max(width, height) <= PHOTO_KEPT_SIDE:
            return
    await bot.send_document(chat_id, file, caption=caption, reply_parameters=reply)


def build_router() -> Router:
    """A fresh router each time: aiogram attaches a router to one dispatcher only."""
    router = Router(name="artchain")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_styles, Command("styles"))
    router.message.register(on_cancel, Command("cancel"))
    router.message.register(on_unknown_command, F.text.startswith("/"))
    # Animations also carry a `document`, so they are turned away before documents are taken.
    router.message.register(on_unsupported, F.sticker | F.animation | F.voice | F.video | F.video_note | F.audio)
    router.message.register(on_style_image, Dialog.waiting_for_style, F.photo | F.document)
    router.message.register(on_waiting_for_style, Dialog.waiting_for_style)
    router.message.register(on_image, F.photo | F.document)
    router.message.register(on_text, F.text)
    router.message.register(on_unsupported)
    router.callback_query.register(on_chain_choice, ChainChoice.filter())
    router.callback_query.register(on_stale_button)
    router.errors.register(on_telegram_failure, ExceptionTypeFilter(TelegramAPIError, ClientError))
    return router
