"""Geometric transforms of one detection sample: letterbox resize, horizontal / vertical flips.

A *sample* is a dict with ``image (3, H, W)`` float and, all optional: ``boxes (n, 4)`` pixel ``xyxy``,
``polygons (n, K, 2)`` pixel ``(x, y)`` with ``polygon_counts (n,)`` (valid vertices first; without
counts all ``K`` are valid), ``masks (H, W)`` integer instance ids. Other keys (``labels``, ...) are
passed through unchanged. Transforms return a new dict and never modify their input.

Coordinates are continuous pixel coordinates: pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]``, so an
image of width ``W`` spans ``x`` in ``[0, W]`` and a flip maps ``x -> W - x``.

Vertex order: the datasets of :mod:`detloss.data` store polygons with a positive shoelace signed area
(counter-clockwise in a y-up frame = clockwise as drawn on the image). A flip is a reflection and would
reverse that; :func:`hflip` and :func:`vflip` therefore reverse the order of the valid vertices too, so
the convention holds after the transform (padding stays at the end).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RandomFlip", "hflip", "letterbox", "reverse_valid_vertices", "vflip"]


def _counts(sample: Mapping[str, Any]) -> Tensor:
    poly = sample["polygons"]
    if "polygon_counts" in sample:
        return sample["polygon_counts"].to(device=poly.device, dtype=torch.long)
    return torch.full((poly.shape[0],), poly.shape[1], dtype=torch.long, device=poly.device)


def _valid(poly: Tensor, counts: Tensor) -> Tensor:
    return torch.arange(poly.shape[1], device=poly.device) < counts.view(-1, 1)  # (n, K)


def reverse_valid_vertices(polygons: Tensor, counts: Tensor) -> Tensor:
    """Reverse the order of the first ``counts[i]`` vertices of each polygon ``(n, K, 2)``; padding stays.

    >>> p = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]])
    >>> reverse_valid_vertices(p, torch.tensor([3]))[0].tolist()
    [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [9.0, 9.0]]
    """
    k = torch.arange(polygons.shape[1], device=polygons.device).view(1, -1)
    c = counts.to(device=polygons.device, dtype=torch.long).view(-1, 1)
    idx = torch.where(k < c, c - 1 - k, k)  # (n, K)
    return polygons.gather(1, idx[..., None].expand_as(polygons))


def _map_polygons(sample: Mapping[str, Any], fn) -> Tensor:
    """Apply ``fn`` to the valid vertices only (padded ones keep their value)."""
    poly = sample["polygons"]
    valid = _valid(poly, _counts(sample))
    return torch.where(valid[..., None], fn(poly), poly)


def _image_hw(sample: Mapping[str, Any]) -> tuple[int, int]:
    image = sample["image"]
    if not isinstance(image, Tensor) or image.dim() != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"sample['image'] must be a (C, H, W) tensor, got {shape}")
    return int(image.shape[-2]), int(image.shape[-1])


def hflip(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Mirror left-right: ``x -> W - x``; boxes stay ``x1 < x2``; polygons keep their orientation."""
    _, w = _image_hw(sample)
    out = dict(sample)
    out["image"] = sample["image"].flip(-1)
    if "boxes" in sample:
        b = sample["boxes"]
        out["boxes"] = torch.stack((w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]), -1)
    if "polygons" in sample:
        flipped = _map_polygons(sample, lambda p: torch.stack((w - p[..., 0], p[..., 1]), -1))
        out["polygons"] = reverse_valid_vertices(flipped, _counts(sample))
    if "masks" in sample:
        out["masks"] = sample["masks"].flip(-1)
    return out


