"""The public plugin contract.

A plugin is any importable module (or object) with functions marked `@artchain.core.hookspecs.hookimpl`,
registered under the entry-point group ``artchain.plugins``::

    [project.entry-points."artchain.plugins"]
    myplugin = "mypackage.artchain_plugin"

artchain's own plugins are registered exactly this way (see pyproject.toml).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from .processor import Processor

PROJECT = "artchain"
ENTRY_POINT_GROUP = "artchain.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def artchain_processors() -> list[type[Processor]]:
    """Return the Processor classes this plugin provides."""


@hookspec
def artchain_cli(app: typer.Typer) -> None:
    """Add commands to the `artchain` command line (e.g. `artchain train ...`).

    Keep the command thin: parse options, call into the plugin, report.
    """
