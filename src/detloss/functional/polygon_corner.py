"""Corner loss: pulls a K-slot polygon prediction onto the corners and the boundary of its target.

MGIoU (:mod:`detloss.functional.polygon`) scores the *extent* of the predicted vertex set on the edge
normals of both polygons; nothing in it places surplus vertices. A triangle predicted with 8 slots then
decodes (convex hull of the 8 points) as a rounded hexagon-like shape. This term makes the hull exact::

    s        = diagonal of the target's bounding box                            (the object's size)
    corner_j = min over valid pred vertices k of |g_j - p_k| / s               (each target corner -> nearest vertex)
    edge_k   = min over valid target edges e   of dist(p_k, segment e) / s     (each vertex -> target boundary)
    loss     = mean_j huber(corner_j) + mean_k huber(edge_k)                  (means over valid vertices)
    huber(r) = r**2 / (2 beta) if r < beta else r - beta / 2

For a target that is a point (its box diagonal is 0 up to rounding) ``s`` is the diagonal of the pair's
joint box instead. ``s`` is part of the loss (its gradient reaches the target's extreme vertices).

Both halves are 0 exactly when every predicted vertex lies on the target's boundary and every target
corner coincides with a predicted vertex; then the convex hull of the prediction *is* the (convex) target,
whatever K. Surplus vertices may sit anywhere on the boundary (on a corner or on an edge), where they
change no hull, so a K-slot head can predict a triangle. Distances are in units of ``s``, so the loss is
scale-free; the Huber shape keeps a constant pull far from the target and a smooth minimum at 0.

**Validity and padding** follow :mod:`detloss.ops.polygon` (mask ``(N, K)`` or count ``(N,)``, padding
anywhere). Padded slots are replaced by a copy of a valid vertex through a gather *before* any
arithmetic, and are then masked out of every min and mean by :func:`torch.where` (value ``inf`` in a
min, weight 0 in a mean), so padded slots are neither corners, nor vertices, nor edge ends: a triangle
padded to 8 slots has exactly the value and gradient of the bare triangle.

**Degenerate input.** A target with one valid vertex is a point (its single "edge" is that point); with
two, a segment. Zero-length target edges (repeated vertices, up to rounding: :func:`long_edges`) are
points, with no division by their length. A pair whose valid vertices all coincide has ``s = 0``
(taken as 1) and loss 0 (every distance is 0); a polygon with no valid vertex contributes 0 for the half that needs it
(nothing to pull). No clamp or epsilon on the value path: the square root is taken only in the linear
Huber branch, where its argument is at least ``beta**2``.

The local frame (the centre of the pair's joint box subtracted, a constant; then divided by ``s``)
keeps float32 precise far from the origin and at any scale.
"""

from __future__ import annotations

import torch

from detloss.core.checks import as_float32, check_same, common_float
from detloss.ops.polygon import (
    box_centre,
    check_polygon,
    gather_vertices,
    long_edges,
    next_valid_index,
    rounding_tolerance,
    vertex_bounds,
    vertex_mask,
)

__all__ = ["corner_loss"]


def _prepare(name: str, poly: object, valid_name: str, valid: object) -> tuple[torch.Tensor, torch.Tensor]:
    check_polygon(name, poly)
    assert isinstance(poly, torch.Tensor)
    return as_float32(poly), vertex_mask(valid_name, valid, poly)


