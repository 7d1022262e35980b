"""The `telegram:` section of the configuration (pydantic only: loading a config never needs aiogram)."""
from __future__ import annotations

from pydantic import Field

from artchain.core.config import Section, SettingsSection


class Webhook(Section):
    url: str | None = None  # public HTTPS URL Telegram posts to; empty = long polling
    host: str = "0.0.0.0"
    port: int = Field(8080, gt=0, lt=65536)
    path: str = "/telegram"
    # Telegram accepts 1-256 characters from A-Z, a-z, 0-9, _ and -; empty = a random one per start.
    secret: str | None = Field(None, repr=False, pattern=r"^[A-Za-z0-9_-]{1,256}$")


class TelegramSettings(Section):
    token: str | None = Field(None, repr=False)
    api_url: str | None = None  # a self-hosted Bot API server; empty = api.telegram.org
    allowed_users: list[int] = []  # empty = everyone may use the bot
    jobs_per_user: int = Field(2, gt=0)  # running or queued at once
    jobs_per_minute: int = Field(6, gt=0)
    workers: int = Field(1, gt=0)
    max_queue: int = Field(32, gt=0)  # jobs held by the whole bot; beyond it users are asked to wait
    max_download_bytes: int = Field(20 * 1024 * 1024, gt=0)  # the Bot API's download limit
    status_interval: float = Field(1.0, ge=0)  # seconds between edits of one status message
    concurrent_requests: int = Field(8, gt=0)  # Bot API calls (and updates handled) at once
    # On SIGTERM or Ctrl-C, jobs already computing or sending their result get this long to finish;
    # jobs not begun are answered at once with "the bot restarted, please send it again".
    shutdown_grace: float = Field(30.0, ge=0)
    chains: list[str] = []  # empty = every installed processor
    offer_presets: bool = True  # the presets of your own config get a button too (bundled ones: list them in chains)
    webhook: Webhook = Webhook()


SECTION = SettingsSection({"telegram": (TelegramSettings, TelegramSettings())},
                          env={"ARTCHAIN_TELEGRAM_TOKEN": "telegram.token"})
