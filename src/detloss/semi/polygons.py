"""Polygon pseudo-labels: a teacher's ``K`` predicted vertices as a target polygon.

The raw vertices of a dense polygon head include redundant ones (inside the hull, on an edge, on top of
another vertex; evaluation takes the convex hull for the same reason). As a target each of them would be a
corner the student's ``corner`` term must reach, so the target is the convex hull: its vertices first,
``polygon_counts`` of them, the padding after. A hull of fewer than 3 vertices (collinear or coincident
points) is no polygon; that pseudo-box keeps the raw vertices, all valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detloss.ops.hull import convex_hull

__all__ = ["hull_pseudo_polygons"]


def hull_pseudo_polygons(dets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Each image's ``polygons (N, K, 2)`` (pixels) replaced by their convex hulls, with ``polygon_counts (N,)``.

    Args:
        dets: per image a dict with ``polygons (N, K, 2)`` (and any other per-detection tensors, kept).

    Returns:
        New dicts: ``polygons (N, K, 2)`` hull vertices first in the library's order (positive shoelace
        area), zero padding after; ``polygon_counts (N,)`` int64 (``K`` where the hull has < 3 vertices and
        the raw vertices are kept).

    Example:
        >>> square = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [2.0, 2.0], [0.0, 4.0]]])
        >>> out = hull_pseudo_polygons([{"polygons": square}])[0]
        >>> out["polygon_counts"].tolist(), out["polygons"][0, 4].tolist()
        ([4], [0.0, 0.0])
    """
    out = []
    for i, det in enumerate(dets):
        if "polygons" not in det:
            raise ValueError(f"dets[{i}] must hold 'polygons' (N, K, 2): the teacher needs a polygon head")
        poly = det["polygons"]
        if poly.ndim != 3 or poly.shape[-1] != 2:
            raise ValueError(f"dets[{i}]['polygons'] must have shape (N, K, 2), got {tuple(poly.shape)}")
        n, k, _ = poly.shape
        if n == 0:
            out.append({**det, "polygon_counts": torch.zeros(0, dtype=torch.long, device=poly.device)})
            continue
        hull, mask = convex_hull(poly.float())
        counts = mask.sum(1)
        polygon = counts >= 3
        polygons = torch.where(polygon[:, None, None], hull, poly.float())
        counts = torch.where(polygon, counts, torch.full_like(counts, k))
        out.append({**det, "polygons": polygons, "polygon_counts": counts.long()})
    return out
