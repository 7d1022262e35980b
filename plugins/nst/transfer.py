"""Gatys et al. style transfer by optimising the image: losses, scales and the optimisation loop.

The objective is the seed's: content MSE at the content layers + style_weight x MSE between Gram
matrices at the style layers + tv_weight x total variation (MSE between the image and itself shifted
one pixel right, plus the same shifted down). Beyond the seed: coarse-to-fine scales, the style image
resized to the content's area with its own aspect ratio, layers weighted by their targets' size where
the backbone asks for it, a mirrored margin around the image against edge artefacts, a start from
another picture (fast-style's), optional activation smoothing for the style loss (Wang et al., CVPR
2021), colour preservation, a loss-plateau stop, progress and cancellation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F

from artchain.core.errors import ImageError
from artchain.core.imageio import to_tensor
from artchain.core.imageops import preserve_colour, resize
from artchain.core.processor import StepContext

from .backbones import FeatureNet

if TYPE_CHECKING:
    from . import StyleModel

# Total variation needs two pixels along each axis; the deepest default layers downsample 16x
# (EfficientNet's block_8), and the canvas's mirrored margin still gives them 3x3 positions at 16 px.
MIN_WORKING_SIDE = 16

# The image is optimised inside a canvas mirrored this far beyond its edges, and the canvas's rim is
# cut off afterwards. The networks' padding (zeros; EfficientNet's TensorFlow "same" padding adds
# none at the top and left of its stride-2 convolutions) leaves the outermost pixels constrained
# unlike the rest, and the optimisation drew a line there; in the rim it is thrown away. Measured on
# the seed's pair at 512 px, the colour step between the outermost pixel line and the next: 16.6/255
# without the margin, 3.8 with it (the photo: 4.7).
BORDER_MARGIN = 16
LINE_SEARCH_EVALUATIONS = 5  # at most, per LBFGS step
# Scales when `scales` is 0. From the photo, one scale barely leaves its basin: the losses fall
# through changes too fine to see (astronaut with a stained-glass style, 512 px: SSIM 0.95 to the
# photo after 40 steps, even at 10x the style weight), where three scales draw the lead lines and
# facets at the size of the style's own (SSIM 0.61). fast-style's rendering has those already, and
# coarse passes over it only soften it (seed pair, 512 px: one scale reached the final loss of three
# scales x 40 steps in 53 steps and 0.70x the time).
SCALES_FROM_PHOTO, SCALES_FROM_RENDERING = 3, 1
PLATEAU_WINDOW = 20  # steps over which the relative loss improvement is measured
MIN_SCALE_SIDE = 64  # coarser scales than this carry too little structure to be worth a pass


@dataclass(frozen=True)
class TransferSettings:
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    style_weight: float
    content_weight: float
    tv_weight: float
    steps: int
    scales: int
    optimizer: str  # "lbfgs" | "adam"
    learning_rate: float  # Adam's; LBFGS takes full steps
    smooth_style: bool
    plateau: float  # stop a scale when the loss fell by less than this fraction over PLATEAU_WINDOW steps
    balance_layers: bool  # each layer's term divided by its target's mean square (see Objective)


def gram(features: torch.Tensor, smooth: bool) -> torch.Tensor:
    """Channel correlations normalised by the element count, as the seed (PyTorch tutorial) does.

    With `smooth`, each map first goes through a softmax over its positions (scaled back to mean 1):
    Wang et al.'s remedy for the few huge activations that otherwise dominate the Gram matrix.
    """
    batch, channels, height, width = features.shape
    flat = features.reshape(batch * channels, height * width)
    if smooth:
        flat = F.softmax(flat, dim=1) * (height * width)
    return flat @ flat.t() / flat.numel()


def total_variation(image: torch.Tensor) -> torch.Tensor:
    return (F.mse_loss(image[..., :, 1:], image[..., :, :-1])
            + F.mse_loss(image[..., 1:, :], image[..., :-1, :]))


class Objective:
    """The loss for one scale: targets are computed once, `__call__` scores a candidate image.

    With `balance_layers` each layer's term, content and style, is relative to its target's mean
    square. Unbalanced, the Gram matrices of EfficientNet-Lite0's layers differ by up to 10^4 in size
    (block_0: 6e-2, block_8: 8e-6 in mean square on the seed's style), so block_0 alone drove the
    style: a pixel-level mottle in the style's palette and none of its shapes. Balanced, the middle
    layers bring the style's lead lines and facets.
    """

    def __init__(self, network: FeatureNet, content: torch.Tensor, style: torch.Tensor,
                 settings: TransferSettings) -> None:
        self.network, self.settings = network, settings
        self.layers = tuple(dict.fromkeys(settings.content_layers + settings.style_layers))
        with torch.no_grad():
            self.content_targets = {name: value.detach() for name, value
                                    in network(content, settings.content_layers).items()}
            self.style_targets = {name: gram(value, settings.smooth_style).detach() for name, value
                                  in network(style, settings.style_layers).items()}
        self.content_scales = self._term_scales(self.content_targets)
        self.style_scales = self._term_scales(self.style_targets)

    def _term_scales(self, targets: dict[str, torch.Tensor]) -> dict[str, float]:
        if not self.settings.balance_layers:
            return dict.fromkeys(targets, 1.0)
        # The floor keeps a layer that is all zeros for this style (possible after ReLU6) finite.
        return {name: 1.0 / max(target.pow(2).mean().item(), 1e-12) for name, target in targets.items()}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        features = self.network(image, self.layers)
        settings = self.settings
        content = sum(self.content_scales[name] * F.mse_loss(features[name], target)
                      for name, target in self.content_targets.items())
        style = sum(self.style_scales[name] * F.mse_loss(gram(features[name], settings.smooth_style), target)
                    for name, target in self.style_targets.items())
        return (settings.content_weight * content + settings.style_weight * style
                + settings.tv_weight * total_variation(image))


def scale_sizes(height: int, width: int, scales: int) -> list[tuple[int, int]]:
    """Working sizes from coarse to fine, halving each time but never below MIN_SCALE_SIDE."""
    sizes = [(height, width)]
    for _ in range(scales - 1):
        next_height, next_width = sizes[0][0] // 2, sizes[0][1] // 2
        if min(next_height, next_width) < MIN_SCALE_SIDE:
            break
        sizes.insert(0, (next_height, next_width))
    return sizes


def style_size_for(style: torch.Tensor, height: int, width: int, style_scale: float) -> tuple[int, int]:
    """The style image keeps its aspect ratio and gets the content's area (times style_scale²), so
    its brush strokes appear at a size proportional to the output instead of being squashed."""
    style_height, style_width = style.shape[-2:]
    factor = style_scale * math.sqrt(height * width / (style_height * style_width))
    return max(1, round(style_height * factor)), max(1, round(style_width * factor))


def stylise(network: FeatureNet, content: torch.Tensor, style: torch.Tensor, settings: TransferSettings,
            style_scale: float, progress: Callable[[float], None], check_cancel: Callable[[], None],
            on_step: Callable[[int, float], None] | None = None,
            start: torch.Tensor | None = None) -> torch.Tensor:
    """Optimises an image whose features match `content`'s (1, 3, H, W) at the content layers and
    `style`'s Gram matrices at the style layers, from `start` (the content itself when None, else an
    image of its size); returns it at the content's size. `on_step` receives every step's scale
    index and loss. Must run with gradients enabled."""
    sizes = scale_sizes(*content.shape[-2:], settings.scales)
    total_steps = settings.steps * len(sizes)
    image = content if start is None else start
    for scale_index, (height, width) in enumerate(sizes):
        scaled_content = mirror_pad(resize(content, height, width), BORDER_MARGIN)
        scaled_style = resize(style, *style_size_for(style, height, width, style_scale))
        objective = Objective(network, scaled_content, scaled_style, settings)
        canvas = mirror_pad(resize(image.detach(), height, width), BORDER_MARGIN).requires_grad_(True)
        done_before = scale_index * settings.steps

        def after_step(step: int, loss: float) -> None:
            progress((done_before + step) / total_steps)
            if on_step:
                on_step(scale_index, loss)

        optimise_scale(canvas, objective, settings, check_cancel, after_step)
        image = canvas[..., BORDER_MARGIN:BORDER_MARGIN + height, BORDER_MARGIN:BORDER_MARGIN + width]
    return image.detach()


def mirror_pad(image: torch.Tensor, margin: int) -> torch.Tensor:
    """The image extended by `margin` on every side with its mirror image (edge pixel repeated), for
    any margin, also one wider than the image, which torch's reflect padding refuses."""
    height, width = image.shape[-2:]
    rows = _mirrored_indices(height, margin, image.device)
    columns = _mirrored_indices(width, margin, image.device)
    return image.index_select(-2, rows).index_select(-1, columns)


