"""The student's strong augmentation of unlabelled images: photometric only, so pseudo-boxes stay valid."""

from __future__ import annotations

import torch
from torch import Tensor


def strong_photometric(
    images: Tensor,
    generator: torch.Generator,
    *,
    brightness: float = 0.3,
    contrast: float = 0.3,
    noise: float = 0.04,
    cutout: int = 0,
    cutout_size: float = 0.15,
) -> Tensor:
    """A new ``(B, 3, H, W)`` batch in ``[0, 1]``: per image a brightness factor in ``[1 - b, 1 + b]``, a
    contrast factor in ``[1 - c, 1 + c]`` about the image mean, Gaussian noise of std ``noise`` and
    ``cutout`` grey squares of side ``cutout_size * min(H, W)``; random draws from ``generator`` (CPU).

    Geometry is unchanged: the teacher's boxes on the weak view are the student's targets on this one.
    The result is clipped to ``[0, 1]``, the valid pixel range (no gradient flows through images).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    b, _, h, w = images.shape
    device = images.device

    def uniform(spread: float) -> Tensor:
        return (1 + spread * (2 * torch.rand(b, 1, 1, 1, generator=generator) - 1)).to(device)

    mean = images.mean((1, 2, 3), keepdim=True)
    out = (images - mean) * uniform(contrast) + mean
    out = out * uniform(brightness)
    if noise > 0:
        out = out + noise * torch.randn(images.shape, generator=generator).to(device)
    side = int(round(cutout_size * min(h, w)))
    if cutout > 0 and side > 0:
        ys = torch.randint(0, h - side + 1, (b, cutout), generator=generator).tolist()
        xs = torch.randint(0, w - side + 1, (b, cutout), generator=generator).tolist()
        for i in range(b):
            for y, x in zip(ys[i], xs[i], strict=True):
                out[i, :, y : y + side, x : x + side] = 0.5
    return out.clamp(0, 1)
