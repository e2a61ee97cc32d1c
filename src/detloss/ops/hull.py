"""Batched convex hull of small point sets (K up to a few dozen), exact, in torch."""

from __future__ import annotations

import torch
from torch import Tensor

from detloss.core.checks import check_tensor
from detloss.ops.polygon import box_centre, box_side, vertex_bounds


def convex_hull(points: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Convex hull vertices of each of N point sets, in the library's vertex order.

    A segment ``i -> j`` is a hull edge when no valid point lies strictly to its right; a point is a
    hull vertex when it starts a hull edge and is not a repeat of an earlier point. O(K^3) per set,
    which is nothing for the K <= 16 vertices a head predicts. The tests run about the centre of each
    set's bounding box with tolerances relative to its size, so the hull of a small set far from the
    origin is found as well as at the origin.

    Args:
        points: ``(N, K, 2)``.
        valid: ``(N, K)`` bool; ``None`` means all valid.

    Returns:
        ``hull (N, K, 2)`` with the hull vertices first, sorted by angle about their centroid
        (positive shoelace area, as :func:`detloss.ops.signed_polygon_area` defines it), then
        zero padding; and ``mask (N, K)`` marking them. Collinear or coincident sets give fewer
        than 3 vertices.

    Example:
        >>> pts = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]])
        >>> hull, mask = convex_hull(pts)
        >>> mask.tolist()
        [[True, True, True, True, False]]
    """
    check_tensor("points", points, ("N", "K", 2), floating=True)
    n, k, _ = points.shape
    if valid is None:
        valid = torch.ones(n, k, dtype=torch.bool, device=points.device)
    check_tensor("valid", valid, (n, k))
    # About the centre of the valid points' bounding box, in units of its half side: the tolerances
    # below are then relative to the set's size, not to its distance from the origin.
    p = points.detach()
    lo, hi = vertex_bounds(p, valid)
    q = torch.where(valid[..., None], p - box_centre(lo, hi), p.new_zeros(()))
    half = 0.5 * box_side(lo, hi)[:, None, None]
    q = q / torch.where(half > 0, half, half.new_ones(()))
    d = q[:, None, :, :] - q[:, :, None, :]  # d[n, i, j] = q_j - q_i
    cross = d[:, :, :, None, 0] * d[:, :, None, :, 1] - d[:, :, :, None, 1] * d[:, :, None, :, 0]  # (N, i, j, m)
    eps = 64 * torch.finfo(q.dtype).eps  # a distance relative to the half side: above rounding noise
    length = d.norm(dim=-1)  # (N, i, j)
    right = (cross < -eps * length[..., None]) & valid[:, None, None, :]  # strictly right of line i -> j
    distinct = length > eps
    repeat = (~distinct & torch.ones_like(distinct).tril(-1).bool() & valid[:, None, :]).any(-1)
    keep = valid & ~repeat  # one representative of each cluster of coincident points
    edge = ~right.any(-1) & distinct & keep[:, :, None] & keep[:, None, :]
    # Two near-coincident corners (farther apart than eps) can each lie inside an edge that ends at the
    # other; only edges between points that lie inside no edge may remove a point, so one of them stays.
    inside = _inside_edge(q, edge, keep, eps)
    corner_edge = edge & ~inside[:, :, None] & ~inside[:, None, :]
    is_vertex = edge.any(-1) & ~_inside_edge(q, corner_edge, keep, eps)
    centre = (q * is_vertex[..., None]).sum(1) / is_vertex.sum(1, keepdim=True).clamp_min(1)
    angle = torch.atan2(q[..., 1] - centre[:, None, 1], q[..., 0] - centre[:, None, 0])
    key = torch.where(is_vertex, angle, torch.full_like(angle, float("inf")))
    order = key.argsort(dim=1, stable=True)
    hull = points.gather(1, order[..., None].expand(n, k, 2))
    mask = is_vertex.gather(1, order)
    return torch.where(mask[..., None], hull, torch.zeros_like(hull)), mask


def _inside_edge(q: Tensor, edge: Tensor, valid: Tensor, eps: float) -> Tensor:
    """True for points on an ``edge`` and farther than ``eps`` from both its ends (collinear boundary points)."""
    a = q[:, :, None, None, :]  # edge start i
    b = q[:, None, :, None, :]  # edge end j
    m = q[:, None, None, :, :]  # candidate m
    ab, am = b - a, m - a
    cross = ab[..., 0] * am[..., 1] - ab[..., 1] * am[..., 0]
    t = (ab * am).sum(-1)
    length = (ab * ab).sum(-1).sqrt()
    on_line = cross.abs() <= eps * length
    inside = edge[..., None] & on_line & (t > eps * length) & (t < length * (length - eps))
    return (inside & valid[:, None, None, :]).any(dim=(1, 2))
