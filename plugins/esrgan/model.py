"""An ESRGAN-family network ready for inference: its architecture (recognised by spandrel), the
precision it runs in, where it can be cut into stages, and the memory it needs per pixel."""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from artchain.core.errors import WeightsError
from artchain.core.precision import resolve_precision
from artchain.core.tiling import bytes_per_pixel, release_freed_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RrdbStages:
    """RRDBNet cut where its work and its memory are. The trunk (first convolution, the RRDB blocks
    and the long skip) does over 90 % of the work, at input resolution, and needs hundreds of pixels
    of context; the tail (upsampling and the last convolutions) holds the memory peak, at output
    resolution, but sees only `tail_context` feature pixels around each output pixel, so it can run
    on small sub-tiles of the trunk's features with exactly the result of one pass.

    The trunk computes what spandrel's modules compute, value for value, holding fewer tensors at
    once (the memory per pixel sets how large a tile can be): the first convolution is run again
    for the long skip instead of being kept through all blocks (it is 0.01 % of the work), and
    the dense blocks grow their concatenations in a workspace that the whole pass shares."""

    head: nn.Module
    blocks: tuple[Callable[[torch.Tensor, "ConcatWorkspace"], torch.Tensor], ...]
    tail: nn.Module
    tail_context: int

    def trunk(self, batch: torch.Tensor, report: Callable[[float], None] | None = None,
              check_cancel: Callable[[], None] | None = None) -> torch.Tensor:
        """The features the tail upsamples; progress and cancellation between blocks, since one
        pass over a large tile takes minutes on a CPU."""
        trunk = self.head(batch)
        workspace = ConcatWorkspace(trunk)
        for index, block in enumerate(self.blocks):
            if check_cancel:
                check_cancel()
            trunk = block(trunk, workspace)
            if report:
                report((index + 1) / (len(self.blocks) + 1))
        return trunk.add_(self.head(batch))


