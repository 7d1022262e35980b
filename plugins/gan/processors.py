"""GAN style processors: three CycleGAN painting styles and the pix2pix neon look.

A style step returns the size it received: each image is resized to a working resolution (short side
`size`, the scale the weights were trained at, which sets the size of the brush strokes), reflect-padded
to the network's multiple, run, cropped back and resized to the input's own size, so a small picture
is not blown up and a large one not shrunk. `output=working` returns the working resolution instead,
for a chain that upscales next (`pix2pix-neon:output=working,esrgan,resize-back`: the upscaler then
works on the small image). Images are run one at a time and the working resolution is capped, which
bounds memory on big inputs.

Precision: `auto` (core.precision's policy) runs the generator in bf16 on a CPU with bf16 instructions
and in fp16 on a GPU. On a 2-core AVX512-BF16 CPU a width-32 CycleGAN UNet ran 2.5x faster at
320x320 and 1.8x at 1024x1024 in bf16 channels_last, at 59-61 dB PSNR of the fp32 result (in fp32,
channels_last was 0.91x NCHW there, so fp32 keeps NCHW); neon's generator 1.9x at 256 and 2.8x at
1024, though its whole step at the default size gains little (resizing the photo dominates; all
whole-step figures: `python benchmarks/styles.py`). Neon's dropout drops the units fp32 would
(networks.MaskedAsFloat32Dropout), so its result stays a rounding away from fp32's.
`precision=fp32` gives the seeds' own numbers.

pix2pix-neon and BatchNorm: the seed ran its generator in training mode, as the pix2pix paper does
(BatchNorm normalises with the image's own statistics, dropout stays on as the noise source). Its
weights were only ever judged that way, so that is the default here, `mode=paper`; the dropout masks
are drawn from a generator seeded with the chain's seed, so the same input gives the same output, and
each image is normalised on its own so a result never depends on its batch companions. `mode=eval`
uses the stored running statistics and no dropout instead (the usual PyTorch inference).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from artchain.core.errors import ImageError
from artchain.core.precision import PRECISION_PARAM
from artchain.core.processor import InputNeeds, Param, Processor, StepContext

if TYPE_CHECKING:
    import torch

    from artchain.core.weights import WeightStore

# Dropout draws from torch's one global generator: jobs on parallel threads would consume each
# other's draws, so the seeded section runs one at a time.
_SEEDED_DROPOUT = threading.Lock()
MIN_SIDE = 8  # below this an image has no aspect worth keeping and reflect padding is meaningless
MAX_WORKING_PIXELS = 2048 * 2048  # caps memory on extreme aspect ratios or huge `size` values


def _size_param(default: int) -> Param:
    return Param("size", int, default, help="short side of the working resolution in pixels (the output "
                 "keeps the input's size; a larger working size means finer brush strokes)", min=32, max=2048)


OUTPUT_PARAM = Param("output", str, "input", choices=("input", "working"),
                     help="input: the result has the input's size; working: the working resolution's")


def working_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The (H, W) with the given short side and the input's aspect, shrunk to MAX_WORKING_PIXELS."""
    from artchain.core.imageops import fit_short_side

    target_h, target_w = fit_short_side(height, width, short_side)
    excess = (target_h * target_w / MAX_WORKING_PIXELS) ** 0.5
    if excess > 1:
        target_h, target_w = max(1, int(target_h / excess)), max(1, int(target_w / excess))
    return target_h, target_w


def to_grayscale_rgb(batch: "torch.Tensor") -> "torch.Tensor":
    """ITU-R 601 luma (what PIL's convert('L') computes) replicated to three channels."""
    luma = 0.299 * batch[:, 0:1] + 0.587 * batch[:, 1:2] + 0.114 * batch[:, 2:3]
    return luma.expand(-1, 3, -1, -1)


def _memory_format(dtype: "torch.dtype") -> "torch.memory_format":
    """channels_last where the network runs in reduced precision (faster there); fp32 keeps NCHW."""
    import torch

    return torch.contiguous_format if dtype == torch.float32 else torch.channels_last


