"""Random head outputs and YOLO-layout targets, deterministic from a seed (demos, benchmarks)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def random_targets(
    batch_size: int,
    num_classes: int,
    objects_per_image: int | Sequence[int],
    num_vertices: int = 0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """YOLO targets: boxes of 2%-50% of the image side; with ``num_vertices`` K >= 3 also convex
    polygons (regular K-gons, randomly rotated, with a random vertex count 3..K, inscribed in the box).

    Returns:
        ``batch_idx (N,)``, ``cls (N,)``, ``bboxes (N, 4)`` normalized ``cx, cy, w, h`` and, with
        polygons, ``polygons (N, K, 2)`` normalized and ``polygon_counts (N,)``.
    """
    g = torch.Generator().manual_seed(seed)
    per_image = [objects_per_image] * batch_size if isinstance(objects_per_image, int) else list(objects_per_image)
    if len(per_image) != batch_size:
        raise ValueError(f"objects_per_image must be an int or have {batch_size} entries, got {len(per_image)}")
    n = sum(per_image)
    batch_idx = torch.repeat_interleave(torch.arange(batch_size), torch.tensor(per_image, dtype=torch.long))
    wh = 0.02 + 0.48 * torch.rand(n, 2, generator=g)
    centre = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=g)
    out = {
        "batch_idx": batch_idx,
        "cls": torch.randint(num_classes, (n,), generator=g),
        "bboxes": torch.cat((centre, wh), 1),
    }
    if num_vertices >= 3:
        counts = torch.randint(3, num_vertices + 1, (n,), generator=g)
        k = torch.arange(num_vertices)
        angle = 2 * math.pi * k[None, :] / counts[:, None] + 2 * math.pi * torch.rand(n, 1, generator=g)
        unit = torch.stack((angle.cos(), angle.sin()), -1)  # counter-clockwise in a y-up frame
        poly = centre[:, None, :] + unit * wh[:, None, :] / 2
        valid = k[None, :] < counts[:, None]
        out["polygons"] = torch.where(valid[..., None], poly, torch.zeros_like(poly))
        out["polygon_counts"] = counts
    return {key: v.to(device) for key, v in out.items()}


def random_feats(
    batch_size: int,
    channels: int,
    image_size: int,
    strides: Sequence[int],
    seed: int = 0,
    device: torch.device | str = "cpu",
    scale: float = 1.0,
) -> list[Tensor]:
    """One ``(B, channels, image_size // s, image_size // s)`` leaf tensor per stride, requiring grad."""
    g = torch.Generator().manual_seed(seed + 1)
    feats = []
    for s in strides:
        side = image_size // s
        x = scale * torch.randn(batch_size, channels, side, side, generator=g)
        feats.append(x.to(device).requires_grad_(True))
    return feats
