"""`init=fast`: the optimisation starts from fast-style's one-pass rendering instead of the photo.

fast-style is another plugin; it is imported here, when a step asks for it, never when nst is
imported (nst runs without it, and `artchain list` must not pay for it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from artchain.core.errors import ChainError
from artchain.core.imageio import Picture
from artchain.core.processor import Processor, StepContext

from . import AUTO, INIT_CONTENT
from .backbones import has_weights


def fast_style_processor() -> type[Processor] | None:
    """fast-style's processor class, or None when that plugin is not installed."""
    try:
        from artchain.plugins.fast_style import FastStyle
    except ImportError:
        return None
    return FastStyle


def _required_fast_style() -> type[Processor]:
    processor = fast_style_processor()
    if processor is None:
        raise ChainError("nst: init=fast needs the fast-style plugin, which is not installed "
                         "(use init=content)")
    return processor


def _weights_of(processor: type[Processor]) -> tuple[str, ...]:
    return processor().required_weights(processor.parse_params({}))


def fast_style_weights() -> tuple[str, ...]:
    """The weight ids `init=fast` loads; a ChainError when fast-style is not installed."""
    return _weights_of(_required_fast_style())


def load_fast_start(init: str, store, device: torch.device) -> FastStart | None:
    """fast-style ready to run for `init=fast`, and for `init=auto` where it and its weights are
    installed; None where the optimisation starts from the photo."""
    if init == INIT_CONTENT:
        return None
    if init == AUTO:
        processor = fast_style_processor()
        if processor is None:
            return None
        if not all(has_weights(store, weight_id) for weight_id in _weights_of(processor)):
            return None
    else:
        processor = _required_fast_style()
    return FastStart.load(processor(), store, device)


@dataclass
class FastStart:
    """fast-style's processor with its loaded model, run with its defaults (full strength, the
    content's own resolution) on the content at nst's working size."""

    processor: Processor
    model: Any

    @classmethod
    def load(cls, processor: Processor, store, device: torch.device) -> "FastStart":
        return cls(processor, processor.load(processor.parse_params({}), store, device))

    def __call__(self, content: torch.Tensor, style: tuple[Picture, ...], ctx: StepContext) -> torch.Tensor:
        params = {**self.processor.parse_params({}), "style": style}
        # Its progress is not reported: it takes about a second where the optimisation takes many.
        own_context = StepContext(ctx.device, ctx.original_size, cancel=ctx.cancel, seed=ctx.seed)
        return self.processor.process(content, self.model, params, own_context)
