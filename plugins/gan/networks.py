"""The GAN plugin's networks, laid out so the seeds' checkpoints load into them with strict=True.

* `CycleUNet`: the TelegramBot seed's CycleGAN generator (width `init_nc`, 32 in the seed).
* `Pix2PixUNet`: the Pix2Pix-superRes-bot seed's generator (width `features`, 64 in the seed).
* `PatchDiscriminator`: the 70x70 PatchGAN both trainers use.

`generator_from_state_dict` rebuilds either generator from a seed checkpoint or from this plugin's
own export (fp16 safetensors); the width is read off the tensor shapes, so no metadata is needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from artchain.core.errors import WeightsError

SEED_GENERATOR_KEY = "B2A_gen_state_dict"  # the seed's photo -> painting generator


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    # Indices 0 and 3 hold the convolutions, as in the seed's state dict.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.InstanceNorm2d(out_channels), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.InstanceNorm2d(out_channels), nn.ReLU(),
    )


def _strided_down(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1),
                         nn.InstanceNorm2d(channels), nn.ReLU())


class CycleUNet(nn.Module):
    """Four halvings, so both sides must be multiples of `size_multiple`. Input and output in [-1, 1]."""

    size_multiple = 16

    def __init__(self, init_nc: int = 32) -> None:
        super().__init__()
        widths = [init_nc, init_nc * 2, init_nc * 4, init_nc * 8]
        self.init_nc = init_nc
        for level, width in enumerate(widths):
            previous = widths[level - 1] if level else 3
            setattr(self, f"enc_conv{level}", _conv_block(previous, width))
            setattr(self, f"pool{level}", _strided_down(width))
        self.bottleneck_conv = _conv_block(widths[-1], widths[-1] * 2)
        for step, width in enumerate(reversed(widths)):
            setattr(self, f"upsample{step}", nn.ConvTranspose2d(width * 2, width, 2, stride=2))
            setattr(self, f"dec_conv{step}", _conv_block(width * 2, width))
        self.final_conv = nn.Sequential(nn.Conv2d(init_nc, 3, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in range(4):
            x = getattr(self, f"enc_conv{level}")(x)
            skips.append(x)
            x = getattr(self, f"pool{level}")(x)
        x = self.bottleneck_conv(x)
        for step in range(4):
            upsampled = getattr(self, f"upsample{step}")(x)
            x = getattr(self, f"dec_conv{step}")(torch.cat([skips[3 - step], upsampled], dim=1))
        return self.final_conv(x)


class _DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 4, 2, 1, bias=False, padding_mode="reflect"),
            nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MaskedAsFloat32Dropout(nn.Dropout):
    """Dropout that drops the units float32 NCHW activations would drop with the same seed, in any
    precision and memory layout. The random stream fills a mask in memory order and per dtype, so in
    channels_last (CPU) or fp16 (CUDA) the same seed dropped other units: neon came out 30 dB away
    from its fp32 result instead of a rounding away. Float32 NCHW runs plain dropout, as the seed did."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or (x.dtype == torch.float32 and x.is_contiguous()):
            return super().forward(x)
        mask = F.dropout(torch.ones(x.shape, device=x.device), self.p, training=True)
        return x * mask.to(x.dtype)


class _UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: bool) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
                                  nn.BatchNorm2d(out_channels), nn.ReLU())
        self.dropout = MaskedAsFloat32Dropout(0.5) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.conv(x))


class Pix2PixUNet(nn.Module):
    """Eight halvings down to a 1x1 bottleneck, so both sides must be multiples of 256.

    Its BatchNorm and dropout make the output depend on the module's mode: see `processors.Pix2PixNeon`
    for which one inference uses and why.
    """

    size_multiple = 256

    def __init__(self, features: int = 64) -> None:
        super().__init__()
        f = features
        self.features = features
        self.initial_down = nn.Sequential(nn.Conv2d(3, f, 4, 2, 1, padding_mode="reflect"), nn.LeakyReLU(0.2))
        down_widths = [f, f * 2, f * 4, f * 8, f * 8, f * 8, f * 8]
        for index in range(1, 7):
            setattr(self, f"down{index}", _DownBlock(down_widths[index - 1], down_widths[index]))
        self.bottleneck = nn.Sequential(nn.Conv2d(f * 8, f * 8, 4, 2, 1), nn.ReLU())
        # up_k takes the previous decoder output concatenated with the mirrored encoder output.
        up_widths = [f * 8, f * 8, f * 8, f * 8, f * 4, f * 2, f]
        self.up1 = _UpBlock(f * 8, up_widths[0], dropout=True)
        for index in range(2, 8):
            in_channels = up_widths[index - 2] + down_widths[8 - index]
            setattr(self, f"up{index}", _UpBlock(in_channels, up_widths[index - 1], dropout=index <= 3))
        self.final_up = nn.Sequential(nn.ConvTranspose2d(f * 2, 3, 4, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.initial_down(x)]
        for index in range(1, 7):
            skips.append(getattr(self, f"down{index}")(skips[-1]))
        x = self.up1(self.bottleneck(skips[-1]))
        for index in range(2, 8):
            x = getattr(self, f"up{index}")(torch.cat([x, skips[8 - index]], dim=1))
        return self.final_up(torch.cat([x, skips[0]], dim=1))


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN: one real/fake logit per overlapping patch (InstanceNorm, LeakyReLU 0.2)."""

    def __init__(self, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for stride in (2, 2, 1):
            layers += [nn.Conv2d(channels, channels * 2, 4, stride, 1),
                       nn.InstanceNorm2d(channels * 2, affine=True), nn.LeakyReLU(0.2)]
            channels *= 2
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_gan_weights(network: nn.Module) -> nn.Module:
    """The initialisation of the CycleGAN and pix2pix papers: N(0, 0.02) filters, zero biases, norm
    scales N(1, 0.02). PyTorch's default leaves biases large enough that a narrow generator starts with
    a strong colour cast which Adam, moving each weight about `lr` per step, takes thousands of steps
    to undo."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)) and module.affine:
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)
    return network


