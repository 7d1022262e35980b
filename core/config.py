"""Configuration: the bundled config.yaml, overlaid by a user file and environment variables.

Order (later wins): the bundled config.yaml -> the file named by ARTCHAIN_CONFIG (or passed in) ->
environment overrides (ARTCHAIN_DEVICE, ARTCHAIN_WEIGHTS_DIR, ARTCHAIN_TELEGRAM_TOKEN, ...).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

CONFIG_ENV = "ARTCHAIN_CONFIG"
# Environment variable -> dotted config key. Paths and secrets belong here, not in a committed file.
ENV_OVERRIDES = {
    "ARTCHAIN_DEVICE": "device",
    "ARTCHAIN_WEIGHTS_DIR": "weights_dir",
    "ARTCHAIN_MODEL_CACHE_MB": "model_cache_mb",
    "ARTCHAIN_TELEGRAM_TOKEN": "telegram.token",
    "ARTCHAIN_EXECUTOR": "executor",
    "ARTCHAIN_BROKER_URL": "queue.broker_url",
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Limits(Section):
    max_pixels: int = Field(50_000_000, gt=0)
    max_bytes: int = Field(50 * 1024 * 1024, gt=0)


class Output(Section):
    jpeg_quality: int = Field(92, ge=1, le=100)
    webp_quality: int = Field(90, ge=1, le=100)
    keep_metadata: bool = False


class Webhook(Section):
    url: str | None = None  # public HTTPS URL Telegram posts to; empty = long polling
    host: str = "0.0.0.0"
    port: int = Field(8080, gt=0, lt=65536)
    path: str = "/telegram"
    # Telegram accepts 1-256 characters from A-Z, a-z, 0-9, _ and -; empty = a random one per start.
    secret: str | None = Field(None, repr=False, pattern=r"^[A-Za-z0-9_-]{1,256}$")


class Telegram(Section):
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
    chains: list[str] = ["neon", "neon,upscale", "upscale", "cubism", "renaissance", "expressionism", "nst"]
    offer_presets: bool = True  # every preset from `presets` gets a button too
    webhook: Webhook = Webhook()


class Queue(Section):
    broker_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    result_backend: str | None = Field(None, repr=False)  # empty = the broker
    name: str = "artchain"
    time_limit: int = Field(600, gt=5)  # seconds a job may run on a worker
    visibility_timeout: int = Field(3600, gt=0)  # seconds before a vanished worker's job is redelivered
    result_expires: int = Field(3600, gt=0)
    max_result_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_in_flight: int = Field(256, gt=0)  # jobs one client may wait on at once
    worker_concurrency: int = Field(1, gt=0)
    preload: list[str] = []  # chains whose models a worker loads before its first job


class Watch(Section):
    chain: str | None = None
    concurrency: int = Field(2, ge=1, le=64)
    settle_seconds: float = Field(1.0, gt=0)


class Config(Section):
    device: str = "auto"
    weights_dir: Path | None = None
    model_cache_mb: int = Field(4096, gt=0)
    threads: int = Field(0, ge=0)
    seed: int = 0
    limits: Limits = Limits()
    output: Output = Output()
    aliases: dict[str, str] = {}
    presets: dict[str, str] = {}
    telegram: Telegram = Telegram()
    watch: Watch = Watch()
    executor: Literal["local", "celery"] = "local"
    queue: Queue = Queue()

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in {"auto", "cpu"} and not (value == "cuda" or value.startswith("cuda:")):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


def bundled_config_text() -> str:
    return resources.files("artchain").joinpath("config.yaml").read_text(encoding="utf-8")


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{origin}{where}: not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: must be a mapping of settings")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[leaf] = value


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Loads and validates the configuration; errors name the offending key."""
    environ = os.environ if environ is None else environ
    data = _read_yaml(bundled_config_text(), "bundled config.yaml")
    path = path or environ.get(CONFIG_ENV)
    origin = "bundled config.yaml"
    if path:
        path = Path(path)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        data = _merge(data, _read_yaml(text, origin))
    for variable, dotted in ENV_OVERRIDES.items():
        if environ.get(variable):
            _set_dotted(data, dotted, environ[variable])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{origin}: {key}: {message}") from None