def _mirrored_indices(size: int, margin: int, device: torch.device) -> torch.Tensor:
    positions = torch.arange(-margin, size + margin, device=device) % (2 * size)
    return torch.where(positions < size, positions, 2 * size - 1 - positions)


def optimise_scale(image: torch.Tensor, objective: Objective, settings: TransferSettings,
                   check_cancel: Callable[[], None], after_step: Callable[[int, float], None]) -> None:
    """Runs up to settings.steps optimiser steps on `image` in place, keeping it in [0, 1]."""
    if settings.optimizer == "lbfgs":
        # One iteration per step() call (the curvature history persists across calls), so progress,
        # cancellation and the plateau test act on every step, as with Adam. The line search keeps
        # the first steps of a new scale, whose gradients are large, from diverging. It needs its
        # own evaluation budget: LBFGS's default (1.25 x max_iter = 1) leaves it none, and a first
        # trial step that raised the loss then left the image where it was for good.
        optimizer = torch.optim.LBFGS([image], lr=1.0, max_iter=1, max_eval=LINE_SEARCH_EVALUATIONS,
                                      history_size=50, line_search_fn="strong_wolfe")
    else:
        optimizer = torch.optim.Adam([image], lr=settings.learning_rate)
    losses: list[float] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(image)
        loss.backward()
        return loss

    for step in range(1, settings.steps + 1):
        check_cancel()
        loss = optimizer.step(closure).item()
        with torch.no_grad():
            image.clamp_(0.0, 1.0)
        losses.append(loss)
        after_step(step, loss)
        if _plateaued(losses, settings.plateau):
            break


