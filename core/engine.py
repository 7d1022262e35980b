"""The engine: checks a chain, loads each model once (bounded LRU cache), runs the steps.

`check` does everything that can fail before work starts (steps, parameters, devices, weights, the
files the steps read, decoded with the configured limits) and returns a `Plan`; `execute` runs a
plan on a picture. Safe to call from several threads at once: processors are stateless, the model
cache is locked, and a model being loaded by one thread is waited for, not loaded twice, by another.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from PIL import Image

from . import imageio
from .chain import Chain, ChainParser, Step, StepSpec
from .config import Config
from .errors import ChainError, ImageError
from .job import FileKey, InputFile, read_step_files
from .plugins import Registry
from .processor import CancelToken, StepContext
from .weights import WeightStore

log = logging.getLogger(__name__)
# (step index, step count, step name, fraction of that step done)
StepProgressFn = Callable[[int, int, str, float], None]


@dataclass
class StepTiming:
    name: str
    seconds: float


@dataclass(frozen=True)
class Plan:
    """A checked chain, ready to run: where, and each step's parameters with its files decoded."""

    chain: Chain
    device: torch.device
    params: tuple[dict[str, Any], ...]


@dataclass
class RunResult:
    image: Image.Image
    chain: Chain
    device: torch.device
    timings: list[StepTiming] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.timings)


def model_bytes(model: Any) -> int:
    """Memory a cached model holds; modules report their tensors (also a module a plugin wraps as
    its `network` attribute), anything else counts as small."""
    total = 0
    modules = model if isinstance(model, (list, tuple)) else [model]
    for module in modules:
        module = getattr(module, "network", module)
        if isinstance(module, torch.nn.Module):
            for tensor in [*module.parameters(), *module.buffers()]:
                total += tensor.numel() * tensor.element_size()
    return total


