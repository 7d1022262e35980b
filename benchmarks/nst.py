"""nst speed on the CPU, in one command: `python benchmarks/nst.py` (about 10 minutes on 2 busy cores).

Part 1, seconds per loss-and-gradient evaluation at 256 and 512 px (longer side), one scale, every
contestant at the same thread count, each its fastest evaluation (load from other processes that
hits some evaluations does not count):
  artchain/efficientnet-lite0  the nst step's default network, loaded once (as the engine caches it)
  artchain/vgg19               the same step with VGG19 (random weights when `vgg19` is not pulled:
                               the time per evaluation does not depend on the weights' values)
  seed-style                   the seed's way: VGG19 rebuilt for every request, one scale at 512 px,
                               LBFGS as the seed ran it (20 evaluations per step() call, no line search)
An LBFGS step is one evaluation plus its line search's extra ones (`evals/step`). `setup s` is what a
request pays before its first step.

Part 2, time to a given loss with and without `init=fast`, at 512 px on one scale with the step's
defaults (EfficientNet-Lite0): the target is the loss the photo start reaches after `--target-steps`
steps (the step's default number); each start then runs until it gets there. The fast start's
seconds include fast-style's rendering. Both run in the same process, one after the other.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from artchain.core.config import Limits
from artchain.core.imageio import Picture, open_image, to_tensor
from artchain.core.imageops import resize
from artchain.core.processor import StepContext
from artchain.core.weights import WeightStore
from artchain.plugins.nst import EFFICIENTNET_ID, INIT_FAST, VGG19_ID, StyleTransfer
from artchain.plugins.nst.backbones import VGG19Features, has_weights, load_feature_net
from artchain.plugins.nst.start import load_fast_start
from artchain.plugins.nst.transfer import Objective, optimise_scale, stylise, transfer_settings
from fast_style import cpu_flags  # benchmarks/fast_style.py, beside this file

SEED_IMAGES = Path(__file__).resolve().parents[1] / "../shared/seed-images"
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Pair:
    content: Path
    style: Path


def load_pair(pair: Pair, long_side: int) -> tuple[torch.Tensor, Picture]:
    content = to_tensor(open_image(pair.content, Limits()).rgb)
    height, width = content.shape[-2:]
    scale = long_side / max(height, width)
    return resize(content, round(height * scale), round(width * scale)), open_image(pair.style, Limits())


def vgg19_network(store: WeightStore) -> VGG19Features:
    network = VGG19Features()
    if has_weights(store, VGG19_ID):
        network.load_torchvision(store.load(VGG19_ID))
    return network.eval().requires_grad_(False)


def one_scale(**given) -> dict:
    return StyleTransfer.parse_params({"scales": 1, "plateau": 0, **given})


def artchain_seconds_per_evaluation(pair: Pair, backbone: str, long_side: int, steps: int,
                                    store: WeightStore) -> tuple[float, float, float]:
    """(s per evaluation, evaluations per step, setup s): the step's own loop at one scale."""
    params = one_scale(backbone=backbone, steps=steps)
    started = time.perf_counter()
    network = vgg19_network(store) if backbone == VGG19_ID else load_feature_net(backbone, store, CPU)
    setup = time.perf_counter() - started
    content, style = load_pair(pair, long_side)
    settings = transfer_settings(network, params)
    starts = []

    def timed(image: torch.Tensor) -> torch.Tensor:
        starts.append(time.perf_counter())  # an evaluation lasts until the next one starts
        return objective(image)

    with torch.enable_grad():
        objective = Objective(network, content, resize(to_tensor(style.rgb), *content.shape[-2:]), settings)
        image = content.clone().requires_grad_(True)
        objective(image).backward()  # warm-up: the first pass allocates and picks kernels
        optimise_scale(image, timed, settings, lambda: None, lambda index, loss: None)
    starts.append(time.perf_counter())
    return min(b - a for a, b in zip(starts, starts[1:])), (len(starts) - 1) / steps, setup


def seed_style_seconds_per_evaluation(pair: Pair, store: WeightStore,
                                      evaluations: int) -> tuple[float, float]:
    """The seed: build VGG19 for the request, squash the style to the content's shape, run LBFGS."""
    started = time.perf_counter()
    network = vgg19_network(store)
    content, style = load_pair(pair, 512)
    settings = transfer_settings(network, one_scale(backbone=VGG19_ID))
    with torch.enable_grad():
        objective = Objective(network, content, resize(to_tensor(style.rgb), *content.shape[-2:]), settings)
        setup = time.perf_counter() - started
        image = content.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([image], max_iter=evaluations)
        starts = []

        def closure() -> torch.Tensor:
            starts.append(time.perf_counter())  # an evaluation lasts until the next one starts
            with torch.no_grad():
                image.clamp_(0, 1)
            optimizer.zero_grad()
            loss = objective(image)
            loss.backward()
            return loss

        optimizer.step(closure)
    starts.append(time.perf_counter())
    return min(b - a for a, b in zip(starts, starts[1:])), setup


@dataclass
class Trace:
    """Losses of one optimisation with the seconds since the request began (fast-style included)."""

    start_seconds: float | None  # fast-style's rendering; None when starting from the photo
    seconds: list[float]
    evaluations: list[int]  # loss-and-gradient evaluations so far, line searches included
    losses: list[float]

    def reaching(self, target: float) -> tuple[int, int, float] | None:
        """(steps, evaluations, seconds) when the loss first got to `target`."""
        for index, loss in enumerate(self.losses):
            if loss <= target:
                return index + 1, self.evaluations[index], self.seconds[index]
        return None


