"""The processor contract: what a plugin implements to become a chain step.

A processor is a class with declarative metadata (name, aliases, parameters, input needs, weights,
devices) and two methods: `load` builds whatever it needs once (the engine caches the result), and
`process` turns a batch tensor (B, C, H, W, float in [0, 1]) into another.

Parameters are checked for type and range only; nothing here reads a file. A parameter of type
`ImageFile` names images the step reads (nst's style): the job carries their bytes, the engine
decodes them with the configured limits before any work starts, and `process` receives them as
decoded pictures.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from .errors import Cancelled, ChainError

if TYPE_CHECKING:
    import torch

    from .weights import WeightStore

REQUIRED: Any = object()
# "+" joins several files because "," separates steps and ":" separates parameters.
FILE_SEPARATOR = "+"


class ImageFile:
    """Marks a parameter whose value names image files (a path, or an attachment of a job).

    Parsed, it is a tuple of names; in `process` it is a tuple of `artchain.core.imageio.Picture`
    (one element unless the parameter is `multiple`)."""


_PARAM_TYPES = (int, float, str, bool, ImageFile)


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
    multiple: bool = False  # an ImageFile parameter that takes several files joined by "+"
    automatic: Any = None  # a value meaning "chosen at run time", accepted outside min and max

    def __post_init__(self) -> None:
        if self.type not in _PARAM_TYPES:
            raise TypeError(f"parameter {self.name}: type must be one of {_PARAM_TYPES}")
        if self.multiple and self.type is not ImageFile:
            raise TypeError(f"parameter {self.name}: only an ImageFile parameter can be multiple")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def is_file(self) -> bool:
        return self.type is ImageFile

    def parse(self, raw: Any) -> Any:
        value = self._convert(raw)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {raw!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(map(str, self.choices))}")
        if self.automatic is not None and value == self.automatic:
            return value
        or_automatic = "" if self.automatic is None else f" (or {self.automatic}: automatic)"
        if self.min is not None and value < self.min:
            raise ValueError(f"must be >= {self.min:g}{or_automatic}")
        if self.max is not None and value > self.max:
            raise ValueError(f"must be <= {self.max:g}{or_automatic}")
        return value

    def _convert(self, raw: Any) -> Any:
        if self.type is ImageFile:
            return self._file_names(raw)
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError("must be true or false")
        if self.type is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError("must be a whole number")
        try:
            return self.type(raw)
        except (TypeError, ValueError):
            kind = {int: "a whole number", float: "a number", str: "text"}[self.type]
            raise ValueError(f"must be {kind}, got {raw!r}") from None

    def _file_names(self, raw: Any) -> tuple[str, ...]:
        names = raw if isinstance(raw, (tuple, list)) else str(raw).split(FILE_SEPARATOR)
        names = tuple(str(name).strip() for name in names)
        if not names or not all(names):
            raise ValueError("must name a file")
        if len(names) > 1 and not self.multiple:
            raise ValueError(f"takes one file, got {len(names)}")
        return names


@dataclass(frozen=True)
class InputNeeds:
    """What a processor requires of its input (always RGB); the engine refuses smaller images
    before the step runs. A processor whose network needs a size multiple pads for itself with
    `artchain.core.imageops.pad_to_multiple`, since the multiple usually depends on the weights."""

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
    weights: ClassVar[tuple[str, ...]] = ()  # weight ids (in its plugin's weights.yaml) it may load
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    # The network family whose weight files this processor runs as a style (e.g. "cyclegan"): a
    # style of your own (core.styles) becomes a processor of its own, a subclass with other weights.
    style_network: ClassVar[str | None] = None
    own_style: ClassVar[bool] = False  # set on the processors made from such a style

    def model_key(self, params: dict[str, Any]) -> tuple:
        """Parameters that change what `load` builds (e.g. which weight set); part of the cache key."""
        return ()

    def required_weights(self, params: dict[str, Any]) -> tuple[str, ...]:
        """Weight ids this step will load with these parameters; checked before any work starts."""
        return self.weights

    def check_weights(self, weight_id: str, state: dict) -> None:
        """Refuses (WeightsError naming what was found) a state dict that does not fit this
        processor's network: `weights import` calls it before recording a file, and `load` should
        call it before allocating anything, so a wrong or hostile file cannot exhaust memory."""

    def load(self, params: dict[str, Any], store: "WeightStore", device: "torch.device") -> Any:
        return None

    def process(self, batch: "torch.Tensor", model: Any, params: dict[str, Any],
                ctx: StepContext) -> "torch.Tensor":
        raise NotImplementedError

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Checks that need more than one parameter at a time, once all of a step's parameters are
        in (file parameters are names here); raises ChainError."""

    def check_files(self, params: dict[str, Any]) -> None:
        """Checks of the decoded files a step reads (their `Picture`s are in `params`), called by
        the engine before any step runs; raises ImageError naming the file (`Picture.name`)."""

    def output_size(self, params: dict[str, Any], size: tuple[int, int],
                    original_size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) this step will produce from an input of `size`, so the engine can
        refuse a chain whose steps would grow past the pixel limit before any work starts."""
        return size

    @classmethod
    def file_params(cls) -> tuple[Param, ...]:
        return tuple(param for param in cls.params if param.is_file)

    @classmethod
    def parse_params(cls, given: dict[str, Any], complete: bool = True) -> dict[str, Any]:
        """Checks and converts `given` against `params`, filling defaults; raises ChainError.

        With `complete=False` a missing required parameter is left out instead of refused: a
        preset's steps are parsed before the parameters given to the preset are applied."""
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
            elif not spec.required:
                values[spec.name] = spec.default
            elif complete and not spec.is_file:  # a file may come with the job instead of by name
                raise ChainError(f"{cls.name}: parameter {spec.name} is required ({spec.help})")
        return values
