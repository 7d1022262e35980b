"""A small fake Telegram Bot API server on 127.0.0.1, for testing the bot over real HTTP.

It serves the methods the bot calls, keeps what the bot sent per chat, and lets a test act as users:
send photos, files, stickers and text, and tap inline buttons. Like Telegram it refuses an edit that
would not change a message's text, records every edit's time so tests can check throttling, and,
when a test sets `flood`, enforces flood control: past a number of messages per second in all or
in one chat it answers 429 with `retry_after`, as Telegram does.

It runs on its own event loop in its own thread, as the real Telegram runs elsewhere: the bot's loop
then carries only the bot's own work, which is what the lag measurements are about. Its public
coroutines may be awaited from any loop.
"""
from __future__ import annotations

import asyncio
import functools
import io
import itertools
import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web
from PIL import Image

BOT_USER = {"id": 4242, "is_bot": True, "first_name": "artchain", "username": "artchain_test_bot"}
# What Telegram's flood control counts: messages sent and edited (not answers to button taps, not files fetched).
LIMITED_METHODS = {"sendMessage", "sendPhoto", "sendDocument", "editMessageText"}
FLOOD_WINDOW_SECONDS = 1.0


@dataclass(frozen=True)
class FloodRules:
    """Telegram's limits (about 30 messages a second in all, about one a second in one chat)."""

    per_second: int = 30
    per_chat_per_second: int = 1


@dataclass
class Sent:
    """One thing the bot sent or did in a chat."""

    method: str
    chat_id: int
    message: dict[str, Any]
    params: dict[str, Any]
    file: bytes | None = None
    at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str:
        return self.message.get("text", "")

    @property
    def buttons(self) -> dict[str, str]:
        """Button text -> callback data of an inline keyboard."""
        markup = self.params.get("reply_markup") or {}
        return {b["text"]: b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row}


@dataclass
class Edit:
    chat_id: int
    message_id: int
    text: str
    at: float


def _on_server_loop(method):
    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        coroutine = method(self, *args, **kwargs)
        if asyncio.get_running_loop() is self._loop:
            return await coroutine
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))
    return wrapper