def optimisation_trace(pair: Pair, store: WeightStore, init: str, steps: int,
                       stop_below: float | None = None) -> Trace:
    """The step's default optimisation at 512 px, from the photo or from fast-style's rendering."""
    params = one_scale(init=init, steps=steps)
    network = load_feature_net(EFFICIENTNET_ID, store, CPU)
    fast_start = load_fast_start(init, store, CPU)
    content, style = load_pair(pair, params["size"])
    settings = transfer_settings(network, params)
    seconds, evaluations, losses = [], [], []
    evaluated = 0

    def count(module, inputs, output) -> None:
        nonlocal evaluated
        evaluated += inputs[0].requires_grad  # the candidate image, not the targets' passes

    network.register_forward_hook(count)

    class Reached(Exception):
        pass

    def record(scale: int, loss: float) -> None:
        seconds.append(time.perf_counter() - began)
        evaluations.append(evaluated)
        losses.append(loss)
        if stop_below is not None and loss <= stop_below:
            raise Reached

    began = time.perf_counter()
    start = start_seconds = None
    if fast_start:
        with torch.inference_mode():
            start = fast_start(content, (style,), StepContext(CPU, (content.shape[-1], content.shape[-2])))
        start = start.clone()
        start_seconds = time.perf_counter() - began
    try:
        with torch.enable_grad():
            stylise(network, content, to_tensor(style.rgb), settings, params["style_scale"],
                    lambda fraction: None, lambda: None, record, start=start)
    except Reached:
        pass
    return Trace(start_seconds, seconds, evaluations, losses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps timed per contestant and size (part 1)")
    parser.add_argument("--target-steps", type=int, default=StyleTransfer.parse_params({})["steps"],
                        help="the photo start's steps that set the target loss (part 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--content", type=Path, default=SEED_IMAGES / "content.png",
                        help="content image (default: the seed's pair in ../shared/seed-images)")
    parser.add_argument("--style", type=Path, default=SEED_IMAGES / "style.png", help="style image")
    args = parser.parse_args()
    pair = Pair(args.content, args.style)
    torch.set_num_threads(args.threads)
    store = WeightStore()
    vgg_note = "trained" if has_weights(store, VGG19_ID) else "random"
    print(f"torch {torch.__version__}, {args.threads} threads; {cpu_flags()}\n")

    rows = []
    artchain_seconds_per_evaluation(pair, EFFICIENTNET_ID, 256, 2, store)  # warm-up: one-off start-up costs
    for backbone in (EFFICIENTNET_ID, VGG19_ID):
        for long_side in (256, 512):
            per_evaluation, per_step, setup = artchain_seconds_per_evaluation(pair, backbone, long_side,
                                                                              args.steps, store)
            label = f"artchain/{backbone}" + (f" ({vgg_note} weights)" if backbone == VGG19_ID else "")
            rows.append((label, long_side, per_evaluation, f"{per_step:.2f}", setup))
    per_evaluation, setup = seed_style_seconds_per_evaluation(pair, store, args.steps)
    rows.append((f"seed-style vgg19 ({vgg_note} weights)", 512, per_evaluation, "-", setup))
    print(f"Part 1: {args.steps} steps each\n")
    print(f"{'implementation':<40} {'px':>4} {'s/eval':>8} {'evals/step':>10} {'setup s':>8}")
    for label, long_side, per_evaluation, per_step, setup in rows:
        print(f"{label:<40} {long_side:>4} {per_evaluation:>8.3f} {per_step:>10} {setup:>8.2f}")

    from_photo = optimisation_trace(pair, store, "content", args.target_steps)
    target = from_photo.losses[-1]
    from_fast = optimisation_trace(pair, store, INIT_FAST, 4 * args.target_steps, stop_below=target)
    print(f"\nPart 2: 512 px, one scale; target loss {target:.4g} = the photo start's after "
          f"{args.target_steps} steps\n")
    print(f"{'start':<26} {'first loss':>10} {'steps':>6} {'evals':>6} {'s':>7}")
    reached = {}
    for label, trace in (("photo (init=content)", from_photo), ("fast-style (init=fast)", from_fast)):
        hit = trace.reaching(target)
        reached[label] = hit
        steps, evaluations, seconds = hit if hit else (len(trace.losses), trace.evaluations[-1], float("nan"))
        print(f"{label:<26} {trace.losses[0]:>10.4g} {steps:>6} {evaluations:>6} {seconds:>7.1f}"
              + (f"  (of which fast-style's rendering {trace.start_seconds:.2f} s)"
                 if trace.start_seconds is not None else ""))
    photo, fast = reached["photo (init=content)"], reached["fast-style (init=fast)"]
    if photo and fast:
        print(f"\nphoto start / fast start: {photo[0] / fast[0]:.2f}x the steps, {photo[1] / fast[1]:.2f}x "
              f"the evaluations, {photo[2] / fast[2]:.2f}x the seconds (above 1: init=fast gets there "
              "sooner; seconds move with the load from other processes, evaluations do not)")
    else:
        print(f"\ninit=fast did not reach the target loss within {4 * args.target_steps} steps")


if __name__ == "__main__":
    main()