def _plateaued(losses: list[float], tolerance: float) -> bool:
    if tolerance <= 0 or len(losses) <= PLATEAU_WINDOW:
        return False
    before, now = losses[-PLATEAU_WINDOW - 1], losses[-1]
    return before - now < tolerance * abs(before)


def _layer_list(text: str) -> tuple[str, ...]:
    # "+" joins layers because "," already separates the steps of a chain.
    return tuple(name.strip() for name in text.split("+") if name.strip())


def transfer_settings(network: FeatureNet, params: dict[str, Any],
                      from_rendering: bool = False) -> TransferSettings:
    """A step's parameters, with the backbone's defaults where they are left empty and the number of
    scales for the start (`from_rendering`: fast-style's) where `scales` is 0."""
    defaults = network.defaults
    content_layers = _layer_list(params["content_layers"]) or defaults.content_layers
    style_layers = _layer_list(params["style_layers"]) or defaults.style_layers
    network.check_layers(content_layers + style_layers)
    return TransferSettings(
        content_layers=content_layers, style_layers=style_layers,
        style_weight=params["style_weight"] or defaults.style_weight,
        content_weight=params["content_weight"], tv_weight=params["tv_weight"],
        steps=params["steps"], scales=params["scales"] or (SCALES_FROM_RENDERING if from_rendering
                                                          else SCALES_FROM_PHOTO),
        optimizer=params["optimizer"],
        learning_rate=params["lr"], smooth_style=params["smooth"], plateau=params["plateau"],
        balance_layers=defaults.balance_layers)


def run_transfer(batch: torch.Tensor, model: StyleModel, params: dict[str, Any],
                 ctx: StepContext) -> torch.Tensor:
    """The `nst` step: each image of the batch repainted in the style image's manner."""
    network = model.network
    settings = transfer_settings(network, params, from_rendering=model.fast_start is not None)
    style_image = to_tensor(params["style"][0].rgb).to(ctx.device)
    height, width = batch.shape[-2:]
    scale = params["size"] / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if min(size) < MIN_WORKING_SIDE:
        raise ImageError(f"nst: at size={params['size']} this {width}x{height} image would be "
                         f"{size[1]}x{size[0]}; its short side must reach {MIN_WORKING_SIDE} px "
                         "(raise size, or crop the image)")
    contents = resize(batch, *size)
    # fast-style renders the photo as it is, not on the mirrored canvas: it draws lead lines along a
    # mirror's seam (seed pair, 256 px: border step 27.8/255 over the outermost 6 px, against 16.4
    # rendered as it is and 12.2 in the photo).
    starts = model.fast_start(contents, params["style"], ctx) if model.fast_start else contents
    results = []
    # The engine runs steps in inference mode; the optimisation needs autograd, and tensors made
    # in inference mode cannot join a graph, so they are cloned once it is off.
    with torch.inference_mode(False), torch.enable_grad():
        style = style_image.clone()
        for index in range(batch.shape[0]):
            content = contents[index:index + 1].clone()
            done = index / batch.shape[0]
            result = stylise(network, content, style, settings, params["style_scale"],
                             lambda fraction: ctx.progress(done + fraction / batch.shape[0]),
                             ctx.cancel.check, start=starts[index:index + 1].clone())
            results.append(preserve_colour(result, content) if params["preserve_colour"] else result)
    return torch.cat(results)
