"""Styles of your own: a weight file that a built-in style network runs, offered under its own name.

A style record (`name -> network, weights, description`) comes from the config's `styles:` section or
from `styles.yaml` in the weights directory, which `install_style` writes (`artchain styles add`,
and `artchain train` at the end of a run). Each record becomes a processor of its own: a subclass of
the first processor whose `style_network` is the record's network, with the record's weight id. So a
style of your own appears wherever processors do (`artchain list`, the chat keyboard, the watcher's
inbox folders, chains), and it can never take the name of a processor, an alias or a preset.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Mapping

import yaml
from pydantic import ValidationError

from .config import StyleSettings, read_yaml_mapping
from .errors import ConfigError, WeightsError
from .files import write_atomically
from .plugins import Registry
from .processor import Processor
from .weights import WeightStore

STYLES_FILE = "styles.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9-]*$")


def read_styles(weights_dir: Path) -> dict[str, StyleSettings]:
    """The styles recorded in the weights directory (none when it has no styles.yaml)."""
    path = Path(weights_dir) / STYLES_FILE
    if not path.is_file():
        return {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    styles = {}
    for name, record in read_yaml_mapping(text, str(path)).items():
        try:
            styles[str(name)] = StyleSettings.model_validate(record)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"])
            raise ConfigError(f"{path}: {name}: {key}: {error['msg']}") from None
    return styles


def style_bases(registry: Registry) -> dict[str, type[Processor]]:
    """network -> the processor whose network runs that family's weight files (the first to declare it)."""
    bases: dict[str, type[Processor]] = {}
    for processor in registry.processors.values():
        if processor.style_network and not processor.own_style:
            bases.setdefault(processor.style_network, processor)
    return bases


def check_style_name(registry: Registry, name: str, taken: Iterable[str] = (), origin: str = "styles",
                     replacing: bool = False) -> None:
    """Refuses a name that is not a step name or belongs to something else; with `replacing`, a
    style of your own of that name may be replaced (training a style again)."""
    if not _NAME.match(name):
        raise ConfigError(f"{origin}: style name {name!r} must be lowercase letters, digits and dashes")
    existing = registry.get(name)
    if replacing and existing is not None and existing.own_style and existing.name == name:
        return
    if existing is not None or name in taken:
        raise ConfigError(f"{origin}: style name {name!r} is already a processor, alias or preset; "
                          f"a style of your own needs a name of its own")


def add_styles(registry: Registry, styles: Mapping[str, StyleSettings], origin: str,
               taken: Iterable[str] = ()) -> None:
    """Registers each style as a processor of its own. `taken`: other names it may not have (presets)."""
    taken = set(taken)
    bases = style_bases(registry)
    for name, style in styles.items():
        check_style_name(registry, name, taken, origin)
        base = bases.get(style.network)
        if base is None:
            known = ", ".join(sorted(bases)) or "none installed"
            raise ConfigError(f"{origin}: style {name!r}: no installed processor runs {style.network!r} "
                              f"networks (known: {known})")
        registry.processors[name] = type(f"{base.__name__}Style", (base,), {
            "name": name,
            "aliases": (),
            "description": style.description or f"{name}: a {style.network} style of your own",
            "weights": (style.weights,),
            "own_style": True,
            "__module__": base.__module__,
        })


def install_style(store: WeightStore, registry: Registry, name: str, source: Path, network: str,
                  description: str, weight_id: str | None = None, taken: Iterable[str] = ()) -> StyleSettings:
    """Imports `source` (checked as the network's processor would load it) and records the style in
    the weights directory's styles.yaml. Refuses a name in use and a weight id with a manifest entry,
    so a built-in style or its weights are never replaced by this."""
    check_style_name(registry, name, taken, replacing=True)
    base = style_bases(registry).get(network)
    if base is None:
        raise ConfigError(f"no installed processor runs {network!r} networks "
                          f"(known: {', '.join(sorted(style_bases(registry))) or 'none'})")
    weight_id = weight_id or name
    if weight_id in store.entries or any(weight_id in p.weights for p in registry.processors.values()
                                             if p.name != name):
        raise WeightsError(f"weight id {weight_id!r} belongs to an installed processor; "
                           f"give the style's weights an id of their own")
    try:
        store.import_file(source, weight_id, check=lambda state: base().check_weights(weight_id, state))
    except WeightsError as exc:
        raise WeightsError(f"{Path(source).name} as a {network} style: {exc}") from None
    style = StyleSettings(network=network, weights=weight_id, description=description)
    styles = read_styles(store.directory)
    styles[name] = style
    _write_styles(store.directory, styles)
    return style


def remove_style(store: WeightStore, name: str) -> StyleSettings:
    """Undoes `install_style`: the record and its imported file go."""
    styles = read_styles(store.directory)
    style = styles.pop(name, None)
    if style is None:
        raise ConfigError(f"no style {name!r} in {store.directory / STYLES_FILE} "
                          f"(installed: {', '.join(sorted(styles)) or 'none'})")
    if style.weights in store.imported():
        store.remove_import(style.weights)
    _write_styles(store.directory, styles)
    return style


def _write_styles(directory: Path, styles: Mapping[str, StyleSettings]) -> None:
    data = {name: style.model_dump() for name, style in sorted(styles.items())}
    write_atomically(Path(directory) / STYLES_FILE, yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode())
