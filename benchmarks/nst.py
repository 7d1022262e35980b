"""nst speed on CPU, in one command: `python benchmarks/nst.py` (a few minutes on 2 busy cores).

Seconds per optimiser step at 256 and 512 px (longer side) on the seed's content/style pair, every
contestant with the same thread count:
  artchain/efficientnet-lite0  the nst step's default network, loaded once, one scale
  artchain/vgg19               the same step with VGG19 (random weights when `vgg19` is not pulled:
                               the time per step does not depend on the weights' values)
  seed-style                   the seed's way: VGG19 rebuilt for every request, one scale at 512 px,
                               LBFGS as the seed ran it (20 evaluations per step() call, no line search)
A step is one loss-and-gradient evaluation (LBFGS's line search may take more than one per
optimiser step, so artchain's time per optimiser step is up to ~1.5x the figure shown). `setup s` is what a request pays before its first step.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from artchain.core.config import Limits
from artchain.core.imageio import open_image, to_tensor
from artchain.core.imageops import resize
from artchain.core.weights import WeightStore
from artchain.plugins.nst import StyleTransfer
from artchain.plugins.nst import VGG19_ID
from artchain.plugins.nst.backbones import VGG19Features
from artchain.plugins.nst.transfer import Objective, optimise_scale, transfer_settings

SEED_IMAGES = Path(__file__).resolve().parents[1] / "../shared/seed-images"


@dataclass(frozen=True)
class Pair:
    content: Path
    style: Path


def load_pair(pair: Pair, long_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    content = to_tensor(open_image(pair.content, Limits()).rgb)
    style = to_tensor(open_image(pair.style, Limits()).rgb)
    height, width = content.shape[-2:]
    scale = long_side / max(height, width)
    return resize(content, round(height * scale), round(width * scale)), style


def vgg19_network(store: WeightStore) -> VGG19Features:
    network = VGG19Features()
    if has_trained_vgg19(store):
        network.load_torchvision(store.load(VGG19_ID))
    return network.eval().requires_grad_(False)


def has_trained_vgg19(store: WeightStore) -> bool:
    return store.status(VGG19_ID).state in ("present", "imported", "bundled")


def artchain_seconds_per_step(pair: Pair, backbone: str, long_side: int, steps: int,
                              store: WeightStore) -> tuple[float, float]:
    """The nst step's own code at one scale; the network is built once, as the engine caches it."""
    step = StyleTransfer()
    params = StyleTransfer.parse_params({"backbone": backbone, "steps": steps, "scales": 1, "plateau": 0})
    started = time.perf_counter()
    network = vgg19_network(store) if backbone == VGG19_ID else step.load(params, store, torch.device("cpu"))
    setup = time.perf_counter() - started
    content, style = load_pair(pair, long_side)
    settings = transfer_settings(network, params)
    evaluations = 0

    def counted(image: torch.Tensor) -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        return objective(image)

    with torch.enable_grad():
        objective = Objective(network, content, resize(style, *content.shape[-2:]), settings)
        image = content.clone().requires_grad_(True)
        objective(image).backward()  # warm-up: the first pass allocates and picks kernels
        started = time.perf_counter()
        optimise_scale(image, counted, settings, lambda: None, lambda index, loss: None)
    return (time.perf_counter() - started) / evaluations, setup


def seed_style_seconds_per_step(pair: Pair, store: WeightStore, evaluations: int) -> tuple[float, float]:
    """The seed: build VGG19 for the request, squash the style to the content's shape, run LBFGS."""
    started = time.perf_counter()
    network = vgg19_network(store)
    content, style = load_pair(pair, 512)
    settings = transfer_settings(network, StyleTransfer.parse_params({"backbone": VGG19_ID}))
    with torch.enable_grad():
        objective = Objective(network, content, resize(style, *content.shape[-2:]), settings)
        setup = time.perf_counter() - started
        image = content.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([image], max_iter=evaluations)
        count = 0

        def closure() -> torch.Tensor:
            nonlocal count
            count += 1
            with torch.no_grad():
                image.clamp_(0, 1)
            optimizer.zero_grad()
            loss = objective(image)
            loss.backward()
            return loss

        started = time.perf_counter()
        optimizer.step(closure)
    return (time.perf_counter() - started) / count, setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps timed per contestant and size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--content", type=Path, default=SEED_IMAGES / "content.png",
                        help="content image (default: the seed's pair in ../shared/seed-images)")
    parser.add_argument("--style", type=Path, default=SEED_IMAGES / "style.png", help="style image")
    args = parser.parse_args()
    pair = Pair(args.content, args.style)
    torch.set_num_threads(args.threads)
    store = WeightStore()
    vgg_note = "trained" if has_trained_vgg19(store) else "random"
    rows = []
    artchain_seconds_per_step(pair, "efficientnet-lite0", 256, 2, store)  # warm-up: one-off start-up costs
    for backbone in ("efficientnet-lite0", "vgg19"):
        for long_side in (256, 512):
            per_step, setup = artchain_seconds_per_step(pair, backbone, long_side, args.steps, store)
            label = f"artchain/{backbone}" + (f" ({vgg_note} weights)" if backbone == "vgg19" else "")
            rows.append((label, long_side, per_step, setup))
    per_step, setup = seed_style_seconds_per_step(pair, store, args.steps)
    rows.append((f"seed-style vgg19 ({vgg_note} weights)", 512, per_step, setup))
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps each\n")
    print(f"{'implementation':<40} {'px':>4} {'s/step':>8} {'setup s':>8}")
    for label, long_side, per_step, setup in rows:
        print(f"{label:<40} {long_side:>4} {per_step:>8.3f} {setup:>8.2f}")


if __name__ == "__main__":
    main()