def _filled(poly: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``poly`` with every invalid slot replaced by a copy (a gather) of the first valid vertex (slot 0 if
    none): padded values, even ``nan``, never enter the arithmetic and get zero gradient."""
    k = mask.shape[1]
    first = mask.to(torch.uint8).argmax(1, keepdim=True)
    src = torch.where(mask, torch.arange(k, device=mask.device), first)
    filled = gather_vertices(poly, src)
    return torch.where(mask.any(1)[:, None, None], filled, filled.new_zeros(()))


def _diag2(polys: tuple[torch.Tensor, ...], masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Squared diagonal ``(N,)`` of the bounding box of the valid vertices of ``polys`` ``(N, K_i, 2)``
    (finite values); 0 without a valid vertex. Invalid slots are excluded by :func:`torch.where` (not
    counted as ties of the min and max), so padding changes neither the value nor the gradient."""
    pts, mask = torch.cat(polys, 1), torch.cat(masks, 1)[..., None]
    inf = pts.new_tensor(float("inf"))
    side = torch.where(mask, pts, -inf).amax(1) - torch.where(mask, pts, inf).amin(1)
    return torch.where(mask.any(1), side, side.new_zeros(())).pow(2).sum(-1)


def _scale(p: torch.Tensor, pm: torch.Tensor, g: torch.Tensor, gm: torch.Tensor) -> torch.Tensor:
    """``s`` ``(N,)``: the target's box diagonal, or for a target flat along both axes up to rounding (a
    point) the diagonal of the pair's joint box, or 1 where that is 0 too (all distances are then 0).
    Differentiable (it is part of the loss), with no square root of 0."""
    own, joint = _diag2((g,), (gm,)), _diag2((p, g), (pm, gm))
    rtol = rounding_tolerance(g.dtype)
    tiny = torch.finfo(g.dtype).tiny
    s2 = torch.where(own > torch.clamp(rtol * rtol * joint, min=tiny), own, joint)
    return torch.sqrt(torch.where(s2 > tiny, s2, s2.new_ones(())))


def _huber(r2: torch.Tensor, beta: float) -> torch.Tensor:
    """Huber of ``r = sqrt(r2)``; the root only where ``r2 >= beta**2`` (finite gradient at 0)."""
    b2 = beta * beta
    linear = r2 >= b2
    root = torch.sqrt(torch.where(linear, r2, r2.new_full((), b2)))
    return torch.where(linear, root - 0.5 * beta, r2 / (2 * beta))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean ``(N,)`` of ``values`` ``(N, K)`` over ``mask``; 0 where no entry is valid."""
    count = mask.sum(1)
    total = torch.where(mask, values, values.new_zeros(())).sum(1)
    return total / torch.where(count > 0, count, 1).to(values.dtype)


def corner_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    pred_valid: torch.Tensor | None = None,
    target_valid: torch.Tensor | None = None,
    beta: float = 0.05,
) -> torch.Tensor:
    """Corner-and-boundary loss ``(N,)`` of aligned pairs (module docstring); ``>= 0``, 0 when the convex
    hull of ``pred`` is exactly ``target`` with every predicted vertex on the target's boundary.

    Args:
        pred: ``(N, K, 2)`` predicted vertices (any order; the loss does not use their order).
        target: ``(N, M, 2)`` target vertices in polygon order (its edges join consecutive valid vertices).
        pred_valid, target_valid: ``None`` (all valid), a bool mask ``(N, K)`` or a vertex count ``(N,)``.
        beta: Huber knee, as a fraction of the pair's box diagonal (``> 0``).

    >>> tri = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]]])
    >>> on_boundary = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, 3.0], [0.0, 1.0], [0.0, 0.0]]])
    >>> corner_loss(on_boundary, tri).item() < 1e-12  # 0 up to the rounding of the local frame
    True
    >>> corner_loss(tri * 0.5, tri)  # corners (4, 0), (0, 3) missed by 2 and 1.5 (diagonal 5); all on the boundary
    tensor([0.2167])
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (a fraction of the box diagonal), got {beta!r}")
    p, pm = _prepare("pred", pred, "pred_valid", pred_valid)
    g, gm = _prepare("target", target, "target_valid", target_valid)
    check_same("pred", p, "target", g, dims=(0,))
    p, g = common_float(p, g)
    with torch.no_grad():  # the local origin: a constant (the loss is translation-invariant)
        p_lo, p_hi = vertex_bounds(p, pm)
        g_lo, g_hi = vertex_bounds(g, gm)
        centre = box_centre(torch.minimum(p_lo, g_lo), torch.maximum(p_hi, g_hi))  # (N, 1, 2)
    p, g = _filled(p, pm) - centre, _filled(g, gm) - centre  # copies of valid vertices change no bounds
    scale = _scale(p, pm, g, gm)[:, None, None]
    p, g = p / scale, g / scale
    inf = p.new_tensor(float("inf"))

    # each valid target corner -> its nearest valid predicted vertex
    d2 = (g[:, :, None, :] - p[:, None, :, :]).pow(2).sum(-1)  # (N, M, K)
    near = torch.where(pm[:, None, :], d2, inf).amin(2)  # (N, M); inf only if pred has no valid vertex
    corner = _masked_mean(_huber(torch.where(pm.any(1, keepdim=True), near, near.new_zeros(())), beta), gm)

    # each valid predicted vertex -> the target's boundary (its valid edges; a point or segment if degenerate)
    a = g
    e = gather_vertices(g, next_valid_index(gm)) - a  # (N, M, 2)
    len2 = (e * e).sum(-1)
    segment = long_edges(len2, gm)  # zero-length edges are points: no division by their length
    rel = p[:, :, None, :] - a[:, None, :, :]  # (N, K, M, 2)
    dot = (rel * e[:, None]).sum(-1)
    t = torch.where(segment[:, None], dot / torch.where(segment, len2, 1.0)[:, None], dot.new_zeros(()))
    t = t.clamp(0.0, 1.0)  # the nearest point of the segment (projection), not a loss clamp
    off = rel - t[..., None] * e[:, None]
    seg2 = torch.where(gm[:, None, :], (off * off).sum(-1), inf).amin(2)  # (N, K)
    edge = _masked_mean(_huber(torch.where(gm.any(1, keepdim=True), seg2, seg2.new_zeros(())), beta), pm)
    return corner + edge
