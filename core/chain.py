"""Chains: what to run, as written (`StepSpec`s) and as checked against the plugins (`Chain`).

Grammar of chain text: steps separated by ``,``; a step is ``name[:key=value]...``. A name is a
processor, an alias of one (declared by the processor, or a user alias from config.yaml) or a preset
(a named chain from config.yaml). Parameters given to a preset go to every step of the preset that
accepts them; the configuration's `defaults:` come under every step's own parameters. A chain text
equal to a preset name as a whole (``neon,upscale``) runs that preset.

Adapters that build chains from choices (a chat button, a folder name) make `StepSpec`s directly;
`parse_steps` turns text into the same structure, and `ChainParser.resolve` checks either.
Nothing here reads a file: a step's file parameters are names, their content travels in the job.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import ChainError, ConfigError
from .plugins import Registry
from .processor import FILE_SEPARATOR, Param, Processor

MAX_PRESET_DEPTH = 8


@dataclass(frozen=True)
class StepSpec:
    """One step as written: a processor, alias or preset name and its parameters as text."""

    name: str
    params: Mapping[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return self.name + "".join(f":{key}={value}" for key, value in self.params.items())


def parse_steps(text: str) -> tuple[StepSpec, ...]:
    """Chain text -> its steps as written (syntax only; names are resolved by `ChainParser`)."""
    if not isinstance(text, str) or not text.strip():
        raise ChainError("the chain is empty")
    return tuple(StepSpec(*_split_step(part)) for part in _split_chain(text))


def chain_text(specs: Iterable[StepSpec]) -> str:
    return ",".join(spec.text() for spec in specs)


def _format_value(param: Param, value: Any) -> str:
    return FILE_SEPARATOR.join(value) if param.is_file else str(value)


@dataclass(frozen=True)
class Step:
    processor: type[Processor]
    params: dict[str, Any]
    source: str  # the step text this step came from, for messages
    origin: int = 0  # index of the StepSpec it came from: a preset expands one spec into several steps

    @property
    def name(self) -> str:
        return self.processor.name

    def describe(self) -> str:
        args = "".join(f":{p.name}={_format_value(p, self.params[p.name])}" for p in self.processor.params
                       if p.name in self.params and (p.required or self.params[p.name] != p.default))
        return f"{self.name}{args}"

    def missing_files(self) -> tuple[Param, ...]:
        """Required file parameters not named here: the job must bring their files."""
        return tuple(p for p in self.processor.file_params() if p.required and p.name not in self.params)


@dataclass(frozen=True)
class Chain:
    text: str
    steps: tuple[Step, ...]

    def describe(self) -> str:
        return " -> ".join(step.describe() for step in self.steps)


def _split_step(text: str) -> tuple[str, dict[str, str]]:
    name, *pairs = text.split(":")
    name = name.strip()
    if not name:
        raise ChainError(f"empty step name in {text!r}")
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ChainError(f"{name}: parameter {pair!r} must look like key=value")
        if key in params:
            raise ChainError(f"{name}: parameter {key} given twice")
        params[key] = value.strip()
    return name, params


def _split_chain(text: str) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise ChainError(f"chain {text!r} has an empty step")
    return parts


class ChainParser:
    def __init__(self, registry: Registry, aliases: dict[str, str], presets: dict[str, str],
                 defaults: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """`defaults`: the configuration's parameter defaults per processor (or alias), under what a
        step gives; refused here, as a ConfigError, when a name or a value is wrong."""
        self.registry = registry
        self.aliases = aliases
        self.presets = {self._normalise(name): chain for name, chain in presets.items()}
        self.defaults: dict[str, dict[str, Any]] = {}
        for name, values in (defaults or {}).items():
            target = self.aliases.get(name, name)
            processor = registry.get(target)
            if processor is None:
                raise ConfigError(f"config: defaults: {self._unknown_message(name, target)}")
            try:
                processor.parse_params(dict(values), complete=False)
            except ChainError as exc:
                raise ConfigError(f"config: defaults: {exc}") from None
            self.defaults[processor.name] = {**self.defaults.get(processor.name, {}), **values}

    @classmethod
    def from_config(cls, registry: Registry, config) -> "ChainParser":
        """The parser of a configuration: its aliases, presets and parameter defaults."""
        return cls(registry, config.aliases, config.presets, config.defaults)

    @staticmethod
    def _normalise(text: str) -> str:
        return ",".join(part.strip() for part in text.split(","))

    def known_names(self) -> list[str]:
        return sorted({*self.registry.processors, *self.registry.aliases, *self.aliases, *self.presets})

    def steps_of(self, text: str) -> tuple[StepSpec, ...]:
        """Chain text -> steps as written. A text that is a preset's name as a whole is that preset,
        also with parameters after it (``neon,upscale:max_side=64``)."""
        specs = parse_steps(text)
        whole = ",".join(spec.name for spec in specs)
        if whole in self.presets and all(not spec.params for spec in specs[:-1]):
            return (StepSpec(whole, specs[-1].params),)
        return specs

    def parse(self, text: str) -> Chain:
        return self.resolve(self.steps_of(text), text)

    def resolve(self, specs: Iterable[StepSpec], text: str | None = None) -> Chain:
        """Checks steps as written against the plugins: names, aliases, presets and parameters.
        A required file parameter may stay unnamed (see `Step.missing_files`)."""
        specs = tuple(specs)
        if not specs:
            raise ChainError("the chain is empty")
        steps = []
        for origin, spec in enumerate(specs):
            for step in self._resolve(spec, ()):
                self._check_complete(step)
                steps.append(Step(step.processor, step.params, step.source, origin))
        return Chain(text=(text if text is not None else chain_text(specs)).strip(), steps=tuple(steps))

    def _expand(self, preset: str, params: Mapping[str, str], trail: tuple[str, ...]) -> list[Step]:
        trail = trail + (preset,)
        if len(trail) > MAX_PRESET_DEPTH:
            raise ChainError(f"preset {trail[0]!r} refers to itself ({' -> '.join(trail)})")
        steps = [step for part in _split_chain(self.presets[preset])
                 for step in self._resolve(StepSpec(*_split_step(part)), trail)]
        for key, value in params.items():
            takers = [i for i, step in enumerate(steps) if key in {p.name for p in step.processor.params}]
            if not takers:
                raise ChainError(f"preset {preset}: no step accepts parameter {key!r}")
            for index in takers:
                step = steps[index]
                raw = {p.name: _format_value(p, step.params[p.name]) for p in step.processor.params
                       if p.name in step.params}
                steps[index] = Step(step.processor, step.processor.parse_params({**raw, key: value}, complete=False),
                                    step.source)
        return steps

    def _resolve(self, spec: StepSpec, trail: tuple[str, ...]) -> list[Step]:
        if spec.name in self.presets and spec.name not in self.registry.processors:
            return self._expand(spec.name, spec.params, trail)
        target = self.aliases.get(spec.name, spec.name)
        processor = self.registry.get(target)
        if processor is None:
            raise ChainError(self._unknown_message(spec.name, target))
        # Complete only once every parameter is in: a preset's own parameters come later.
        given = {**self.defaults.get(processor.name, {}), **spec.params}
        return [Step(processor, processor.parse_params(given, complete=False), spec.text())]

    @staticmethod
    def _check_complete(step: Step) -> None:
        for param in step.processor.params:
            if param.required and not param.is_file and param.name not in step.params:
                raise ChainError(f"{step.name}: parameter {param.name} is required ({param.help})")
        step.processor.check(step.params)

    def _unknown_message(self, name: str, target: str) -> str:
        if target != name:
            return (f"alias {name!r} points to {target!r}, which no installed plugin provides"
                    + self._broken_hint())
        known = self.known_names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown step {name!r}{hint}; known: {', '.join(known)}" + self._broken_hint()

    def _broken_hint(self) -> str:
        if not self.registry.broken:
            return ""
        return "; plugins that failed to load: " + ", ".join(sorted(self.registry.broken))
