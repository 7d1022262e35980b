"""Measures of a styled picture against its input, used by the tests of the demo weights and by
`scripts/gallery.py`: no transposed-convolution lattice, the subject kept, the colours moved.

All take (1, 3, H, W) tensors in [0, 1] (or (H, W) luma where named so).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .processors import to_grayscale_rgb

# Lines of the spectrum next to the half-sampling one that serve as its reference.
REFERENCE_LINES = 4


def luma(image: torch.Tensor) -> torch.Tensor:
    return to_grayscale_rgb(image.float())[0, 0]


def half_sampling_ratio(image: torch.Tensor) -> float:
    """Power on the half-sampling lines of the luma spectrum (vertical frequency H/2, horizontal W/2)
    over the mean power of the REFERENCE_LINES lines just below each. A 2-pixel lattice, as stride-2
    transposed convolutions print it, puts its energy exactly there: about 1 for photos, far above
    for a lattice. Measure at the resolution the network ran at: resizing moves the lattice."""
    gray = luma(image)
    height, width = gray.shape
    if min(height, width) < 4 * REFERENCE_LINES:
        raise ValueError(f"{width}x{height} is too small to measure the half-sampling lines")
    gray = gray[: height - height % 2, : width - width % 2]
    height, width = gray.shape
    # A Hann window keeps the picture's border from leaking a cross of energy over the spectrum.
    window = torch.outer(torch.hann_window(height, periodic=False), torch.hann_window(width, periodic=False))
    power = torch.fft.fft2((gray - gray.mean()) * window).abs() ** 2
    ratios = []
    for lines, half in ((power, height // 2), (power.T, width // 2)):
        nyquist = lines[half].mean()
        below = torch.stack([lines[half - offset] for offset in range(1, REFERENCE_LINES + 1)]).mean()
        ratios.append(float(nyquist / below.clamp(min=1e-12)))
    return max(ratios)


def edge_map(image: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the luma, on a copy blurred by 1 px so texture counts less than
    the outlines of things."""
    gray = luma(image)[None, None]
    gray = F.avg_pool2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    sobel_x = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    kernels = torch.stack([sobel_x, sobel_x.T])[:, None]
    gradients = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)
    return gradients.pow(2).sum(1).sqrt()[0]


def edge_correlation(styled: torch.Tensor, original: torch.Tensor) -> float:
    """Pearson correlation of the two edge maps: how much of the input's outlines the output keeps."""
    a, b = edge_map(styled).flatten(), edge_map(original).flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def colour_moments(image: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation of luma and the two opponent chroma axes (6 numbers)."""
    r, g, b = image.float()[0].flatten(1)
    channels = torch.stack([0.299 * r + 0.587 * g + 0.114 * b, r - g, 0.5 * (r + g) - b])
    return torch.cat([channels.mean(1), channels.std(1)])


def mean_change(styled: torch.Tensor, original: torch.Tensor) -> float:
    return float((styled.float() - original.float()).abs().mean())
