"""The style steps' speed and fidelity per precision, in one command:
`python benchmarks/styles.py [--gpu] [--threads N] [--rounds N]`.

The four GAN styles and fast-style run whole, through their processors as the engine runs them (load
once, then resize, network, resize back), at their default parameters on scikit-image's coffee photo
scaled to 1280x853 (the size Telegram delivers a photo at), once with `precision=fp32` and once with
`precision=auto`, what a user gets: bf16 on a CPU with bf16 instructions, fp32 on one without, fp16
on a CUDA GPU (`--gpu`). fast-style takes scikit-image's retina image as its style. Contestants run
in turn, round by round, so load from other processes hits them alike; each keeps its best time on a
CPU and its median on a GPU. `speed-up` is fp32's time over auto's; `PSNR` is auto's result against
fp32's (the bar for a reduced precision: 40 dB). Nothing here runs in the tests.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from artchain.core import imageio
from artchain.core.precision import precision_name
from artchain.core.processor import StepContext
from artchain.core.weights import WeightStore
from artchain.plugins.fast_style import FastStyle
from artchain.plugins.gan.processors import PROCESSORS as GAN_STYLES
from artchain.plugins.gan.training import hardware_note

PHOTO_SIZE = (1280, 853)
MIN_PSNR = 40.0


def skimage_picture(name: str, size: tuple[int, int] | None = None) -> imageio.Picture:
    from skimage import data

    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    return imageio.Picture(image.resize(size, Image.Resampling.BICUBIC) if size else image, name=name)


def seconds_of(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def psnr(result: torch.Tensor, reference: torch.Tensor) -> float:
    error = (result.double() - reference.double()).pow(2).mean().item()
    return float("inf") if error == 0 else 10 * np.log10(1 / error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="run on the first CUDA GPU instead of the CPU")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step", action="append", help="only this step (repeatable; default: all)")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: torch sees no CUDA GPU here")
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.gpu else "cpu")
    store = WeightStore()
    photo = imageio.to_tensor(skimage_picture("coffee", PHOTO_SIZE).rgb).to(device)
    style = (skimage_picture("retina"),)
    context = StepContext(device, PHOTO_SIZE)
    software = f"cuDNN {torch.backends.cudnn.version()}" if args.gpu else f"torch {torch.__version__}"
    print(f"{hardware_note(str(device))}, {software}; a {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} photo, default parameters, "
          f"{'median' if args.gpu else 'best'} of {args.rounds} rounds after a first\n")
    print(f"{'step':<24}{'auto is':>9}{'fp32 s':>9}{'auto s':>9}{'speed-up':>10}{'PSNR dB':>9}")
    processors = [processor_class() for processor_class in (*GAN_STYLES, FastStyle)]
    unknown = set(args.step or ()) - {processor.name for processor in processors}
    if unknown:
        raise SystemExit(f"--step: no style step named {', '.join(sorted(unknown))}")
    for processor in (processor for processor in processors if not args.step or processor.name in args.step):
        runs, results, dtypes = {}, {}, {}
        for precision in ("fp32", "auto"):
            given = {"precision": precision, **({"style": "retina.png"} if processor.name == "fast-style" else {})}
            params = processor.parse_params(given)
            if processor.name == "fast-style":
                params["style"] = style  # what the engine hands over once it has decoded the files
            model = processor.load(params, store, device)
            dtypes[precision] = getattr(model, "dtype", None) or next(model.parameters()).dtype

            def run(processor=processor, model=model, params=params):
                with torch.inference_mode():
                    return processor.process(photo, model, params, context)

            results[precision] = run()  # the first run: kernels chosen, buffers allocated
            runs[precision] = run
        times = {precision: [] for precision in runs}
        for _ in range(args.rounds):
            for precision, run in runs.items():
                times[precision].append(seconds_of(run, device))
        pick = statistics.median if args.gpu else min
        fp32, auto = pick(times["fp32"]), pick(times["auto"])
        decibels = psnr(results["auto"], results["fp32"])
        flag = "" if decibels >= MIN_PSNR else f"  below {MIN_PSNR:.0f} dB"
        print(f"{processor.name:<24}{precision_name(dtypes['auto']):>9}{fp32:>9.3f}{auto:>9.3f}"
              f"{fp32 / auto:>9.2f}x{decibels:>9.1f}{flag}", flush=True)


if __name__ == "__main__":
    main()
