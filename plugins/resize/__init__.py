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
        Param("enlarge", bool, False, "let width/height make the image larger (scale always applies)"),
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
            if not params["enlarge"] and new_width * new_height > width * height:
                return width, height
        return max(1, new_width), max(1, new_height)

    def process(self, batch: torch.Tensor, model, params, ctx: StepContext) -> torch.Tensor:
        from artchain.core.imageops import resize

        height, width = batch.shape[-2:]
        new_width, new_height = self.output_size(params, (width, height), ctx.original_size)
        return resize(batch, new_height, new_width)


class ResizeBack(Processor):
    name = "resize-back"
    description = "Return to the chain input's original size (antialiased when shrinking)."
    params = (Param("scale", float, 1.0, "a multiple of the original size instead (the CLI's -s)",
                    min=0.01, max=64),)

    def output_size(self, params, size, original_size) -> tuple[int, int]:
        width, height = original_size
        return max(1, round(width * params["scale"])), max(1, round(height * params["scale"]))

    def process(self, batch: torch.Tensor, model, params, ctx: StepContext) -> torch.Tensor:
        from artchain.core.imageops import resize

        width, height = self.output_size(params, (batch.shape[-1], batch.shape[-2]), ctx.original_size)
        return resize(batch, height, width)


@hookimpl
def artchain_processors():
    return [Resize, ResizeBack]
