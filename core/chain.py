"""Chain text -> a validated list of steps.

Grammar: steps separated by ``,``; a step is ``name[:key=value]...``. A name is a processor, an alias
of one (from config.yaml or declared by the processor) or a preset (a named chain from config.yaml).
Parameters given to a preset go to every step of the preset that accepts them. A chain text equal to
a preset name as a whole (``neon,upscale``) runs that preset.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from .errors import ChainError
from .plugins import Registry
from .processor import Processor

MAX_PRESET_DEPTH = 8


@dataclass(frozen=True)
class Step:
    processor: type[Processor]
    params: dict[str, Any]
    source: str  # the chain text this step came from, for messages

    @property
    def name(self) -> str:
        return self.processor.name

    def describe(self) -> str:
        args = "".join(f":{p.name}={self.params[p.name]}" for p in self.processor.params
                       if p.required or self.params[p.name] != p.default)
        return f"{self.name}{args}"


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
    def __init__(self, registry: Registry, aliases: dict[str, str], presets: dict[str, str]) -> None:
        self.registry = registry
        self.aliases = aliases
        self.presets = {self._normalise(name): chain for name, chain in presets.items()}

    @staticmethod
    def _normalise(text: str) -> str:
        return ",".join(part.strip() for part in text.split(","))

    def known_names(self) -> list[str]:
        return sorted({*self.registry.processors, *self.registry.aliases, *self.aliases, *self.presets})

    def parse(self, text: str) -> Chain:
        if not isinstance(text, str) or not text.strip():
            raise ChainError("the chain is empty")
        normalised = self._normalise(text)
        if normalised in self.presets:
            steps = self._expand(self.presets[normalised], {}, (normalised,))
        else:
            steps = [step for part in _split_chain(text) for step in self._resolve(part, ())]
        return Chain(text=text.strip(), steps=tuple(steps))

    def _expand(self, chain_text: str, params: dict[str, str], trail: tuple[str, ...]) -> list[Step]:
        if len(trail) > MAX_PRESET_DEPTH:
            raise ChainError(f"preset {trail[0]!r} refers to itself ({' -> '.join(trail)})")
        steps = [step for part in _split_chain(chain_text) for step in self._resolve(part, trail)]
        if params:
            self._apply_preset_params(trail[-1], steps, params)
        return steps

    def _resolve(self, part: str, trail: tuple[str, ...]) -> list[Step]:
        name, params = _split_step(part)
        if name in self.presets and name not in self.registry.processors:
            return self._expand(self.presets[name], params, trail + (name,))
        target = self.aliases.get(name, name)
        processor = self.registry.get(target)
        if processor is None:
            raise ChainError(self._unknown_message(name, target))
        return [Step(processor, processor.parse_params(params), part)]

    def _apply_preset_params(self, preset: str, steps: list[Step], params: dict[str, str]) -> None:
        for key, value in params.items():
            takers = [i for i, step in enumerate(steps) if key in {p.name for p in step.processor.params}]
            if not takers:
                raise ChainError(f"preset {preset}: no step accepts parameter {key!r}")
            for index in takers:
                step = steps[index]
                given = {k: v for k, v in step.params.items()}
                given[key] = value
                steps[index] = Step(step.processor, step.processor.parse_params(given), step.source)

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
