"""Configuration: the bundled config.yaml, overlaid by a user file and environment variables.

Order (later wins): the bundled config.yaml -> the file named by ARTCHAIN_CONFIG (or passed in) ->
environment overrides (ARTCHAIN_DEVICE, ARTCHAIN_WEIGHTS_DIR, ...). Core declares only what the
engine needs; each adapter declares its own section beside its code (`SettingsSection`) and
`artchain.runtime` composes them into one model, so an unknown key anywhere is still an error that
names it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator

from .errors import ConfigError

CONFIG_ENV = "ARTCHAIN_CONFIG"
# Environment variable -> dotted config key. Paths and secrets belong here, not in a committed file.
ENV_OVERRIDES = {
    "ARTCHAIN_DEVICE": "device",
    "ARTCHAIN_WEIGHTS_DIR": "weights_dir",
    "ARTCHAIN_MODEL_CACHE_MB": "model_cache_mb",
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


class StyleSettings(Section):
    """A style of your own: a weight file that a style processor's network runs, under its own name."""

    network: str = Field(min_length=1)  # a processor's `style_network`, e.g. cyclegan or pix2pix
    weights: str = Field(min_length=1)  # the weight id holding the file
    description: str = ""


class Config(Section):
    device: str = "auto"
    weights_dir: Path | None = None
    model_cache_mb: int = Field(4096, gt=0)
    threads: int = Field(0, ge=0)
    seed: int = 0
    limits: Limits = Limits()
    output: Output = Output()
    aliases: dict[str, str] = {}  # the user's own; processors declare theirs
    presets: dict[str, str] = {}
    styles: dict[str, StyleSettings] = {}  # also read from the weights directory's styles.yaml
    defaults: dict[str, dict[str, str | int | float | bool]] = {}  # processor -> parameter defaults

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value not in {"auto", "cpu"} and not (value == "cuda" or value.startswith("cuda:")):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


@dataclass(frozen=True)
class SettingsSection:
    """Settings that a part outside core (an adapter, the runtime) adds to the configuration:
    top-level `fields` as name -> (type, default), and environment variables for them."""

    fields: Mapping[str, tuple[Any, Any]]
    env: Mapping[str, str] = field(default_factory=dict)  # variable -> dotted key


def bundled_config_text() -> str:
    return resources.files("artchain").joinpath("config.yaml").read_text(encoding="utf-8")


def read_yaml_mapping(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{origin}{where}: not valid YAML") from None
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deeply to be a configuration") from None
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


def config_model(sections: Iterable[SettingsSection]) -> type[Config]:
    fields = {name: spec for section in sections for name, spec in section.fields.items()}
    return create_model("Config", __base__=Config, **fields) if fields else Config


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                sections: Iterable[SettingsSection] = ()) -> Config:
    """Loads and validates the configuration; errors name the offending key."""
    sections = tuple(sections)
    environ = os.environ if environ is None else environ
    data = read_yaml_mapping(bundled_config_text(), "bundled config.yaml")
    path = path or environ.get(CONFIG_ENV)
    origin = "bundled config.yaml"
    if path:
        path = Path(path)
        origin = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file in UTF-8") from None
        data = _merge(data, read_yaml_mapping(text, origin))
    overrides = {**ENV_OVERRIDES, **{k: v for section in sections for k, v in section.env.items()}}
    for variable, dotted in overrides.items():
        if environ.get(variable):
            _set_dotted(data, dotted, environ[variable])
    try:
        return config_model(sections).model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{origin}: {key}: {message}") from None
