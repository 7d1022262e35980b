"""The engine: validates a chain, loads each model once (bounded LRU cache), runs the steps.

Safe to call from several threads at once: processors are stateless, the model cache is locked, and
a model being loaded by one thread is waited for, not loaded twice, by another.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from . import imageio
from .chain import Chain, ChainParser, Step
from .config import Config, load_config
from .errors import ChainError, ImageError
from .plugins import Registry, discover
from .processor import CancelToken, StepContext
from .weights import WeightStore

# (step index, step count, step name, fraction of that step done)
ProgressFn = Callable[[int, int, str, float], None]


@dataclass
class StepTiming:
    name: str
    seconds: float
    output_size: tuple[int, int]


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
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ChainError(f"device {requested} requested but no CUDA device is available")
    return device


class Engine:
    def __init__(self, config: Config | None = None, registry: Registry | None = None,
                 store: WeightStore | None = None) -> None:
        self.config = config or load_config()
        self.registry = registry or discover()
        self.store = store or WeightStore(self.config.weights_dir)
        self.parser = ChainParser(self.registry, self.config.aliases, self.config.presets)
        self.cache = ModelCache(self.config.model_cache_mb * 1024 * 1024)
        self._processors: dict[str, Any] = {}
        if self.config.threads:
            torch.set_num_threads(self.config.threads)

    def processor(self, step: Step) -> Any:
        # setdefault keeps one instance per name even when two threads race here.
        return self._processors.setdefault(step.name, step.processor())

    def prepare(self, chain_text: str | Chain, device: str | None = None) -> tuple[Chain, torch.device]:
        """Parses and checks a chain (steps, parameters, weights, device) before any work starts."""
        chain = chain_text if isinstance(chain_text, Chain) else self.parser.parse(chain_text)
        target = pick_device(device or self.config.device)
        for step in chain.steps:
            if target.type not in step.processor.devices:
                raise ChainError(f"{step.name} does not run on {target.type} "
                                 f"(supported: {', '.join(step.processor.devices)})")
            for weight_id in self.processor(step).required_weights(step.params):
                self.store.path(weight_id)
        return chain, target

    def execute(self, chain_text: str | Chain, picture: imageio.Picture, device: str | None = None,
                progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> RunResult:
        chain, target = self.prepare(chain_text, device)
        cancel = cancel or CancelToken()
        batch = imageio.to_tensor(picture.rgb).to(target)
        timings = []
        with torch.inference_mode():
            for index, step in enumerate(chain.steps):
                cancel.check()
                self._check_size(step, batch)
                processor = self.processor(step)
                model = self.cache.get((step.name, processor.model_key(step.params), str(target)),
                                       lambda: processor.load(step.params, self.store, target))
                report = _step_progress(progress, index, len(chain.steps), step.name)
                context = StepContext(device=target, original_size=picture.size, progress=report,
                                      cancel=cancel, seed=self.config.seed)
                started = time.perf_counter()
                batch = processor.process(batch, model, step.params, context)
                if target.type == "cuda":
                    torch.cuda.synchronize(target)
                report(1.0)
                timings.append(StepTiming(step.describe(), time.perf_counter() - started,
                                          (batch.shape[-1], batch.shape[-2])))
        result = imageio.finish(picture, imageio.to_image(batch))
        return RunResult(result, chain, target, timings)

    @staticmethod
    def _check_size(step: Step, batch: torch.Tensor) -> None:
        height, width = batch.shape[-2:]
        if min(height, width) < step.processor.needs.min_side:
            raise ImageError(f"{step.name}: image {width}x{height} is too small "
                             f"(needs at least {step.processor.needs.min_side} px on each side)")

    def run(self, chain_text: str, image: Image.Image | str | Path, **options: Any) -> Image.Image:
        """Python API: a PIL image or a path in, a PIL image out."""
        if isinstance(image, (str, Path)):
            picture = imageio.open_image(image, self.config.limits)
        else:
            picture = imageio.from_pil(image, self.config.limits)
        return self.execute(chain_text, picture, **options).image


def _step_progress(progress: ProgressFn | None, index: int, count: int, name: str) -> Callable[[float], None]:
    if progress is None:
        return lambda fraction: None
    return lambda fraction: progress(index, count, name, min(max(fraction, 0.0), 1.0))


_default: Engine | None = None
_default_lock = threading.Lock()


def default_engine() -> Engine:
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine()
        return _default
