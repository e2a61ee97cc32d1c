"""Exact geometry of polygons, batched over *aligned* pairs: area, convex intersection, IoU, GIoU.

Polygons are ``(N, K, 2)`` tensors of ``(x, y)`` vertices, ``a[i]`` is compared with ``b[i]``. A polygon
with fewer than ``K`` vertices is padded; its validity is given as

* ``None``: all ``K`` vertices are valid;
* a bool mask ``(N, K)`` (any dtype, nonzero = valid);
* an integer vertex count ``(N,)``: the first ``n`` vertices are valid.

The polygon is the sequence of *valid* vertices in stored order, closed cyclically (edge ``i`` goes from
valid vertex ``i`` to the next valid vertex). Invalid vertices are skipped wherever they are, so the
convention "padding at the end" is what a count expresses, and a mask with holes means the same polygon
as the compacted one. Padded values never matter, even when they are ``nan`` or ``inf``: every function
first selects them away with :func:`torch.where`, so they get exactly zero gradient and cannot poison the
valid ones (no ``0 * nan`` in backward).

Orientation: :func:`signed_polygon_area` is positive for vertices counter-clockwise in a y-up frame
(x right, y up), which is *clockwise as drawn* in image coordinates (x right, y down). Areas, IoU and
GIoU are orientation-agnostic.

:func:`polygon_iou` and :func:`polygon_giou` are exact for **convex** polygons (the intersection is
found by Sutherland-Hodgman clipping of ``a`` by the half-planes of ``b``; the enclosing shape of GIoU
is the convex hull of both vertex sets, found by gift wrapping). Both are batched over ``N`` with a
fixed number of vertices per step, differentiable almost everywhere (``gradcheck`` passes in float64
on generic inputs) and compute in float32 (float64 kept).

**Local origin.** Shoelace sums of absolute coordinates lose everything but the leading digits far from
the origin (a 2 px polygon at 4000 px in float32). Every function therefore computes about a local
origin: the clipping and the hull of a pair about the centre of the bounding box of both polygons' valid
vertices (one shift for both), each polygon's own area about the centre of its own box. The shifts are
constants (no gradient): the values are translation-invariant, so nothing is lost.

**Zero up to rounding.** An area is treated as zero when it is at most ``64 * finfo(dtype).eps`` times
the square of the shape's size (the larger side of its bounding box), or below ``finfo(dtype).tiny``
(:func:`has_zero_area`). So a polygon is *flat* (degenerate) when ``|area| <= 64 * eps * side**2``:
fewer than three valid vertices, all equal, or collinear, up to rounding. Likewise an edge of the
clipping polygon shorter than ``64 * eps`` times its longest edge is skipped like padding
(:func:`long_edges`), and a segment whose two ends are within ``64 * eps * side`` of a clipping line
lies on it. Divisions use :func:`torch.where` on a safe denominator, so neither the value nor the
gradient becomes ``inf`` or ``nan`` for finite input (no ``0 * inf`` in backward).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from detloss.core.checks import as_float32, check_same, check_tensor, common_float

__all__ = [
    "has_zero_area",
    "next_valid_index",
    "polygon_area",
    "polygon_giou",
    "polygon_iou",
    "prev_valid_index",
    "signed_polygon_area",
    "vertex_mask",
]


# --------------------------------------------------------------------------------------------------
# validity and vertex order
# --------------------------------------------------------------------------------------------------
def check_polygon(name: str, poly: object) -> None:
    """Raise ``ValueError`` unless ``poly`` is a floating ``(N, K, 2)`` tensor with ``K >= 1``."""
    check_tensor(name, poly, ("N", "K", 2), floating=True)
    assert isinstance(poly, torch.Tensor)
    if poly.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, K, 2) with K >= 1 vertices, got {tuple(poly.shape)}")


def vertex_mask(name: str, valid: object, poly: torch.Tensor) -> torch.Tensor:
    """Validity of the vertices of ``poly`` ``(N, K, 2)`` as a bool mask ``(N, K)``.

    ``valid`` is ``None`` (all valid), a mask ``(N, K)`` (bool, or any dtype with nonzero = valid) or an
    integer vertex count ``(N,)`` (the first ``n`` vertices are valid). ``name`` names the argument in the
    ``ValueError`` raised for anything else.

    >>> poly = torch.zeros(2, 4, 2)
    >>> vertex_mask("valid", torch.tensor([3, 4]), poly)
    tensor([[ True,  True,  True, False],
            [ True,  True,  True,  True]])
    """
    n, k = poly.shape[0], poly.shape[1]
    if valid is None:
        return torch.ones(n, k, dtype=torch.bool, device=poly.device)
    if not isinstance(valid, torch.Tensor):
        raise ValueError(
            f"{name} must be None, a bool mask of shape ({n}, {k}) or an integer vertex count of shape "
            f"({n},), got {type(valid).__name__}"
        )
    if valid.device != poly.device:
        raise ValueError(f"{name} is on {valid.device} but the polygons are on {poly.device}")
    if valid.dim() == 1:
        if valid.shape[0] != n or valid.is_floating_point() or valid.is_complex() or valid.dtype == torch.bool:
            raise ValueError(
                f"{name} as a vertex count must be an integer tensor of shape ({n},), "
                f"got {valid.dtype} of shape {tuple(valid.shape)}"
            )
        return torch.arange(k, device=poly.device) < valid[:, None]
    if valid.dim() == 2 and tuple(valid.shape) == (n, k):
        return valid if valid.dtype == torch.bool else valid != 0
    raise ValueError(
        f"{name} must be a bool mask of shape ({n}, {k}) or an integer vertex count of shape ({n},), "
        f"got shape {tuple(valid.shape)}"
    )


def next_valid_index(valid: torch.Tensor) -> torch.Tensor:
    """Index ``(N, K)`` of the next valid vertex after each vertex, cyclically (``i`` itself if none).

    Computed with a reversed ``cummin``, so it costs ``O(K)`` and needs no device sync.
    """
    n, k = valid.shape
    idx = torch.arange(k, device=valid.device).expand(n, k)
    cand = torch.where(valid, idx, k)
    after = torch.cat([cand[:, 1:], cand.new_full((n, 1), k)], dim=1)
    after = after.flip(1).cummin(1).values.flip(1)  # min over j > i
    first = cand.amin(1, keepdim=True)
    nxt = torch.where(after < k, after, first)
    return torch.where(nxt < k, nxt, idx)


def prev_valid_index(valid: torch.Tensor) -> torch.Tensor:
    """Index ``(N, K)`` of the previous valid vertex before each vertex, cyclically (``i`` if none)."""
    n, k = valid.shape
    idx = torch.arange(k, device=valid.device).expand(n, k)
    cand = torch.where(valid, idx, -1)
    before = torch.cat([cand.new_full((n, 1), -1), cand[:, :-1]], dim=1)
    before = before.cummax(1).values  # max over j < i
    last = cand.amax(1, keepdim=True)
    prv = torch.where(before >= 0, before, last)
    return torch.where(prv >= 0, prv, idx)


def gather_vertices(poly: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``poly[n, index[n, j]]`` for ``poly`` ``(N, K, 2)`` and ``index`` ``(N, J)``: ``(N, J, 2)``."""
    return poly.gather(1, index[..., None].expand(-1, -1, 2))


