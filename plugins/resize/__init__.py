"""Plain geometry steps: `resize` (to a size or by a scale) and `resize-back` (to the chain input's
original size). They need no weights and prove the chain path before any model exists."""
from __future__ import annotations

from typing import TYPE_CHECKING

from artchain.core.errors import ChainError
from artchain.core.hookspecs import hookimpl
from artchain.core.processor import Param, Processor, StepContext

if TYPE_CHECKING:
    import torch

MAX_SIDE = 65536


class Resize(Processor):
    name = "resize"
    description = "Resize to a width and/or height (keeping the aspect when one is 0) or by a scale."
    params = (
        Param("width", int, 0, "target width in px; 0 = follow the aspect ratio", min=0, max=MAX_SIDE),
        Param("height", int, 0, "target height in px; 0 = follow the aspect ratio", min=0, max=MAX_SIDE),
        Param("scale", float, 0.0, "multiply both sides by this; 0 = use width/height", min=0, max=64),
    )

    @classmethod
    def check(cls, params) -> None:
        if not (params["width"] or params["height"] or params["scale"]):
            raise ChainError("resize: give width, height or scale (e.g. resize:width=512)")
        if params["scale"] and (params["width"] or params["height"]):
            raise ChainError("resize: give either scale or width/height, not both")

    def output_size(self, params, size, original_size) -> tuple[int, int]:
        width, height = size
        if params["scale"]:
            new_width, new_height = round(width * params["scale"]), round(height * params["scale"])
        else:
            new_width = params["width"] or round(width * params["height"] / height)
            new_height = params["height"] or round(height * params["width"] / width)
        return max(1, new_width), max(1, new_height)

    def process(self, batch: torch.Tensor, model, params, ctx: StepContext) -> torch.Tensor:
        from artchain.core.imageops import resize

        height, width = batch.shape[-2:]
        new_width, new_height = self.output_size(params, (width, height), ctx.original_size)
        return resize(batch, new_height, new_width)


class ResizeBack(Processor):
    name = "resize-back"
    description = "Return to the chain input's original size (antialiased when shrinking)."

    def output_size(self, params, size, original_size) -> tuple[int, int]:
        return original_size

    def process(self, batch: torch.Tensor, model, params, ctx: StepContext) -> torch.Tensor:
        from artchain.core.imageops import resize

        width, height = ctx.original_size
        return resize(batch, height, width)


@hookimpl
def artchain_processors():
    return [Resize, ResizeBack]
