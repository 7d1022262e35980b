"""The `watch:` section of the configuration."""
from __future__ import annotations

from pydantic import Field

from artchain.core.config import Section, SettingsSection


class WatchSettings(Section):
    chain: str | None = None
    concurrency: int = Field(2, ge=1, le=64)
    settle_seconds: float = Field(1.0, gt=0)


SECTION = SettingsSection({"watch": (WatchSettings, WatchSettings())})
