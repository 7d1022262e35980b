"""Runs an ncnn model on the CPU with the `ncnn` Python runtime: the reference the converted torch
weights are checked against, and the baseline the benchmark compares artchain with."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class NcnnUpscaler:
    """An ncnn super-resolution model whose graph reads blob `data` and writes blob `output`."""

    def __init__(self, param_path: Path, bin_path: Path, threads: int) -> None:
        import ncnn

        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads
        if self.net.load_param(str(param_path)) or self.net.load_model(str(bin_path)):
            raise RuntimeError(f"ncnn could not load {Path(param_path).name}")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(3, H, W) float32 in [0, 1] -> (3, H*scale, W*scale), unclamped."""
        # ncnn.Mat borrows the array's memory: `pixels` must stay alive until extraction is done.
        pixels = np.ascontiguousarray(image, dtype=np.float32)
        extractor = self.net.create_extractor()
        extractor.input("data", self._ncnn.Mat(pixels))
        status, output = extractor.extract("output")
        if status != 0:
            raise RuntimeError(f"ncnn inference failed with status {status}")
        return np.array(output)