class ConcatWorkspace:
    """Two buffers that the dense blocks' growing concatenations alternate between, for a whole
    trunk pass. A fresh tensor per concatenation cost more than the copy itself: at photo sizes
    each is tens of MB, which the allocator maps from the system and the kernel zero-fills page by
    page, every time (`python benchmarks/esrgan.py --parts` compares the two). Each buffer
    grows to the widest concatenation it receives (in x4plus one holds 160 channels, the other 192)."""

    def __init__(self, like: torch.Tensor):
        batch, _, height, width = like.shape
        self._pixels = (batch, height, width)
        self._dtype, self._device = like.dtype, like.device
        self._buffers = [like.new_empty(0), like.new_empty(0)]
        self._next = 0

    def concatenate(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """`first` and `second` along channels, channels_last, in the buffer not used last time
        (so `first` may be the previous concatenation)."""
        batch, height, width = self._pixels
        channels = first.shape[1] + second.shape[1]
        size = batch * height * width * channels
        index, self._next = self._next, 1 - self._next
        if self._buffers[index].numel() < size:
            self._buffers[index] = None  # freed before the larger one is taken
            self._buffers[index] = torch.empty(size, dtype=self._dtype, device=self._device)
        # A prefix of a flat buffer viewed as NHWC is a contiguous channels_last tensor of any width.
        out = self._buffers[index][:size].view(batch, height, width, channels).permute(0, 3, 1, 2)
        return torch.cat((first, second), 1, out=out)


def _is_plain_rrdb(block: nn.Module) -> bool:
    dense_blocks = [getattr(block, name, None) for name in ("RDB1", "RDB2", "RDB3")]
    return all(type(dense).__name__ == "ResidualDenseBlock_5C" and dense.conv1x1 is None
               for dense in dense_blocks)


def _residual_in_residual(block: nn.Module, batch: torch.Tensor, workspace: ConcatWorkspace) -> torch.Tensor:
    out = batch
    for dense_block in (block.RDB1, block.RDB2, block.RDB3):
        dense, out = out, None  # the concatenation holds the only copy it needs
        for conv in (dense_block.conv1, dense_block.conv2, dense_block.conv3, dense_block.conv4):
            dense = workspace.concatenate(dense, conv(dense))
        # The dense block's input lives on as the first channels of the concatenation.
        out = dense_block.conv5(dense).mul_(0.2).add_(dense[:, :batch.shape[1]])
    return out.mul_(0.2).add_(batch)


def _as_written(block: nn.Module, batch: torch.Tensor, workspace: ConcatWorkspace) -> torch.Tensor:
    return block(batch)


@dataclass(frozen=True)
class MemoryCosts:
    """Bytes per input pixel, measured on the network itself when it is loaded. With stages,
    `window` is the trunk's peak, `features` its result, and `tail` the tail's peak per feature
    pixel; without, `window` is the whole network's peak."""

    window: float
    features: float = 0.0
    tail: float = 0.0


@dataclass
class LoadedModel:
    network: nn.Module
    scale: int
    dtype: torch.dtype
    minimum_side: int
    multiple_of: int
    square: bool
    architecture: str
    stages: RrdbStages | None
    costs: MemoryCosts
    # torch.compile of `network` and the conversion of its result, when asked
    compiled: Callable[[torch.Tensor, torch.dtype], torch.Tensor] | None = None

    def upscaled(self, window: torch.Tensor, output_dtype: torch.dtype) -> torch.Tensor:
        """The whole network's result on a prepared window, in `output_dtype` (see to_output);
        compiled where that was asked for."""
        if self.compiled is None:
            return to_output(self.network(window), output_dtype)
        return self.compiled(window, output_dtype)

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """An input window in the network's dtype and memory layout."""
        return batch.to(self.dtype).contiguous(memory_format=torch.channels_last)


def to_output(result: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A network's result as float `dtype` in [0, 1], or uint8 in 0..255."""
    values = result.float().clamp_(0.0, 1.0)
    if dtype == torch.uint8:
        return values.mul_(255).round_().to(torch.uint8)
    return values.to(dtype)


def _network_output(network: nn.Module, window: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return to_output(network(window), dtype)


def recognise(state_dict: dict):
    """The spandrel descriptor of an RGB image-to-image network in `state_dict` (its tensors become
    the network's, on the CPU: nothing larger than the file is allocated), or a WeightsError saying
    what was found. `weights import --as esrgan` runs this before recording a file."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        descriptor = ModelLoader().load_from_state_dict(state_dict)
    except UnsupportedModelError:
        raise WeightsError(f"esrgan: unknown checkpoint architecture ({_describe_keys(state_dict)})") from None
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"esrgan: the checkpoint does not fit its architecture ({reason})") from None
    if not isinstance(descriptor, ImageModelDescriptor) or (descriptor.input_channels,
                                                              descriptor.output_channels) != (3, 3):
        raise WeightsError(f"esrgan: the checkpoint is a {descriptor.architecture.name} model with "
                           f"{descriptor.input_channels} input / {descriptor.output_channels} output "
                           "channels, not an RGB image model")
    return descriptor


def build_model(state_dict: dict, device: torch.device, precision: str = "auto",
                compile_network: bool = False) -> LoadedModel:
    """Recognises the architecture of `state_dict` and returns it ready for inference on `device`;
    `compile_network` (CUDA) runs it through torch.compile, which compiles on the first window."""
    descriptor = recognise(state_dict)
    name = descriptor.architecture.name
    supported = frozenset(dtype for dtype, ok in ((torch.float16, descriptor.supports_half),
                                                  (torch.bfloat16, descriptor.supports_bfloat16)) if ok)
    dtype = resolve_precision(precision, device, supported, who="esrgan")
    # channels_last lets oneDNN/cuDNN pick their fastest convolution kernels without relayouts.
    network = descriptor.model.eval().to(device=device, dtype=dtype, memory_format=torch.channels_last)
    requirements = descriptor.size_requirements
    # The stages and their workspace answer a CPU's limits: memory, and page faults of fresh
    # tensors. On a GPU the whole network runs per tile: spandrel's module measured 4 % faster there
    # than the stages (1920x1080, fp16, H100), and torch.compile fuses it whole
    # (`python benchmarks/esrgan.py --gpu`).
    stages = split_rrdb(network) if device.type == "cpu" else None
    model = LoadedModel(network, descriptor.scale, dtype, max(1, requirements.minimum),
                        max(1, requirements.multiple_of), requirements.square, name, stages, MemoryCosts(0.0))
    model.costs = measure_costs(model, device)
    if compile_network:
        # dynamic: one compilation serves every tile and photo size (a static one recompiled per size).
        # The conversion is compiled with the network: eager, its passes over the x4 result cost
        # 12 ms of a 416 ms 1920x1080 step (H100).
        model.compiled = torch.compile(functools.partial(_network_output, network), dynamic=True)
    release_freed_memory()  # the checkpoint and the conversions above, about 100 MB for x4plus
    log.info("esrgan: %s x%d in %s, %s; %.0f bytes per input pixel at the peak", name, model.scale,
             str(dtype).removeprefix("torch."), "trunk and tail apart" if model.stages else "one pass",
             model.costs.window)
    return model


def split_rrdb(network: nn.Module) -> RrdbStages | None:
    """The stages of a plain RRDBNet (ESRGAN, Real-ESRGAN x4plus); None for anything else
    (pixel-unshuffling variants, other architectures), which then runs in one pass per tile."""
    from spandrel.architectures.ESRGAN import ESRGAN

    if not isinstance(network, ESRGAN) or network.shuffle_factor:
        return None
    head, shortcut, *tail = network.model
    blocks = getattr(shortcut, "sub", None)
    if not isinstance(head, nn.Conv2d) or type(shortcut).__name__ != "ShortcutBlock" \
            or not isinstance(blocks, nn.Sequential):
        return None
    context = tail_context(tail)
    if context is None:
        return None
    runners = tuple(functools.partial(_residual_in_residual if _is_plain_rrdb(block) else _as_written, block)
                    for block in blocks)
    return RrdbStages(head, runners, nn.Sequential(*tail), context)


def tail_context(modules: list[nn.Module]) -> int | None:
    """Feature pixels of context a chain of upsampling, convolution and activation layers needs
    so that its result on a window equals the whole image's; None for any other layer."""
    scale, reach = 1.0, 0.0
    for module in (leaf for top in modules for leaf in top.modules() if not list(leaf.children())):
        if isinstance(module, nn.Upsample) and module.mode == "nearest" and module.size is None:
            scale *= float(module.scale_factor)
        elif isinstance(module, nn.PixelShuffle):
            scale *= module.upscale_factor
        elif isinstance(module, nn.Conv2d) and module.stride == (1, 1):
            reach += max(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size)) / scale
        elif not isinstance(module, (nn.LeakyReLU, nn.ReLU, nn.PReLU)):
            return None
    # One more pixel for nearest upsampling's rounding of window edges.
    return math.ceil(reach) + 1


def measure_costs(model: LoadedModel, device: torch.device) -> MemoryCosts:
    """Bytes per input pixel, from the peaks of two small passes (see core.tiling.bytes_per_pixel).
    Every RRDB block holds the same tensors at its peak, so the trunk is probed with its first and
    last block only: the same answer for a twelfth of the work."""
    side = -(-max(8, model.minimum_side) // model.multiple_of) * model.multiple_of
    generator = torch.Generator().manual_seed(0)

    def samples(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(model.prepare(torch.rand(1, channels, size, size, generator=generator).to(device))
                     for size in (side, 2 * side))

    with torch.inference_mode():
        if model.stages is None:
            return MemoryCosts(bytes_per_pixel(model.network, *samples(3)))
        stages = model.stages
        shortened = replace(stages, blocks=(stages.blocks[0], stages.blocks[-1]))
        trunk = bytes_per_pixel(shortened.trunk, *samples(3))
        features = stages.head.out_channels * model.dtype.itemsize
        tail = bytes_per_pixel(stages.tail, *samples(stages.head.out_channels))
        return MemoryCosts(trunk, features, tail)


def _describe_keys(state_dict: dict) -> str:
    keys = list(state_dict)
    if not keys:
        return "the file holds no tensors"
    shown = ", ".join(keys[:3])
    return f"{len(keys)} tensors, first keys: {shown}{', ...' if len(keys) > 3 else ''}"
