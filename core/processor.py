"""The processor contract: what a plugin implements to become a chain step.

A processor is a class with declarative metadata (name, aliases, parameters, input needs, weights,
devices) and two methods: `load` builds whatever it needs once (the engine caches the result), and
`process` turns a batch tensor (B, C, H, W, float in [0, 1]) into another.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from .errors import Cancelled, ChainError

if TYPE_CHECKING:
    import torch

    from .weights import WeightStore

REQUIRED: Any = object()
_PARAM_TYPES = (int, float, str, bool, Path)


@dataclass(frozen=True)
class Param:
    """A typed step parameter; `parse` turns chain text (or a Python value) into a checked value."""

    name: str
    type: type
    default: Any = REQUIRED
    help: str = ""
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.type not in _PARAM_TYPES:
            raise TypeError(f"parameter {self.name}: type must be one of {_PARAM_TYPES}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def parse(self, raw: Any) -> Any:
        value = self._convert(raw)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
        if self.min is not None and value < self.min:
            raise ValueError(f"must be >= {self.min:g}")
        if self.max is not None and value > self.max:
            raise ValueError(f"must be <= {self.max:g}")
        return value

    def _convert(self, raw: Any) -> Any:
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError("must be true or false")
        if self.type is Path:
            text = str(raw).strip()
            if not text:
                raise ValueError("must be a path")
            return Path(text).expanduser()
        if self.type is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError("must be a whole number")
        try:
            return self.type(raw)
        except (TypeError, ValueError):
            kind = {int: "a whole number", float: "a number", str: "text"}[self.type]
            raise ValueError(f"must be {kind}, got {raw!r}") from None


@dataclass(frozen=True)
class InputNeeds:
    """What a processor requires of its input; the engine pads/crops to `size_multiple` for it."""

    size_multiple: int = 1
    channels: int = 3
    min_side: int = 1


class CancelToken:
    """Set from any thread; processors call `check()` between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")


@dataclass
class StepContext:
    """Everything a processor may need besides its input and parameters."""

    device: "torch.device"
    original_size: tuple[int, int]  # (width, height) of the chain's input image
    progress: Callable[[float], None] = lambda fraction: None  # fraction of this step done, 0..1
    cancel: CancelToken = field(default_factory=CancelToken)
    seed: int = 0


class Processor:
    """Base class of every chain step. Subclasses set the class attributes and override `process`.

    `load` is called once per (processor, `model_key(params)`, device) and its result is cached by the
    engine and passed back to `process` as `model`; processors without a model leave it as is.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[tuple[Param, ...]] = ()
    needs: ClassVar[InputNeeds] = InputNeeds()
    weights: ClassVar[tuple[str, ...]] = ()  # ids in weights/manifest.yaml this processor may load
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def model_key(self, params: dict[str, Any]) -> tuple:
        """Parameters that change what `load` builds (e.g. which weight set); part of the cache key."""
        return ()

    def required_weights(self, params: dict[str, Any]) -> tuple[str, ...]:
        """Weight ids this step will load with these parameters; checked before any work starts."""
        return self.weights

    def load(self, params: dict[str, Any], store: "WeightStore", device: "torch.device") -> Any:
        return None

    def process(self, batch: "torch.Tensor", model: Any, params: dict[str, Any],
                ctx: StepContext) -> "torch.Tensor":
        raise NotImplementedError

    @classmethod
    def parse_params(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Checks and converts `given` against `params`, filling defaults; raises ChainError."""
        known = {p.name: p for p in cls.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            accepted = ", ".join(known) or "none"
            raise ChainError(f"{cls.name}: unknown parameter {unknown[0]!r} (accepted: {accepted})")
        values = {}
        for spec in cls.params:
            if spec.name in given:
                try:
                    values[spec.name] = spec.parse(given[spec.name])
                except ValueError as exc:
                    raise ChainError(f"{cls.name}: parameter {spec.name} {exc}") from None
            elif spec.required:
                raise ChainError(f"{cls.name}: parameter {spec.name} is required ({spec.help})")
            else:
                values[spec.name] = spec.default
        return values