def init_upsampling_without_lattice(network: nn.Module) -> nn.Module:
    """Gives every stride-2 transposed convolution the same filter at each of its output phases, times
    a bilinear (4-tap) or nearest (2-tap) kernel, so it starts as a smooth upsampling. From random taps
    the four output phases of each 2x2 block differ and the network prints a 2-pixel lattice until
    training evens them out, which a short run never quite does."""
    for module in _upsamplings(network):
        taps = {2: [1.0, 1.0], 4: [0.25, 0.75, 0.75, 0.25]}[module.kernel_size[0]]
        kernel_1d = torch.tensor(taps)
        with torch.no_grad():
            mixing = module.weight[:, :, :1, :1].clone()
            module.weight.copy_(mixing * torch.outer(kernel_1d, kernel_1d))
    return network


def tie_upsampling_phases(network: nn.Module) -> None:
    """Makes every stride-2 transposed convolution (2x2 or 4x4 kernels) give its four output phases
    the same response to a flat input: the taps feeding each phase (those of equal index parity) are
    shifted, as little as possible, until their sums are equal. Random or freely trained, the phases
    differ and the network prints a 2-pixel lattice over the whole frame; measured: the outputs'
    half-sampling energy reached 5-6 times a photo's after 500 iterations of the cubism run and 4-6
    times after 500 of the neon run, although the teacher's targets have none. For 2x2 kernels this
    ties the four taps: nearest-neighbour upsampling and a 1x1 convolution (Odena et al. 2016's cure
    for checkerboard artefacts), in the seed's own layout."""
    with torch.no_grad():
        for module in _upsamplings(network):
            weight = module.weight
            inputs, outputs, size, _ = weight.shape
            half = size // 2
            # (in, out, i, p, j, q): tap (2i + p, 2j + q) feeds the output phase (p, q).
            taps = weight.view(inputs, outputs, half, 2, half, 2)
            phase_sums = taps.sum((2, 4), keepdim=True)
            excess = phase_sums - phase_sums.mean((3, 5), keepdim=True)
            taps.sub_(excess / half ** 2)


def _upsamplings(network: nn.Module) -> list[nn.ConvTranspose2d]:
    return [module for module in network.modules() if isinstance(module, nn.ConvTranspose2d)
            and module.stride == (2, 2) and module.kernel_size in ((2, 2), (4, 4))]


# Widths the generators are built at (the seeds: 32 and 64); a file claiming more is refused before
# anything is allocated (width 384 would need 5 GB, 1024 about 33 GB).
MAX_WIDTH = 128
_WIDTH_KEYS = {"CycleUNet": "enc_conv0.0.weight", "Pix2PixUNet": "initial_down.0.weight"}


def _width_of(state: dict, key: str) -> int:
    tensor = state.get(key)
    if not isinstance(tensor, torch.Tensor):
        raise WeightsError(f"not a GAN generator checkpoint: no {key!r} tensor")
    if tensor.dim() != 4:
        raise WeightsError(f"not a GAN generator checkpoint: {key!r} has shape {list(tensor.shape)}")
    width = int(tensor.shape[0])
    if not 1 <= width <= MAX_WIDTH:
        raise WeightsError(f"a generator of width {width} is outside 1..{MAX_WIDTH}; refused before building it")
    return width


def check_generator_state(state: dict, kind: type[CycleUNet] | type[Pix2PixUNet]) -> tuple[dict, int]:
    """The generator's own state dict (a seed checkpoint's is nested) and its width, once every key
    and shape is checked against the architecture built on the meta device (no memory used)."""
    if isinstance(state.get(SEED_GENERATOR_KEY), dict):
        state = state[SEED_GENERATOR_KEY]
    width = _width_of(state, _WIDTH_KEYS[kind.__name__])
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in kind(width).state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = sorted(key for key in expected.keys() & found.keys() if expected[key] != found[key])
    if missing or unexpected or wrong or len(found) != len(state):
        detail = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}" if unexpected
                  else f"{wrong[0]!r} is {list(found[wrong[0]])}, expected {list(expected[wrong[0]])}" if wrong
                  else "non-tensor entries")
        raise WeightsError(f"checkpoint does not fit the {kind.__name__} layout of width {width} ({detail})")
    return state, width


def generator_from_state_dict(state: dict, kind: type[CycleUNet] | type[Pix2PixUNet]) -> nn.Module:
    """Builds a float32 `kind` generator from a seed checkpoint or an artchain export, strictly."""
    state, width = check_generator_state(state, kind)
    model = kind(width)
    state = {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise WeightsError(f"checkpoint does not fit the {kind.__name__} layout ({first_line})") from None
    return model
