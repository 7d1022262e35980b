"""Plugin discovery: every plugin, built-in or third-party, comes in through the entry-point group."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from importlib.metadata import entry_points
from typing import Iterable

import pluggy

from . import hookspecs
from .processor import Processor

log = logging.getLogger(__name__)
PLUGIN_MANIFEST = "weights.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


@dataclass
class Registry:
    """Processors by name, the plugin manager they came from, and plugins that failed to load."""

    manager: pluggy.PluginManager
    processors: dict[str, type[Processor]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # declared by processors themselves
    broken: dict[str, str] = field(default_factory=dict)   # plugin name -> why it was skipped

    def get(self, name: str) -> type[Processor] | None:
        return self.processors.get(name) or self.processors.get(self.aliases.get(name, ""))

    def weight_manifests(self) -> list[tuple[str, str, str]]:
        """(plugin name, origin, YAML text) of each plugin package's `weights.yaml`."""
        manifests = []
        for name, plugin in self.manager.list_name_plugin():
            package = getattr(plugin, "__name__", None) if hasattr(plugin, "__path__") else None
            if package is None:
                continue  # only a package can ship a file beside its code
            manifest = resources.files(package) / PLUGIN_MANIFEST
            if manifest.is_file():
                manifests.append((name, f"{package}/{PLUGIN_MANIFEST}", manifest.read_text(encoding="utf-8")))
        return manifests


def _check_processor(cls: object) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Processor)):
        return f"{cls!r} is not a Processor subclass"
    for attribute in ("name", "description"):
        if not isinstance(getattr(cls, attribute, None), str):
            return f"{cls.__name__} has no {attribute}"
    if not _NAME.match(cls.name):
        return f"{cls.__name__}: name {cls.name!r} must be lowercase letters, digits and dashes"
    return None


def discover(extra_plugins: Iterable[object] = ()) -> Registry:
    """Loads plugins from the `artchain.plugins` entry points (plus `extra_plugins`, for tests).

    A plugin that fails to import or declares a bad processor is skipped and recorded in
    `Registry.broken`, so one bad plugin does not take the others down.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager)
    for entry_point in entry_points(group=hookspecs.ENTRY_POINT_GROUP):
        if manager.get_plugin(entry_point.name) is not None:
            continue  # the same distribution seen twice on sys.path
        try:
            manager.register(entry_point.load(), name=entry_point.name)
        except Exception as exc:  # noqa: BLE001 - any import error in a plugin is reported, not raised
            registry.broken[entry_point.name] = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %s skipped: %s", entry_point.name, exc)
    for plugin in extra_plugins:
        if not manager.is_registered(plugin):  # an installed plugin may also be passed explicitly
            manager.register(plugin)
    for plugin_name, provided in _each_plugin_result(manager, registry):
        for cls in provided or ():
            problem = _check_processor(cls)
            if problem is None and cls.name in registry.processors:
                problem = f"processor {cls.name!r} is already provided by another plugin"
            if problem:
                registry.broken[plugin_name] = problem
                continue
            registry.processors[cls.name] = cls
            for alias in cls.aliases:
                registry.aliases.setdefault(alias, cls.name)
    return registry


def _each_plugin_result(manager: pluggy.PluginManager, registry: Registry):
    for impl in manager.hook.artchain_processors.get_hookimpls():
        plugin_name = manager.get_name(impl.plugin) or repr(impl.plugin)
        try:
            yield plugin_name, impl.function()
        except Exception as exc:  # noqa: BLE001 - a plugin's own failure must not stop discovery
            registry.broken[plugin_name] = f"{type(exc).__name__}: {exc}"
