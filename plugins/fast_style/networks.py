"""Magenta's arbitrary image stylization networks (Ghiasi et al. 2017) as PyTorch modules, in the form
of their int8 TF Lite release: a MobileNetV2 style predictor (256x256 style image -> 100 numbers)
and a transformer (content image + those numbers -> stylised image) whose instance norms take their
scale and shift from the style vector (conditional instance normalisation).

Every module that carries weights names the TensorFlow layer they come from (`tf_path`), and every
activation the int8 graph quantizes is named by its TensorFlow tensor name. That is how `convert`
fills the modules from the ONNX export without a hand-kept key table, and how the fake-quantization
mode applies exactly the graph's quantize/dequantize steps.

The default runtime leaves the activations unquantized. Its pictures look the same as the int8
graph's (compared side by side on photos with the seed style and Starry Night) with a little less
speckle in flat areas, it runs in bf16 or fp16, and it is stable: the int8 graph is not, as a
one-step rounding difference in a per-channel mean shifts a whole channel downstream (onnxruntime's
own optimisation levels disagree by more than 2/255 on 67 % of one photo's values).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from artchain.core.errors import WeightsError

STYLE_SIZE = 256  # the predictor was trained on 256x256 style images
STYLE_DIMENSIONS = 100
# Added to the variance by Magenta's conditional instance norm (the graph's `batchnorm/add/y`).
NORM_EPSILON = 1e-5
# Two stride-2 convolutions, undone by two 2x upsamplings: other sizes would not come back whole.
SIZE_MULTIPLE = 4

QUANT_PREFIX = "quant/"  # state-dict keys `<network>.quant/<tensor name>` hold (scale, zero point)


class ActivationQuant:
    """The activation quantization of the int8 graph, shared by all modules of one network.

    Inactive (the default runtime) it passes tensors through. Active, each named tensor is rounded
    to its int8 grid and back, as QuantizeLinear followed by DequantizeLinear does in the graph.
    """

    def __init__(self) -> None:
        self.ranges: dict[str, tuple[float, int]] = {}
        self.active = False

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return tensor
        scale, zero_point = self.ranges[name]
        # round() is round-half-to-even, as QuantizeLinear specifies.
        steps = torch.clamp(torch.round(tensor / scale) + zero_point, -128, 127)
        return (steps - zero_point) * scale


class TFConv(nn.Conv2d):
    """A convolution with the padding TensorFlow applied around it in this graph."""

    def __init__(self, tf_path: str, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 groups: int = 1, padding: str = "reflect") -> None:
        # MobileNet's SAME padding at stride 1 is the convolution's own zero padding (no copy).
        own_padding = kernel // 2 if padding == "same" and stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel, stride, padding=own_padding, groups=groups)
        self.tf_path = tf_path
        self.padding_kind = padding

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        k, stride = self.kernel_size[0], self.stride[0]
        if self.padding_kind == "reflect":  # the transformer's MirrorPad: (k - 1) / 2 on every side
            return F.pad(x, (k // 2,) * 4, mode="reflect")
        if stride == 1:
            return x
        # SAME padding at stride 2: enough for ceil(size / stride) outputs, the odd pixel at the
        # bottom and right edge, as TensorFlow puts it.
        height = max((-(-x.shape[-2] // stride) - 1) * stride + k - x.shape[-2], 0)
        width = max((-(-x.shape[-1] // stride) - 1) * stride + k - x.shape[-1], 0)
        return F.pad(x, (width // 2, width - width // 2, height // 2, height - height // 2))


class StyleLinear(nn.Linear):
    """A 1x1 convolution of the style vector (Magenta's `style_params/...`): one norm's scale or shift."""

    def __init__(self, tf_path: str, channels: int) -> None:
        super().__init__(STYLE_DIMENSIONS, channels)
        self.tf_path = tf_path


# ----------------------------------------------------------------------------------------------
# style predictor


class InvertedResidual(nn.Module):
    """A MobileNetV2 block: 1x1 expand (skipped when the factor is 1), 3x3 depthwise, 1x1 project."""

    def __init__(self, quant: ActivationQuant, tf_path: str, in_channels: int, out_channels: int,
                 expansion: int, stride: int) -> None:
        super().__init__()
        self.quant, self.tf_path = quant, tf_path
        hidden = in_channels * expansion
        self.expand = (TFConv(f"{tf_path}/expand", in_channels, hidden, 1, padding="same")
                       if expansion != 1 else None)
        self.depthwise = TFConv(f"{tf_path}/depthwise", hidden, hidden, 3, stride, groups=hidden,
                                padding="same")
        self.project = TFConv(f"{tf_path}/project", hidden, out_channels, 1, padding="same")
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, path = self.quant, self.tf_path
        h = x
        if self.expand is not None:
            h = q(f"{path}/expand/Relu6", F.relu6(self.expand(h), inplace=True))
        h = q(f"{path}/depthwise/Relu6", F.relu6(self.depthwise(self.depthwise.pad(h)), inplace=True))
        h = q(f"{path}/project/BatchNorm/FusedBatchNormV3", self.project(h))
        if self.residual:
            h = q(f"{path}/add", h + x)
        return h


# (expansion, channels, repeats, first stride) of MobileNetV2 at width 1.0
MOBILENET_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))


class StylePredictor(nn.Module):
    """(B, 3, 256, 256) style images in [0, 1] -> (B, 100) style vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = ActivationQuant()
        self.stem = TFConv("MobilenetV2/Conv", 3, 32, 3, 2, padding="same")
        blocks, channels = [], 32
        for expansion, out_channels, repeats, stride in MOBILENET_V2_BLOCKS:
            for repeat in range(repeats):
                index = len(blocks)
                tf_path = "MobilenetV2/expanded_conv" + (f"_{index}" if index else "")
                blocks.append(InvertedResidual(self.quant, tf_path, channels, out_channels, expansion,
                                               stride if repeat == 0 else 1))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = TFConv("MobilenetV2/Conv_1", channels, 1280, 1, padding="same")
        self.bottleneck = TFConv("mobilenet_conv/Conv", 1280, STYLE_DIMENSIONS, 1, padding="same")

    def forward(self, style: torch.Tensor) -> torch.Tensor:
        q = self.quant
        # channels_last, as build_networks leaves the weights: the predictor runs 1.9x faster so.
        x = q("style_image", style).contiguous(memory_format=torch.channels_last)
        x = q("MobilenetV2/Conv/Relu6", F.relu6(self.stem(self.stem.pad(x)), inplace=True))
        x = self.blocks(x)
        x = q("MobilenetV2/Conv_1/Relu6", F.relu6(self.head(x), inplace=True))
        x = q("bottleneck/Mean", x.mean((2, 3), keepdim=True))
        return q("mobilenet_conv/Conv/BiasAdd", self.bottleneck(x)).flatten(1)


# ----------------------------------------------------------------------------------------------
# transformer


class NormStatistics:
    """Per-channel (mean, variance) of every instance norm, in the order the transformer applies
    them: recorded on one pass and replayed on others, so that the tiles of a large image are
    normalised alike, as parts of one picture, instead of each by its own statistics."""

    def __init__(self, recorded: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        self.values = [] if recorded is None else recorded
        self.replaying = recorded is not None
        self.position = 0

    def normalise(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """gamma * (x - mean) / sqrt(variance + eps) + beta for one sample (x: (1, C, H, W)).

        torch's batch norm kernel is the instance norm of a single sample: it reads the statistics
        in float32 and normalises in one pass, 2-6x faster than var_mean plus a multiply-add, and
        unlike folding the mean into a shift it stays exact in bfloat16 when the mean is far
        larger than the spread."""
        if self.replaying:
            mean, variance = self.values[self.position]
            self.position += 1
            return F.batch_norm(x, mean, variance, gamma, beta, training=False, eps=NORM_EPSILON)
        mean, variance = torch.zeros_like(gamma), torch.ones_like(gamma)
        # momentum 1 makes the "running" statistics this sample's own, the variance unbiased.
        result = F.batch_norm(x, mean, variance, gamma, beta, training=True, momentum=1.0, eps=NORM_EPSILON)
        pixels = x.shape[-2] * x.shape[-1]
        self.values.append((mean, variance * ((pixels - 1) / pixels)))
        return result


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose per-channel scale and shift are linear functions of the style vector."""

    def __init__(self, quant: ActivationQuant, tf_path: str, channels: int) -> None:
        super().__init__()
        self.quant, self.tf_path = quant, tf_path  # tf_path: the layer's `.../StyleNorm`
        self.scale = StyleLinear(f"style_params/{tf_path}/Conv_1", channels)
        self.shift = StyleLinear(f"style_params/{tf_path}/Conv", channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, statistics: "NormStatistics | None") -> torch.Tensor:
        q, path = self.quant, self.tf_path
        gamma = q(f"style_params/{path}/Conv_1/BiasAdd", self.scale(style))
        beta = q(f"style_params/{path}/Conv/BiasAdd", self.shift(style))
        if not q.active:
            statistics = statistics or NormStatistics()
            return torch.cat([statistics.normalise(x[index:index + 1], gamma[index], beta[index])
                              for index in range(x.shape[0])]) if x.shape[0] > 1 else \
                statistics.normalise(x, gamma[0], beta[0])
        if statistics is not None:
            raise ValueError("fake quantization computes its own statistics")
        gamma, beta = gamma[:, :, None, None], beta[:, :, None, None]
        # The int8 graph's op order, each intermediate on its own int8 grid.
        mean = q(f"{path}/moments/mean", x.mean((2, 3), keepdim=True))
        variance = q(f"{path}/moments/variance",
                     q(f"{path}/moments/SquaredDifference", (x - mean) ** 2).mean((2, 3), keepdim=True))
        inverse_std = q(f"{path}/batchnorm/Rsqrt",
                        1 / torch.sqrt(q(f"{path}/batchnorm/add", variance + NORM_EPSILON)))
        factor = q(f"{path}/batchnorm/mul", inverse_std * gamma)
        shift = q(f"{path}/batchnorm/sub", beta - q(f"{path}/batchnorm/mul_2", mean * factor))
        return q(f"{path}/batchnorm/mul_1", x * factor) + shift


class NormConv(nn.Module):
    """Reflection pad, convolution, conditional instance norm (activation left to the caller)."""

    def __init__(self, quant: ActivationQuant, tf_path: str, pad_name: str, in_channels: int,
                 out_channels: int, kernel: int) -> None:
        super().__init__()
        self.quant, self.tf_path, self.pad_name = quant, tf_path, pad_name
        self.conv = TFConv(tf_path, in_channels, out_channels, kernel)
        self.norm = ConditionalInstanceNorm(quant, f"{tf_path}/StyleNorm", out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor, statistics: "NormStatistics | None") -> torch.Tensor:
        x = self.quant(self.pad_name, self.conv.pad(x))
        x = self.quant(f"{self.tf_path}/Conv2D", self.conv(x))
        return self.norm(x, style, statistics)


class ResidualBlock(nn.Module):
    def __init__(self, quant: ActivationQuant, tf_path: str, channels: int) -> None:
        super().__init__()
        self.quant, self.tf_path = quant, tf_path
        self.conv1 = NormConv(quant, f"{tf_path}/conv1", f"{tf_path}/MirrorPad", channels, channels, 3)
        self.conv2 = NormConv(quant, f"{tf_path}/conv2", f"{tf_path}/MirrorPad_1", channels, channels, 3)

    def forward(self, x: torch.Tensor, style: torch.Tensor, statistics: "NormStatistics | None") -> torch.Tensor:
        q, path = self.quant, self.tf_path
        h = q(f"{path}/conv1/Relu", F.relu(self.conv1(x, style, statistics), inplace=True))
        h = q(f"{path}/conv2/StyleNorm/batchnorm/add_1", self.conv2(h, style, statistics))
        return q(f"{path}/add", x + h)


class UpsampleBlock(nn.Module):
    """Nearest-neighbour upsampling (by 1 for the last layer, as in Magenta), then NormConv."""

    def __init__(self, quant: ActivationQuant, tf_path: str, in_channels: int, out_channels: int,
                 kernel: int, factor: int) -> None:
        super().__init__()
        self.quant, self.tf_path, self.factor = quant, tf_path, factor
        self.layer = NormConv(quant, f"{tf_path}/conv", f"{tf_path}/MirrorPad", in_channels, out_channels,
                              kernel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, statistics: "NormStatistics | None") -> torch.Tensor:
        if self.factor != 1:
            x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.layer(x, style, statistics)


class StyleTransformer(nn.Module):
    """(B, 3, H, W) content in [0, 1] and (B, 100) style vectors -> (B, 3, H, W) in [0, 1];
    H and W multiples of SIZE_MULTIPLE."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = quant = ActivationQuant()
        self.contract = nn.ModuleList([
            TFConv("transformer/contract/conv1", 3, 8, 9),
            TFConv("transformer/contract/conv2", 8, 16, 3, 2),
            TFConv("transformer/contract/conv3", 16, 32, 3, 2),
        ])
        self.residual = nn.ModuleList([ResidualBlock(quant, f"transformer/residual/residual{index}", 32)
                                       for index in range(1, 6)])
        self.expand = nn.ModuleList([
            UpsampleBlock(quant, "transformer/expand/conv1", 32, 16, 3, 2),
            UpsampleBlock(quant, "transformer/expand/conv2", 16, 8, 3, 2),
            UpsampleBlock(quant, "transformer/expand/conv3", 8, 3, 9, 1),
        ])

    def set_precision(self, dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        """Convolutions in `dtype` and `memory_format` (the content must match); the style layers
        stay float32, as do the norms' statistics: they take 100 numbers and give per-channel ones."""
        for module in self.modules():
            if isinstance(module, TFConv):
                module.to(dtype=dtype, memory_format=memory_format)

    def forward(self, content: torch.Tensor, style: torch.Tensor,
                statistics: NormStatistics | None = None) -> torch.Tensor:
        """`statistics`: None normalises with this input's own statistics; a recording
        NormStatistics also keeps them, a replaying one uses those of an earlier pass instead."""
        q = self.quant
        style = q("mobilenet_conv/Conv/BiasAdd", style)
        x = content
        for index, conv in enumerate(self.contract):
            pad_name = "MirrorPad" + (f"_{index}" if index else "")
            x = q(f"transformer/contract/{pad_name}", conv.pad(x))
            x = q(f"{conv.tf_path}/Relu", F.relu(conv(x), inplace=True))
        for block in self.residual:
            x = block(x, style, statistics)
        for block in self.expand[:-1]:
            x = q(f"{block.tf_path}/conv/Relu", F.relu(block(x, style, statistics), inplace=True))
        last = self.expand[-1]
        x = q(f"{last.tf_path}/conv/StyleNorm/batchnorm/add_1", last(x, style, statistics))
        return q(f"{last.tf_path}/conv/Sigmoid", torch.sigmoid(x))


# ----------------------------------------------------------------------------------------------
# the pair, as stored


@dataclass
class StyleNetworks:
    predictor: StylePredictor
    transformer: StyleTransformer

    def fake_quant(self, active: bool) -> None:
        """Applies (True) or skips (False) the int8 graph's activation quantization (which models
        float32 arithmetic: the networks must be in float32 for it)."""
        for network in (self.predictor, self.transformer):
            network.quant.active = active


def weight_modules(network: nn.Module) -> dict[str, nn.Module]:
    """The modules holding weights, by the TensorFlow layer path they were trained under."""
    return {module.tf_path: module for module in network.modules() if isinstance(module, (nn.Conv2d, nn.Linear))}


def build_networks(state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> StyleNetworks:
    """Both networks, filled from a state dict written by `convert.derive`, in eval mode on `device`."""
    networks = StyleNetworks(StylePredictor(), StyleTransformer())
    for name, network in (("predictor", networks.predictor), ("transformer", networks.transformer)):
        prefix = f"{name}."
        weights = {key[len(prefix):]: value for key, value in state.items()
                   if key.startswith(prefix) and not key.startswith(prefix + QUANT_PREFIX)}
        missing, unexpected = network.load_state_dict(weights, strict=False)
        if missing or unexpected:
            problem = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
            raise WeightsError(f"fast-style: the weights do not fit the {name} network ({problem})")
        network.quant.ranges = {key[len(prefix + QUANT_PREFIX):]: (float(value[0]), int(value[1]))
                                for key, value in state.items() if key.startswith(prefix + QUANT_PREFIX)}
        network.eval().to(device)
    networks.predictor.to(memory_format=torch.channels_last)  # its input is made so in forward
    return networks