class ModelCache:
    """Least-recently-used models within a byte budget; a model larger than the budget is still
    used for its own run but is not kept."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._models: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        self.loads = 0  # how many times a model was built, for tests and diagnostics

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key][0]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key][0]
            model = build()
            size = model_bytes(model)
            with self._lock:
                self.loads += 1
                self._loading.pop(key, None)
                if size <= self.budget:
                    self._models[key] = (model, size)
                    self._evict()
            return model

    def _evict(self) -> None:
        while sum(size for _, size in self._models.values()) > self.budget:
            self._models.popitem(last=False)

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested != "cpu" and not (requested == "cuda" or requested.startswith("cuda:") and requested[5:].isdigit()):
        raise ChainError(f"device {requested!r}: use auto, cpu, cuda or cuda:N")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ChainError(f"device {requested} requested but no CUDA device is available")
    return device


class Engine:
    """Built by `artchain.runtime` from the configuration; tests may pass their own parts."""

    def __init__(self, config: Config, registry: Registry, store: WeightStore,
                 parser: ChainParser | None = None) -> None:
        """`parser`: the runtime's, when it has one already (built and checked once per process)."""
        self.config = config
        self.registry = registry
        self.store = store
        self.parser = parser or ChainParser.from_config(registry, config)
        self.cache = ModelCache(self.config.model_cache_mb * 1024 * 1024)
        self._processors: dict[str, Any] = {}
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    def processor(self, step: Step) -> Any:
        # setdefault keeps one instance per name even when two threads race here.
        return self._processors.setdefault(step.name, step.processor())

    def check(self, steps: str | Chain | Iterable[StepSpec], files: Mapping[FileKey, tuple[InputFile, ...]] = {},
              device: str | None = None) -> Plan:
        """Everything that can be refused before work starts: steps and parameters, the device,
        the weights, and the files the steps read (decoded with the configured limits)."""
        if isinstance(steps, Chain):
            chain = steps
        elif isinstance(steps, str):
            chain = self.parser.parse(steps)
        else:
            chain = self.parser.resolve(steps)
        target = pick_device(device or self.config.device)
        all_params = []
        for step in chain.steps:
            self._check_runnable(step, target)
            params = {**step.params, **self._decoded_files(step, files)}
            self.processor(step).check_files(params)
            all_params.append(params)
        return Plan(chain, target, tuple(all_params))

    def _check_runnable(self, step: Step, target: torch.device) -> None:
        if target.type not in step.processor.devices:
            raise ChainError(f"{step.name} does not run on {target.type} "
                             f"(supported: {', '.join(step.processor.devices)})")
        for weight_id in self.processor(step).required_weights(step.params):
            self.store.path(weight_id)

    def preload(self, chain_text: str) -> None:
        """Loads the models of a chain's steps into the cache (a worker, before its first job)."""
        target = pick_device(self.config.device)
        for step in self.parser.parse(chain_text).steps:
            self._check_runnable(step, target)
            self.model(step, target)

    def model(self, step: Step, target: torch.device, on_load: Callable[[], None] = lambda: None) -> Any:
        """The step's model on `target`, from the cache or loaded once (`on_load` says so first)."""
        processor = self.processor(step)
        key = (step.name, processor.model_key(step.params), str(target))
        if key not in self.cache.keys():
            log.info("loading the model of %s on %s", step.name, target)
            on_load()
        return self.cache.get(key, lambda: processor.load(step.params, self.store, target))

    def _decoded_files(self, step: Step, files: Mapping[FileKey, tuple[InputFile, ...]]) -> dict[str, Any]:
        decoded = {}
        for param in step.processor.file_params():
            given = files.get((step.origin, param.name))
            if given is None:
                if param.name in step.params:
                    raise ChainError(f"{step.name}: parameter {param.name}: the job does not include "
                                     f"{'+'.join(step.params[param.name])}")
                if param.required:
                    raise ChainError(f"{step.name}: parameter {param.name} is required ({param.help})")
                continue
            pictures = tuple(imageio.decode_image(item.data, self.config.limits, f"{step.name} {param.name} "
                                                  f"{item.name}") for item in given)
            decoded[param.name] = pictures
        return decoded

    def execute(self, plan: Plan, picture: imageio.Picture, progress: StepProgressFn | None = None,
                cancel: CancelToken | None = None) -> RunResult:
        cancel = cancel or CancelToken()
        target, steps = plan.device, plan.chain.steps
        self._check_planned_sizes(plan, picture.size)
        batch = imageio.to_tensor(picture.rgb).to(target)
        timings = []
        with torch.inference_mode():
            for index, (step, params) in enumerate(zip(steps, plan.params)):
                cancel.check()
                # A step may hand on a compact tensor (uint8 or half) to bound memory; the next
                # one gets the contract's float.
                batch = imageio.as_float(batch)
                self._check_size(step, batch)
                # A first load can take seconds: the step shows up as loading meanwhile.
                loading = _step_progress(progress, index, len(steps), f"{step.name} (loading the model)")
                model = self.model(step, target, on_load=lambda: loading(0.0))
                report = _step_progress(progress, index, len(steps), step.name)
                context = StepContext(device=target, original_size=picture.size, progress=report,
                                      cancel=cancel, seed=self.config.seed)
                started = time.perf_counter()
                batch = self.processor(step).process(batch, model, params, context)
                if target.type == "cuda":
                    torch.cuda.synchronize(target)
                report(1.0)
                timings.append(StepTiming(step.describe(), time.perf_counter() - started))
                log.info("%s: %.2f s, output %dx%d", step.describe(), timings[-1].seconds, batch.shape[-1],
                         batch.shape[-2])
        result = imageio.finish(picture, imageio.to_image(batch))
        return RunResult(result, plan.chain, target, timings)

    def _check_planned_sizes(self, plan: Plan, size: tuple[int, int]) -> None:
        limit, original = self.config.limits.max_pixels, size
        for step, params in zip(plan.chain.steps, plan.params):
            size = self.processor(step).output_size(params, size, original)
            if size[0] * size[1] > limit:
                raise ImageError(f"{step.describe()}: would make a {size[0]}x{size[1]} image, over the limit "
                                 f"of {limit} pixels (limits.max_pixels)")

    @staticmethod
    def _check_size(step: Step, batch: torch.Tensor) -> None:
        height, width = batch.shape[-2:]
        if min(height, width) < step.processor.needs.min_side:
            raise ImageError(f"{step.name}: image {width}x{height} is too small "
                             f"(needs at least {step.processor.needs.min_side} px on each side)")

    def run(self, chain_text: str, image: Image.Image | str | Path, device: str | None = None,
            progress: StepProgressFn | None = None, cancel: CancelToken | None = None) -> Image.Image:
        """Python API: a PIL image or a path in, a PIL image out; files the steps name are read
        from this machine's disk."""
        if isinstance(image, (str, Path)):
            picture = imageio.open_image(image, self.config.limits)
        else:
            picture = imageio.from_pil(image, self.config.limits)
        chain = self.parser.parse(chain_text)
        plan = self.check(chain, read_step_files(chain, self.config.limits.max_bytes), device)
        return self.execute(plan, picture, progress, cancel).image


def _step_progress(progress: StepProgressFn | None, index: int, count: int, name: str) -> Callable[[float], None]:
    if progress is None:
        return lambda fraction: None
    return lambda fraction: progress(index, count, name, min(max(fraction, 0.0), 1.0))
