"""Model-agnostic tensor operations shared by processors: padding to a multiple, resizing."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(batch: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pads the bottom and right edges so H and W are multiples of `multiple`.

    Returns the padded batch and the original (H, W), for `crop_to`. Reflect padding needs the pad to
    be smaller than the side; very small inputs fall back to replicate padding.
    """
    height, width = batch.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return batch, (height, width)
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        mode = "replicate"
    return F.pad(batch, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def crop_to(batch: torch.Tensor, size: tuple[int, int], scale: int = 1) -> torch.Tensor:
    """Undoes `pad_to_multiple` on an output that is `scale` times the padded input."""
    height, width = size
    return batch[..., : height * scale, : width * scale]


def resize(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resizes with antialiasing when shrinking (bicubic, clamped to the valid range)."""
    if batch.shape[-2:] == (height, width):
        return batch
    shrinking = height < batch.shape[-2] or width < batch.shape[-1]
    resized = F.interpolate(batch, size=(height, width), mode="bicubic", align_corners=False,
                            antialias=shrinking)
    return resized.clamp_(0.0, 1.0)


def fit_short_side(height: int, width: int, short_side: int) -> tuple[int, int]:
    """The (H, W) with the given short side and the same aspect ratio."""
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def preserve_colour(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Gatys et al. (2016)'s luminance-only transfer: the result's Y with the content's Cb and Cr
    (the style steps' `preserve_colour`)."""
    from kornia.color import rgb_to_ycbcr, ycbcr_to_rgb

    luma = rgb_to_ycbcr(result)[:, :1]
    chroma = rgb_to_ycbcr(content)[:, 1:]
    return ycbcr_to_rgb(torch.cat([luma, chroma], dim=1)).clamp(0.0, 1.0)