def _prepare(name: str, poly: object, valid_name: str, valid: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate, cast to the compute dtype and zero the invalid vertices (no gradient to them)."""
    check_polygon(name, poly)
    assert isinstance(poly, torch.Tensor)
    mask = vertex_mask(valid_name, valid, poly)
    p = as_float32(poly)
    return torch.where(mask[..., None], p, p.new_zeros(())), mask


def _pair(a: object, b: object, a_valid: object, b_valid: object) -> tuple[torch.Tensor, ...]:
    pa, ma = _prepare("a", a, "a_valid", a_valid)
    pb, mb = _prepare("b", b, "b_valid", b_valid)
    check_same("a", pa, "b", pb, dims=(0,))
    pa, pb = common_float(pa, pb)
    return pa, ma, pb, mb


# --------------------------------------------------------------------------------------------------
# local origin and "zero up to rounding"
# --------------------------------------------------------------------------------------------------
#: a length or area at most this many ulps of the shape's size (to the matching power) is rounding noise
RTOL_ULPS = 64


def rounding_tolerance(dtype: torch.dtype) -> float:
    """Relative size below which a length (or, squared, an area) is rounding noise: ``64 * eps``."""
    return RTOL_ULPS * torch.finfo(dtype).eps


def vertex_bounds(poly: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper corner ``(N, 2)`` of the bounding box of the valid vertices of ``(N, K, 2)``.

    Invalid vertices (any value, even ``nan``) are ignored; a polygon without a valid vertex gets
    ``+inf`` and ``-inf``, so that it vanishes from a :func:`torch.minimum` / :func:`torch.maximum` with
    another box. No gradient (a frame, not a value).
    """
    p = poly.detach()
    if mask is None:
        return p.amin(1), p.amax(1)
    inf = p.new_tensor(math.inf)
    keep = mask[..., None]
    return torch.where(keep, p, inf).amin(1), torch.where(keep, p, -inf).amax(1)


def box_centre(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Centre ``(N, 1, 2)`` of boxes from :func:`vertex_bounds`, ``0`` for an empty box (no vertex)."""
    centre = 0.5 * lo + 0.5 * hi  # no overflow near finfo.max
    return torch.where(lo <= hi, centre, centre.new_zeros(()))[:, None]


def box_side(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Larger side ``(N,)`` of boxes from :func:`vertex_bounds`, ``0`` for an empty box."""
    side = (hi - lo).amax(-1)
    return torch.where(side >= 0, side, side.new_zeros(()))


def has_zero_area(area: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Whether ``area`` ``(N,)`` of a shape whose bounding box has larger side ``side`` is zero up to
    rounding: ``|area| <= 64 * eps * side**2`` or below ``finfo.tiny`` (so ``1 / area`` is finite).

    >>> has_zero_area(torch.tensor([1e-20, 1e-3, 0.0]), torch.tensor([1.0, 1.0, 0.0]))
    tensor([ True, False,  True])
    """
    info = torch.finfo(area.dtype)
    return area.abs() <= torch.clamp(rounding_tolerance(area.dtype) * side * side, min=info.tiny)


def long_edges(len2: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Edges ``(N, K)`` whose squared length ``len2`` is not rounding noise: above ``(64 * eps)**2``
    times the polygon's longest squared edge and above ``finfo.tiny``; invalid ones (``mask``) never."""
    valid_len2 = len2 if mask is None else torch.where(mask, len2, len2.new_zeros(()))
    rtol = rounding_tolerance(len2.dtype)
    floor = torch.clamp(valid_len2.amax(1, keepdim=True) * (rtol * rtol), min=torch.finfo(len2.dtype).tiny)
    ok = len2 > floor
    return ok if mask is None else ok & mask


def to_local(poly: torch.Tensor, mask: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``poly - centre`` on the valid vertices, exactly ``0`` on the others (they get no gradient)."""
    return torch.where(mask[..., None], poly - centre, poly.new_zeros(()))


def _same_points(pa: torch.Tensor, ma: torch.Tensor, pb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
    """Whether the valid vertices of ``a`` and ``b`` are the same set of points ``(N,)`` (exact equality,
    order and repeats ignored)."""
    equal = (pa[:, :, None] == pb[:, None]).all(-1)  # (N, Ka, Kb)
    a_in_b = (equal & mb[:, None]).any(2) | ~ma
    b_in_a = (equal & ma[..., None]).any(1) | ~mb
    return a_in_b.all(1) & b_in_a.all(1)


class _LocalPair(NamedTuple):
    """A prepared pair in its local frame; the signed area of each polygon (each about its own centre,
    so that a small polygon far from its partner keeps its precision); the larger sides of ``a``, ``b``
    and of both together; whether they are the same point set."""

    pa: torch.Tensor
    ma: torch.Tensor
    pb: torch.Tensor
    mb: torch.Tensor
    area_a: torch.Tensor
    area_b: torch.Tensor
    side_a: torch.Tensor
    side_b: torch.Tensor
    side: torch.Tensor
    same: torch.Tensor


def _local_pair(pa: torch.Tensor, ma: torch.Tensor, pb: torch.Tensor, mb: torch.Tensor) -> _LocalPair:
    """Both polygons shifted by the centre of their joint bounding box (one shift per pair)."""
    with torch.no_grad():
        lo_a, hi_a = vertex_bounds(pa, ma)
        lo_b, hi_b = vertex_bounds(pb, mb)
        lo, hi = torch.minimum(lo_a, lo_b), torch.maximum(hi_a, hi_b)
        centre = box_centre(lo, hi)
        same = _same_points(pa, ma, pb, mb)  # on the user's coordinates: shifting can merge points
    return _LocalPair(
        to_local(pa, ma, centre),
        ma,
        to_local(pb, mb, centre),
        mb,
        shoelace(to_local(pa, ma, box_centre(lo_a, hi_a)), ma),
        shoelace(to_local(pb, mb, box_centre(lo_b, hi_b)), mb),
        box_side(lo_a, hi_a),
        box_side(lo_b, hi_b),
        box_side(lo, hi),
        same,
    )


# --------------------------------------------------------------------------------------------------
# area
# --------------------------------------------------------------------------------------------------
def shoelace(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Signed shoelace area ``(N,)`` over the valid vertices of ``p`` ``(N, K, 2)``; invalid vertices must
    hold finite values (they are multiplied by 0). Accurate only near the origin: see :func:`to_local`."""
    return shoelace_xy(p[..., 0], p[..., 1], mask)


def shoelace_xy(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """:func:`shoelace` of the coordinates ``x, y`` ``(N, K)``; ``mask`` ``None`` means all valid."""
    if mask is None:
        nx, ny = x.roll(-1, 1), y.roll(-1, 1)
    else:
        nxt = next_valid_index(mask)
        nx, ny = x.gather(1, nxt), y.gather(1, nxt)
    cross = x * ny - y * nx
    if mask is not None:
        cross = torch.where(mask, cross, cross.new_zeros(()))
    return 0.5 * cross.sum(-1)


def signed_polygon_area(poly: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Signed shoelace area ``(N,)`` of polygons ``(N, K, 2)``.

    Positive for counter-clockwise vertices in a y-up frame (= clockwise as drawn in y-down image
    coordinates). Fewer than three valid vertices give 0. Also defined (as the usual signed sum) for
    non-convex and self-intersecting polygons. Computed about the centre of the polygon's bounding box,
    so it is as accurate far from the origin as near it.

    >>> sq = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]]])
    >>> signed_polygon_area(sq), signed_polygon_area(sq.flip(1))
    (tensor([2.]), tensor([-2.]))
    """
    p, mask = _prepare("poly", poly, "valid", valid)
    with torch.no_grad():
        centre = box_centre(*vertex_bounds(p, mask))
    return shoelace(to_local(p, mask, centre), mask)


def polygon_area(poly: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Absolute shoelace area ``(N,)`` of simple polygons ``(N, K, 2)``, either vertex order.

    >>> polygon_area(torch.tensor([[[0.0, 0.0], [0.0, 3.0], [4.0, 0.0], [9.0, 9.0]]]), torch.tensor([3]))
    tensor([6.])
    """
    return signed_polygon_area(poly, valid).abs()


# --------------------------------------------------------------------------------------------------
# convex intersection (Sutherland-Hodgman, batched)
# --------------------------------------------------------------------------------------------------
def _compact(pts: torch.Tensor, keep: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the kept points ``(N, J, 2)`` to the front of a ``(N, cap, 2)`` list (order preserved).

    A scatter into ``cap + 1`` slots whose last one is a discarded dump for dropped points, so both the
    forward and the gradient (a gather) are exact. More than ``cap`` kept points cannot happen for convex
    input (see :func:`_clip`), and the excess would be dropped, not written out of bounds.
    """
    n = pts.shape[0]
    pos = keep.long().cumsum(1) - 1
    index = torch.where(keep & (pos < cap), pos, cap)
    out = pts.new_zeros(n, cap + 1, 2).scatter(1, index[..., None].expand(-1, -1, 2), pts)[:, :cap]
    count = keep.sum(1, keepdim=True)
    return out, torch.arange(cap, device=pts.device) < count


def _clip(
    pa: torch.Tensor, ma: torch.Tensor, pb: torch.Tensor, mb: torch.Tensor, area_b: torch.Tensor, side: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Intersection of convex ``a`` with convex ``b``: vertices ``(N, Ka + Kb + 2, 2)`` and their mask.

    ``a`` is clipped in turn by the half-plane left of each edge of ``b`` (right of it if ``b`` is
    clockwise). A padded edge of ``b``, or one whose length is rounding noise (:func:`long_edges`), is a
    no-op. Clipping a convex polygon with ``m`` vertices by a half-plane leaves at most ``m + 1``; two
    spare slots absorb rounding. Expects local coordinates (:func:`to_local`); ``area_b`` ``(N,)`` is the
    signed area of ``b`` (its orientation), ``side`` ``(N,)`` the larger side of the pair's bounding box.
    """
    n, ka, _ = pa.shape
    kb = pb.shape[1]
    cap = ka + kb + 2
    b_next = gather_vertices(pb, next_valid_index(mb))
    edges = b_next - pb
    with torch.no_grad():
        sign_b = torch.where(area_b >= 0, 1.0, -1.0).to(pb.dtype)[:, None]
        len2 = (edges * edges).sum(-1)
        cuts = long_edges(len2, mb)
        # dist below is the distance to the clip line times the edge length: a crossing segment whose
        # ends are both within rounding of the line (64 * eps * side) lies on it, and its start is the
        # crossing point (dividing by the noise-sized denominator would give a huge or inf gradient)
        on_line = (rounding_tolerance(pa.dtype) * side[:, None] * len2.sqrt()).clamp_(min=torch.finfo(pa.dtype).tiny)
    pts = torch.cat([pa, pa.new_zeros(n, cap - ka, 2)], dim=1)
    mask = torch.cat([ma, ma.new_zeros(n, cap - ka)], dim=1)
    for k in range(kb):
        origin, edge = pb[:, None, k], edges[:, None, k]
        rel = pts - origin
        dist = sign_b * (edge[..., 0] * rel[..., 1] - edge[..., 1] * rel[..., 0])  # > 0 inside
        dist = torch.where(cuts[:, k, None], dist, dist.new_ones(()))
        inside = dist >= 0
        nxt = next_valid_index(mask)
        pts_j = gather_vertices(pts, nxt)
        dist_j = dist.gather(1, nxt)
        denom = dist - dist_j  # crossing: opposite signs, so |denom| = |dist| + |dist_j| >= |dist|
        crossing = mask & (inside != inside.gather(1, nxt))
        safe = crossing & (denom.abs() > on_line[:, k, None])
        t = torch.where(safe, dist / torch.where(safe, denom, denom.new_ones(())), dist.new_zeros(()))
        hit = pts + t[..., None] * (pts_j - pts)
        cand = torch.stack([pts, hit], dim=2).reshape(n, 2 * cap, 2)
        keep = torch.stack([mask & inside, crossing], dim=2).reshape(n, 2 * cap)
        pts, mask = _compact(cand, keep, cap)
    return pts, mask


def _iou_parts(pair: _LocalPair) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union area ``(N,)`` of a pair in its local frame (see :func:`polygon_iou`)."""
    zero = pair.pa.new_zeros(())
    flat_a = has_zero_area(area_a := pair.area_a.abs(), pair.side_a)
    flat_b = has_zero_area(area_b := pair.area_b.abs(), pair.side_b)
    area_a, area_b = torch.where(flat_a, zero, area_a), torch.where(flat_b, zero, area_b)
    inter = shoelace(*_clip(pair.pa, pair.ma, pair.pb, pair.mb, pair.area_b, pair.side)).abs()
    # The intersection lies in both polygons: rounding of the clipped shoelace must not put it above
    # either area (then union >= inter and IoU <= 1 also in floating point). A flat polygon meets
    # anything in zero area (clipping by its noise-sized edges would cut nothing).
    inter = torch.where(flat_a | flat_b, zero, torch.minimum(inter, torch.minimum(area_a, area_b)))
    union = area_a + area_b - inter
    empty = flat_a & flat_b  # otherwise union >= the larger area > finfo.tiny
    iou = inter / torch.where(empty, union.new_ones(()), union)
    return torch.where(empty, pair.same.to(iou.dtype), iou), union


def polygon_iou(
    a: torch.Tensor,
    b: torch.Tensor,
    a_valid: torch.Tensor | None = None,
    b_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact IoU ``(N,)`` in ``[0, 1]`` of aligned pairs of **convex** polygons ``a`` ``(N, Ka, 2)``,
    ``b`` ``(N, Kb, 2)``.

    Either vertex order, validity as mask or count (module docstring). No ``eps``: the value is exact,
    not smoothed, and differentiable almost everywhere.

    **Degenerate input.** A flat polygon (zero area up to rounding, see the module docstring: fewer than
    three valid vertices, all equal or collinear) has area 0 and meets any polygon in area 0, so its IoU
    with anything is 0, except with the very same point set: two flat polygons whose valid vertices are
    exactly the same points (order and repeats ignored) have IoU 1, like any polygon with itself.

    >>> a = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]]])
    >>> polygon_iou(a, a + 1.0)
    tensor([0.1429])
    >>> point, segment = torch.ones(1, 3, 2), torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]])
    >>> polygon_iou(point, point), polygon_iou(segment, segment.flip(1)), polygon_iou(segment, point)
    (tensor([1.]), tensor([1.]), tensor([0.]))
    """
    return _iou_parts(_local_pair(*_pair(a, b, a_valid, b_valid)))[0]


# --------------------------------------------------------------------------------------------------
# convex hull (gift wrapping, batched)
# --------------------------------------------------------------------------------------------------
def _hull_area(pts: torch.Tensor, mask: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Area ``(N,)`` of the convex hull of the valid points ``(N, M, 2)`` (gift wrapping, ``M`` steps).

    Starts at the leftmost (then lowest) point heading down and repeatedly takes the point with the
    smallest counter-clockwise turn (ties within rounding: the farthest), so the hull is traversed
    counter-clockwise (y-up) and its shoelace area is non-negative. Points within rounding of the current
    one (``64 * eps * side``, ``side`` ``(N,)`` the larger side of the points' bounding box) are not
    candidates: their direction is noise. The walk ends when it reaches a point within rounding of one
    it has visited (normally the start; another one if rounding made it step past the start), closing
    back to the start. The choice of vertices is made on detached values; the area is a shoelace over
    the chosen vertices, so its gradient is exact. Expects local coordinates (:func:`to_local`).
    """
    n, m, _ = pts.shape
    tol = 16 * torch.finfo(pts.dtype).eps
    with torch.no_grad():
        p = pts.detach()
        near2 = (rounding_tolerance(p.dtype) * side[:, None]) ** 2
        x, y = p[..., 0], p[..., 1]
        inf = x.new_tensor(math.inf)
        rows = torch.arange(n, device=p.device)
        x_min = torch.where(mask, x, inf).amin(1, keepdim=True)
        start = torch.where(mask & (x == x_min), y, inf).argmin(1)
        start_pt = p[rows, start]
        cur, cur_pt = start, start_pt
        heading = torch.zeros_like(start_pt)
        heading[:, 1] = -1.0
        done = ~mask.any(1)
        visited = torch.zeros_like(mask)
        order = [start]
        for k in range(m + 1):
            v = p - cur_pt[:, None]
            dist2 = (v * v).sum(-1)
            # the walk is back at a vertex it has visited (within rounding): the hull is closed at the start
            done = done | (visited & (dist2 <= near2)).any(1)
            order[-1] = torch.where(done, start, order[-1])
            if k == m:
                break
            visited.scatter_(1, cur[:, None], True)
            cross = heading[:, None, 0] * v[..., 1] - heading[:, None, 1] * v[..., 0]
            dot = heading[:, None, 0] * v[..., 0] + heading[:, None, 1] * v[..., 1]
            turn = torch.atan2(cross, dot)
            # all points lie left of (or on) the last hull edge: a negative turn is rounding of 0,
            # except near -pi (a point straight behind), which is +pi
            turn = torch.where(turn < -math.pi / 2, turn + 2 * math.pi, turn.clamp(min=0.0))
            turn = torch.where(mask & (dist2 > near2), turn, inf)
            best = turn.amin(1, keepdim=True)
            done = done | torch.isinf(best[:, 0])
            tie = turn <= best + tol
            nxt = torch.where(done, start, torch.where(tie, dist2, -1.0).argmax(1))
            nxt_pt = p[rows, nxt]
            step = nxt_pt - cur_pt
            heading = torch.where((step != 0).any(-1, keepdim=True), step, heading)
            cur, cur_pt = nxt, nxt_pt
            order.append(cur)
        order.append(start)
        order = torch.stack(order, dim=1)
    hull = gather_vertices(pts, order)
    cross = hull[:, :-1, 0] * hull[:, 1:, 1] - hull[:, :-1, 1] * hull[:, 1:, 0]
    return 0.5 * cross.sum(-1)


def polygon_giou(
    a: torch.Tensor,
    b: torch.Tensor,
    a_valid: torch.Tensor | None = None,
    b_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact GIoU ``(N,)`` in ``[-1, 1]`` of aligned pairs of **convex** polygons: ``IoU - (C - U) / C``.

    ``C`` is the area of the convex hull of both vertex sets, ``U`` the area of the union, ``IoU`` that
    of :func:`polygon_iou` (including its rule for flat polygons). The hull contains the union, so ``C``
    is taken as at least ``U`` (rounding of the two shoelace sums must not push GIoU above IoU). A pair
    whose hull has zero area up to rounding (both polygons flat, on one line) has no enclosing area:
    its GIoU is its IoU (1 for the same point set, else 0). Either vertex order, validity as mask or
    count.

    >>> a = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    >>> polygon_giou(a, a + torch.tensor([2.0, 0.0]))
    tensor([-0.3333])
    """
    pair = _local_pair(*_pair(a, b, a_valid, b_valid))
    iou, union = _iou_parts(pair)
    hull = _hull_area(torch.cat([pair.pa, pair.pb], dim=1), torch.cat([pair.ma, pair.mb], dim=1), pair.side)
    flat = has_zero_area(hull, pair.side)
    enclosing = torch.maximum(hull, union)
    penalty = (enclosing - union) / torch.where(flat, enclosing.new_ones(()), enclosing)
    return iou - torch.where(flat, penalty.new_zeros(()), penalty)
