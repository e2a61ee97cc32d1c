"""Clipping a convex polygon to an axis-aligned rectangle (Sutherland-Hodgman), in plain Python floats.

Used where samples are cut: the synthetic shapes at the image border, tiles of a large image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["clip_convex_polygon_to_rect"]


def clip_convex_polygon_to_rect(vertices: Tensor, width: float, height: float) -> Tensor:
    """Clip a convex polygon ``(m, 2)`` to the rectangle ``[0, width] x [0, height]`` (Sutherland-Hodgman).

    Exact up to floating point; intersection points get the boundary coordinate exactly, so the result
    lies inside the rectangle. Orientation is preserved. Returns ``(m', 2)`` (``m'`` may be 0) in the
    dtype of ``vertices``, without vertices closer than 1e-3 to the line through their neighbours
    (repeated or collinear ones).

    >>> sq = torch.tensor([[-1.0, -1.0], [2.0, -1.0], [2.0, 2.0], [-1.0, 2.0]])
    >>> clip_convex_polygon_to_rect(sq, 1.0, 1.0).tolist()
    [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    """
    pts = [(float(x), float(y)) for x, y in vertices.tolist()]
    # each edge: (axis, bound, keep_greater)
    for axis, bound, keep_ge in ((0, 0.0, True), (0, float(width), False), (1, 0.0, True), (1, float(height), False)):
        if not pts:
            break

        def inside(p: tuple[float, float], axis: int = axis, bound: float = bound, keep_ge: bool = keep_ge) -> bool:
            return p[axis] >= bound if keep_ge else p[axis] <= bound

        out: list[tuple[float, float]] = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            cur_in, prev_in = inside(cur), inside(prev)
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                other = 1 - axis
                o = prev[other] + t * (cur[other] - prev[other])
                out.append((bound, o) if axis == 0 else (o, bound))
            if cur_in:
                out.append(cur)
        pts = out
    pts = _simplify(pts, tol=1e-3)
    return torch.tensor(pts, dtype=vertices.dtype).reshape(-1, 2)


def _simplify(pts: list[tuple[float, float]], tol: float) -> list[tuple[float, float]]:
    """Drop vertices within ``tol`` of the line through their neighbours (repeated ones included).

    Removing a vertex of a convex polygon leaves a convex subset of it, so the result stays convex and
    inside whatever contained the input; ``tol`` keeps it convex after rounding to float32.
    """
    changed = True
    while changed and len(pts) >= 3:
        changed = False
        for i in range(len(pts)):
            a, b, c = pts[i - 1], pts[i], pts[(i + 1) % len(pts)]
            acx, acy = c[0] - a[0], c[1] - a[1]
            cross = acx * (b[1] - a[1]) - acy * (b[0] - a[0])
            ac = math.hypot(acx, acy)
            near = math.hypot(b[0] - a[0], b[1] - a[1]) <= tol or math.hypot(c[0] - b[0], c[1] - b[1]) <= tol
            if near or abs(cross) <= tol * ac:
                del pts[i]
                changed = True
                break
    return pts if len(pts) >= 3 else []