class FakeTelegram:
    def __init__(self, token: str) -> None:
        self.token = token
        self.sent: list[Sent] = []
        self.edits: list[Edit] = []
        self.unchanged_edits = 0  # edits Telegram would refuse as "message is not modified"
        self.calls: list[str] = []
        self.callback_answers: list[dict[str, Any]] = []
        self.bad_tokens = 0
        self.failing_downloads = 0  # the next this many file downloads answer 502 Bad Gateway
        self.commands: list[dict[str, str]] | None = None  # from setMyCommands
        self.menu_button: dict[str, Any] | None = None  # from setChatMenuButton
        self.webhook: dict[str, Any] | None = None  # from setWebhook
        self.flood: FloodRules | None = None  # None: no flood control
        self.refused: list[tuple[str, int]] = []  # (method, chat) answered 429 by flood control
        self.downloaded: list[str] = []  # file ids the bot fetched
        self.uploads_waiting = 0  # result uploads held by `hold_uploads`
        self._uploads_open = asyncio.Event()
        self._uploads_open.set()
        self._recent: deque[tuple[float, int]] = deque()  # (when, chat) of limited calls in the window
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._files: dict[str, bytes] = {}
        self._texts: dict[tuple[int, int], str] = {}
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-telegram", daemon=True)
        self.url = ""

    # -- server -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._thread.start()
        await self._serve()

    @_on_server_loop
    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._method)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self._shut_down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._loop.close()

    @_on_server_loop
    async def _shut_down(self) -> None:
        self._closing.set()
        self._uploads_open.set()
        await self._notify()
        await self._runner.cleanup()

    async def _method(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            self.bad_tokens += 1
            return web.json_response({"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params, files = await _read_params(request)
        self.calls.append(method)
        await self._notify()
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return _error(404, f"Not Found: method {method} is not served by the fake server")
        if self.flood and method in LIMITED_METHODS:
            retry_after = self._flood_wait(int(params["chat_id"]))
            if retry_after:
                self.refused.append((method, int(params["chat_id"])))
                return web.json_response({"ok": False, "error_code": 429,
                                          "description": f"Too Many Requests: retry after {retry_after}",
                                          "parameters": {"retry_after": retry_after}}, status=429)
        result = await handler(params, files)
        if isinstance(result, web.Response):
            return result
        await self._notify()
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.Response:
        data = self._files.get(request.match_info["path"])
        if request.match_info["token"] != self.token or data is None:
            return web.Response(status=404)
        if self.failing_downloads:
            self.failing_downloads -= 1
            return web.Response(status=502)
        self.downloaded.append(request.match_info["path"])
        return web.Response(body=data)

    def _flood_wait(self, chat_id: int) -> int:
        """0 when a message to `chat_id` may go now, else whole seconds to wait (a sliding window)."""
        now = time.monotonic()
        while self._recent and self._recent[0][0] <= now - FLOOD_WINDOW_SECONDS:
            self._recent.popleft()
        in_chat = [at for at, chat in self._recent if chat == chat_id]
        if len(self._recent) >= self.flood.per_second:
            oldest = self._recent[0][0]
        elif len(in_chat) >= self.flood.per_chat_per_second:
            oldest = in_chat[0]
        else:
            self._recent.append((now, chat_id))
            return 0
        return max(1, math.ceil(oldest + FLOOD_WINDOW_SECONDS - now))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- Bot API methods ----------------------------------------------------------------------
    async def _api_getMe(self, params, files):
        return BOT_USER

    async def _api_deleteWebhook(self, params, files):
        return True

    async def _api_setWebhook(self, params, files):
        self.webhook = params
        return True

    async def _api_setMyCommands(self, params, files):
        self.commands = params["commands"]
        return True

    async def _api_setChatMenuButton(self, params, files):
        self.menu_button = params.get("menu_button")
        return True

    async def _api_getUpdates(self, params, files):
        offset = int(params.get("offset", 0))
        self._updates = [update for update in self._updates if update["update_id"] >= offset]
        deadline = time.monotonic() + float(params.get("timeout", 0))
        async with self._changed:
            while not self._updates and not self._closing.is_set() and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
                except TimeoutError:
                    break
        return list(self._updates)

    async def _api_getFile(self, params, files):
        file_id = params["file_id"]
        if file_id not in self._files:
            return _error(400, "Bad Request: invalid file_id")
        return {"file_id": file_id, "file_unique_id": file_id, "file_size": len(self._files[file_id]),
                "file_path": file_id}

    async def _api_sendMessage(self, params, files):
        return self._record("sendMessage", params, {"text": params["text"]})

    async def _upload(self, files, field_name: str) -> bytes:
        data = files[field_name].file.read()
        if not self._uploads_open.is_set():  # a slow upload: the bot's request is in flight meanwhile
            self.uploads_waiting += 1
            await self._notify()
            await self._uploads_open.wait()
            self.uploads_waiting -= 1
        return data

    async def _api_sendPhoto(self, params, files):
        data = await self._upload(files, "photo")
        width, height = Image.open(io.BytesIO(data)).size
        photo = [{"file_id": self._store(data), "file_unique_id": "p", "width": width, "height": height}]
        return self._record("sendPhoto", params, {"photo": photo}, data)

    async def _api_sendDocument(self, params, files):
        data = await self._upload(files, "document")
        document = {"file_id": self._store(data), "file_unique_id": "d", "file_name": files["document"].filename}
        return self._record("sendDocument", params, {"document": document}, data)

    async def _api_editMessageText(self, params, files):
        key = (int(params["chat_id"]), int(params["message_id"]))
        if key not in self._texts:
            return _error(400, "Bad Request: message to edit not found")
        if self._texts[key] == params["text"]:
            self.unchanged_edits += 1
            return _error(400, "Bad Request: message is not modified")
        self._texts[key] = params["text"]
        self.edits.append(Edit(*key, params["text"], time.monotonic()))
        return {**self._message(key[0], BOT_USER), "message_id": key[1], "text": params["text"]}

    async def _api_answerCallbackQuery(self, params, files):
        self.callback_answers.append(params)
        return True

    def _record(self, method: str, params: dict, content: dict, data: bytes | None = None) -> dict:
        chat_id = int(params["chat_id"])
        message = {**self._message(chat_id, BOT_USER), **content}
        if "text" in content:
            self._texts[(chat_id, message["message_id"])] = content["text"]
        if params.get("reply_markup"):
            message["reply_markup"] = params["reply_markup"]
        self.sent.append(Sent(method, chat_id, message, params, data))
        return message

    # -- acting as users ----------------------------------------------------------------------
    def _message(self, chat_id: int, sender: dict) -> dict[str, Any]:
        return {"message_id": next(self._message_ids), "date": int(time.time()), "from": sender,
                "chat": {"id": chat_id, "type": "private", "first_name": f"user{chat_id}"}}

    def _store(self, data: bytes) -> str:
        file_id = f"file{next(self._file_ids)}"
        self._files[file_id] = data
        return file_id

    async def _deliver(self, update: dict[str, Any]) -> dict[str, Any]:
        update["update_id"] = next(self._update_ids)
        self._updates.append(update)
        await self._notify()
        return update

    @_on_server_loop
    async def user_sends(self, user_id: int, **content: Any) -> dict[str, Any]:
        """A message from a user in their private chat with the bot; `content` as in the Bot API."""
        message = {**self._message(user_id, _user(user_id)), **content}
        await self._deliver({"message": message})
        return message

    @_on_server_loop
    async def user_sends_photo(self, user_id: int, image: Image.Image, declared_size: int | None = None):
        data = _encode(image, "JPEG")
        photo = {"file_id": self._store(data), "file_unique_id": "u", "width": image.width,
                 "height": image.height, "file_size": declared_size or len(data)}
        return await self.user_sends(user_id, photo=[photo])

    @_on_server_loop
    async def user_sends_file(self, user_id: int, data: bytes, file_name: str, mime_type: str,
                              declared_size: int | None = None):
        document = {"file_id": self._store(data), "file_unique_id": "u", "file_name": file_name,
                    "mime_type": mime_type, "file_size": declared_size or len(data)}
        return await self.user_sends(user_id, document=document)

    async def user_taps(self, user_id: int, keyboard: Sent, button: str) -> str:
        return await self.user_presses(user_id, keyboard, keyboard.buttons[button])

    @_on_server_loop
    async def user_presses(self, user_id: int, keyboard: Sent, data: str) -> str:
        """A tap on a button carrying `data` (any data: an old bot's buttons, a forged one) under
        `keyboard`; returns the callback query's id."""
        query_id = f"q{next(self._update_ids)}"
        query = {"id": query_id, "from": _user(user_id), "chat_instance": str(user_id),
                 "message": keyboard.message, "data": data}
        await self._deliver({"callback_query": query})
        return query_id

    @_on_server_loop
    async def hold_uploads(self) -> None:
        """Photos and files the bot sends wait (their requests in flight) until `release_uploads`."""
        self._uploads_open.clear()

    @_on_server_loop
    async def release_uploads(self) -> None:
        self._uploads_open.set()

    # -- waiting for the bot ------------------------------------------------------------------
    def chat(self, chat_id: int) -> list[Sent]:
        return [sent for sent in self.sent if sent.chat_id == chat_id]

    def current_text(self, chat_id: int, message_id: int) -> str:
        return self._texts[(chat_id, message_id)]

    def callback_answer(self, query_id: str) -> dict[str, Any] | None:
        return next((answer for answer in self.callback_answers if answer["callback_query_id"] == query_id), None)

    @_on_server_loop
    async def wait_for(self, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Waits until `condition()` returns something truthy (after any bot call) and returns it."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)
        return condition()

    @_on_server_loop
    async def reply(self, chat_id: int, method: str = "sendMessage", after: int = 0, timeout: float = 30.0) -> Sent:
        """The first `method` the bot sent to `chat_id` once it had sent `after` things there."""
        def found():
            return next((sent for sent in self.chat(chat_id)[after:] if sent.method == method), None)
        return await self.wait_for(found, timeout)


def _user(user_id: int) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}


def _encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def _error(code: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": code, "description": description}, status=code)


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, web.FileField]]:
    """Form fields (JSON-decoded where aiogram sent JSON) and uploaded files by the field naming them."""
    form = await request.post() if request.can_read_body else {}
    uploads = {name: value for name, value in form.items() if isinstance(value, web.FileField)}
    params: dict[str, Any] = {}
    files: dict[str, web.FileField] = {}
    for name, value in form.items():
        if isinstance(value, web.FileField):
            continue
        if value.startswith("attach://"):
            files[name] = uploads[value.removeprefix("attach://")]
        elif value[:1] in "[{":
            params[name] = json.loads(value)
        else:
            params[name] = value
    return params, files
