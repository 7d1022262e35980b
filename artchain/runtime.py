"""The one place that builds artchain's parts from the configuration: config -> registry, weight
store, engine, executor. Every entry point (the Python API, the CLI, the bot, the watcher, a queue
worker) goes through a `Runtime`, so there is one engine per process and one way to make it.

Everything is built on first use: `artchain list` needs the registry but no engine, and nothing
here imports torch until the engine is asked for.
"""
from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import Literal, Mapping

from artchain.adapters.celery.settings import SECTION as QUEUE_SECTION
from artchain.adapters.telegram.settings import SECTION as TELEGRAM_SECTION
from artchain.adapters.watch.settings import SECTION as WATCH_SECTION
from artchain.core.config import Config, SettingsSection, load_config

# Where the jobs of the bot and the watcher run: this process's thread pool, or Celery workers.
EXECUTOR_SECTION = SettingsSection({"executor": (Literal["local", "celery"], "local")},
                                   env={"ARTCHAIN_EXECUTOR": "executor"})
SECTIONS = (EXECUTOR_SECTION, TELEGRAM_SECTION, WATCH_SECTION, QUEUE_SECTION)


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The whole configuration: core's settings and every adapter's section."""
    return load_config(path, environ, SECTIONS)


class MissingExtra(ImportError):
    """A command needs an optional dependency group that is not installed."""


def require_extra(extra: str, module: str) -> None:
    """Turns a missing optional dependency into one line that says how to install it."""
    try:
        __import__(module)
    except ImportError:
        raise MissingExtra(f"this needs the optional dependencies of artchain[{extra}]: "
                           f"pip install 'artchain[{extra}]'") from None


class Runtime:
    def __init__(self, config: Config | None = None, config_path: str | Path | None = None) -> None:
        self._config = config
        self._config_path = config_path
        self._engine = None
        self._engine_lock = threading.Lock()

    @cached_property
    def config(self) -> Config:
        return self._config or load_settings(self._config_path)

    @cached_property
    def registry(self):
        """The installed plugins' processors, and a processor for each style of your own."""
        from artchain.core.plugins import discover
        from artchain.core.styles import STYLES_FILE, add_styles, read_styles

        registry = discover()
        presets = self.config.presets
        add_styles(registry, self.config.styles, "config: styles", taken=presets)
        add_styles(registry, read_styles(self.weights_dir), str(self.weights_dir / STYLES_FILE), taken=presets)
        return registry

    @cached_property
    def weights_dir(self) -> Path:
        from artchain.core.weights import default_weights_dir

        return self.config.weights_dir or default_weights_dir()

    @cached_property
    def parser(self):
        from artchain.core.chain import ChainParser

        return ChainParser.from_config(self.registry, self.config)

    @cached_property
    def store(self):
        from artchain.core.weights import WeightStore, plugin_entries

        return WeightStore(self.weights_dir, entries=plugin_entries(self.registry.weight_manifests()))

    @property
    def engine(self):
        with self._engine_lock:  # the Python API may be called from several threads at once
            if self._engine is None:
                from artchain.core.engine import Engine

                self._engine = Engine(self.config, self.registry, self.store, self.parser)
            return self._engine

    @property
    def remote(self) -> bool:
        return self.config.executor == "celery"

    def executor(self, workers: int, max_jobs: int):
        """The executor `executor:` names: this process's thread pool, or the Celery queue."""
        if self.remote:
            return self.celery_executor()
        from artchain.core.job import LocalExecutor

        return LocalExecutor(self.engine, workers, max_jobs)

    def celery_executor(self):
        require_extra("queue", "celery")
        from artchain.adapters.celery.executor import CeleryExecutor

        executor = CeleryExecutor(self.config.queue, self.config.limits)
        executor.check_broker()
        return executor


_default: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The runtime of the Python API (`artchain.run`), built from the default configuration."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
        return _default