def vflip(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Mirror top-bottom: ``y -> H - y``; boxes stay ``y1 < y2``; polygons keep their orientation."""
    h, _ = _image_hw(sample)
    out = dict(sample)
    out["image"] = sample["image"].flip(-2)
    if "boxes" in sample:
        b = sample["boxes"]
        out["boxes"] = torch.stack((b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]), -1)
    if "polygons" in sample:
        flipped = _map_polygons(sample, lambda p: torch.stack((p[..., 0], h - p[..., 1]), -1))
        out["polygons"] = reverse_valid_vertices(flipped, _counts(sample))
    if "masks" in sample:
        out["masks"] = sample["masks"].flip(-2)
    return out


def letterbox(sample: Mapping[str, Any], size: int, fill: float = 0.5) -> dict[str, Any]:
    """Resize keeping the aspect ratio so the longer side is ``size``, then pad to ``size x size``.

    The image is resized with bilinear interpolation (``align_corners=False``, antialiased when
    shrinking) to ``(round(H * r), round(W * r))`` with ``r = size / max(H, W)`` and centred on a
    ``fill``-grey square (padding ``(size - new) // 2`` before, the rest after). Masks are resized with
    ``nearest-exact`` (each output pixel takes the input pixel under its centre) and padded with 0.
    Boxes and the valid polygon vertices are mapped ``x -> x * new_w / W + pad_left`` and
    ``y -> y * new_h / H + pad_top`` (the exact scales of the resized grid; padded vertices unchanged).

    The image must be floating point in ``[0, 1]`` (``fill`` is on that scale).
    The returned sample also holds ``letterbox``: ``(scale_x, scale_y, pad_left, pad_top)`` floats, so a
    prediction maps back with ``x = (x' - pad_left) / scale_x``.
    """
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    size = int(size)
    h, w = _image_hw(sample)
    r = size / max(h, w)
    nh, nw = min(max(round(h * r), 1), size), min(max(round(w * r), 1), size)
    sx, sy = nw / w, nh / h
    top, left = (size - nh) // 2, (size - nw) // 2
    pad = (left, size - nw - left, top, size - nh - top)

    img = sample["image"]
    if not img.is_floating_point():
        raise ValueError(f"sample['image'] must be floating point in [0, 1], got dtype {img.dtype}")
    if (nh, nw) != (h, w):
        shrink = nh < h or nw < w
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=shrink)[0]
    out = dict(sample)
    out["image"] = F.pad(img, pad, value=fill)
    if "masks" in sample:
        m = sample["masks"]
        if (nh, nw) != (h, w):
            m = F.interpolate(m[None, None].double(), size=(nh, nw), mode="nearest-exact")[0, 0].to(m.dtype)
        out["masks"] = F.pad(m, pad, value=0)
    scale = torch.tensor([sx, sy], dtype=torch.float64)
    offset = torch.tensor([left, top], dtype=torch.float64)
    if "boxes" in sample:
        b = sample["boxes"]
        out["boxes"] = (b.double() * scale.repeat(2) + offset.repeat(2)).to(b.dtype)
    if "polygons" in sample:
        out["polygons"] = _map_polygons(sample, lambda q: (q.double() * scale + offset).to(q.dtype))
    out["letterbox"] = (sx, sy, float(left), float(top))
    return out


class RandomFlip:
    """Flip with probability ``p``, reproducibly: the ``t``-th call depends only on ``(seed, t)``.

    Args:
        p: probability of each flip.
        seed: seed of the private :class:`torch.Generator`.
        horizontal: draw a left-right flip.
        vertical: draw a top-bottom flip (independently of the horizontal one).

    Every call draws exactly one number per enabled direction, whatever the outcome.
    """

    def __init__(self, p: float = 0.5, seed: int = 0, horizontal: bool = True, vertical: bool = False) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = float(p)
        self.seed = int(seed)
        self.horizontal = bool(horizontal)
        self.vertical = bool(vertical)
        self.generator = torch.Generator().manual_seed(self.seed)

    def reset(self) -> None:
        """Restart the sequence of draws from ``seed``."""
        self.generator.manual_seed(self.seed)

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(sample)
        if self.horizontal and float(torch.rand((), generator=self.generator)) < self.p:
            out = hflip(out)
        if self.vertical and float(torch.rand((), generator=self.generator)) < self.p:
            out = vflip(out)
        return out

    def __repr__(self) -> str:
        return f"RandomFlip(p={self.p}, seed={self.seed}, horizontal={self.horizontal}, vertical={self.vertical})"