class GanStyle(Processor):
    """Shared inference of the GAN generators; subclasses name the network and the weight id."""

    needs = InputNeeds(min_side=MIN_SIDE)
    network_name = "CycleUNet"

    def check_weights(self, weight_id: str, state: dict) -> None:
        from . import networks

        networks.check_generator_state(state, getattr(networks, self.network_name))

    def model_key(self, params: dict[str, Any]) -> tuple:
        return (params["precision"],)

    def load(self, params: dict[str, Any], store: "WeightStore", device: "torch.device") -> Any:
        import torch

        from artchain.core.precision import resolve_precision

        from . import networks

        dtype = resolve_precision(params["precision"], device, frozenset({torch.bfloat16, torch.float16}),
                                  who=self.name)
        model = networks.generator_from_state_dict(store.load(self.weights[0]),
                                                   getattr(networks, self.network_name))
        model.requires_grad_(False)
        return model.to(device=device, dtype=dtype, memory_format=_memory_format(dtype)).eval()

    def prepare_input(self, image: "torch.Tensor") -> "torch.Tensor":
        return image

    def run_network(self, model: Any, x: "torch.Tensor", params: dict[str, Any],
                    ctx: StepContext) -> "torch.Tensor":
        return model(x)

    def process(self, batch: "torch.Tensor", model: Any, params: dict[str, Any],
                ctx: StepContext) -> "torch.Tensor":
        import torch

        from artchain.core.imageops import crop_to, pad_to_multiple, resize

        height, width = batch.shape[-2:]
        if min(height, width) < MIN_SIDE:
            raise ImageError(f"{self.name}: image is {width}x{height}; both sides must be at least "
                             f"{MIN_SIDE} pixels")
        target_h, target_w = working_size(height, width, params["size"])
        dtype = next(model.parameters()).dtype
        multiple = model.size_multiple
        padded_pixels = -(-target_h // multiple) * multiple * (-(-target_w // multiple) * multiple)
        if min(target_h, target_w) < MIN_SIDE or padded_pixels > MAX_WORKING_PIXELS:
            # Padding to the network's multiple would exceed the memory cap (or leave nothing).
            raise ImageError(f"{self.name}: a {width}x{height} image is too elongated to process "
                             f"(aspect ratio over {MAX_WORKING_PIXELS // multiple ** 2}:1 at this network)")
        outputs = []
        for index in range(batch.shape[0]):
            ctx.cancel.check()
            image = resize(self.prepare_input(batch[index:index + 1]), target_h, target_w)
            padded, size = pad_to_multiple(image, model.size_multiple)
            network_input = (padded * 2 - 1).to(dtype, memory_format=_memory_format(dtype))
            with torch.inference_mode():
                styled = self.run_network(model, network_input, params, ctx).float()
            styled = crop_to((styled + 1) / 2, size)
            if params["output"] == "input":
                styled = resize(styled, height, width)
            outputs.append(styled.clamp(0, 1))
            ctx.progress((index + 1) / batch.shape[0])
        return torch.cat(outputs)


class _CycleGanStyle(GanStyle):
    params = (_size_param(320), OUTPUT_PARAM, PRECISION_PARAM)
    style_network = "cyclegan"


class CycleGanCubism(_CycleGanStyle):
    name = "cyclegan-cubism"
    aliases = ("cubism",)
    description = "cubist-inspired painting (Kandinsky and faceted planes; the seed's CycleGAN network)"
    weights = ("cyclegan-cubism",)


class CycleGanRenaissance(_CycleGanStyle):
    name = "cyclegan-renaissance"
    aliases = ("renaissance",)
    description = "renaissance painting (Leonardo, Bellini, Dürer, Bruegel, Arcimboldo; the seed's CycleGAN network)"
    weights = ("cyclegan-renaissance",)


class CycleGanExpressionism(_CycleGanStyle):
    name = "cyclegan-expressionism"
    aliases = ("expressionism",)
    description = "expressionist painting (Van Gogh's palette and strokes; the seed's CycleGAN network)"
    weights = ("cyclegan-expressionism",)


class Pix2PixNeon(GanStyle):
    name = "pix2pix-neon"
    aliases = ("neon",)
    description = "pix2pix neon glow: the photo in grayscale, lit in glowing neon colours"
    weights = ("pix2pix-neon",)
    network_name = "Pix2PixUNet"
    style_network = "pix2pix"
    params = (
        _size_param(256),
        OUTPUT_PARAM,
        Param("mode", str, "paper", choices=("paper", "eval"),
              help="paper: BatchNorm on the image's own statistics and seeded dropout, as the seed "
                   "and the pix2pix paper ran it; eval: stored running statistics, no dropout"),
        PRECISION_PARAM,
    )

    def model_key(self, params: dict[str, Any]) -> tuple:
        return (params["mode"], params["precision"])

    def load(self, params: dict[str, Any], store: "WeightStore", device: "torch.device") -> Any:
        import torch

        model = super().load(params, store, device)
        if params["mode"] == "paper":
            model.train()
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.momentum = 0.0  # training mode must not drift the cached model's statistics
        return model

    def prepare_input(self, image: "torch.Tensor") -> "torch.Tensor":
        return to_grayscale_rgb(image)

    def run_network(self, model: Any, x: "torch.Tensor", params: dict[str, Any],
                    ctx: StepContext) -> "torch.Tensor":
        import torch

        devices = [x.device] if x.device.type == "cuda" else []
        with _SEEDED_DROPOUT, torch.random.fork_rng(devices=devices):
            torch.manual_seed(ctx.seed)
            return model(x)


PROCESSORS = (CycleGanCubism, CycleGanRenaissance, CycleGanExpressionism, Pix2PixNeon)
