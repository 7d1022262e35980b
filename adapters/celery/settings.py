"""The `queue:` section of the configuration (pydantic only: loading a config never needs Celery)."""
from __future__ import annotations

from pydantic import Field

from artchain.core.config import Section, SettingsSection


class QueueSettings(Section):
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


SECTION = SettingsSection({"queue": (QueueSettings, QueueSettings())},
                          env={"ARTCHAIN_BROKER_URL": "queue.broker_url"})
