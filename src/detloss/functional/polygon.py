"""MGIoU for polygons: a fast, differentiable IoU surrogate (Le et al. 2025, arXiv:2504.16443).

Marginalized Generalized IoU projects both shapes on a set of axes and averages the 1-D GIoU of the
projected intervals. For polygons the axes are the normals of the edges of both polygons::

    axes    = normals of every valid edge of pred and of target                (A <= K + M axes)
    on axis a: p = [min, max] of pred's projections, g = same for target
    inter   = min(p.max, g.max) - max(p.min, g.min)        (signed: negative = gap)
    hull    = max(p.max, g.max) - min(p.min, g.min)        (enclosing interval C)
    GIoU1D  = inter / (hull + eps)        (eps = 0 by default; 0 / 0 := 0)
    MGIoU   = mean of GIoU1D over the valid axes                                in [-1, 1]
    loss    = (1 - MGIoU) / 2                                                  in [0, 1]

``inter / hull`` *is* the paper's 1-D GIoU, ``IoU - (C - U) / C``: when the intervals overlap the union
is the enclosing interval (``U = C``), so ``GIoU = I / U = I / C``; when they are apart by a gap ``d``,
``I = 0`` and ``U = C - d``, so ``GIoU = -d / C``, which is the signed ``inter / hull``. As
``-hull <= inter <= hull``, GIoU1D lies in ``[-1, 1]`` by construction (also in floating point, see
:func:`_mgiou`); it is never clamped. It is a ratio of two lengths along the axis, so the axis need
not be a unit vector: the normal of edge ``e`` is ``(-e_y, e_x)`` (normalised only when ``eps > 0``).

Polygons, validity and orientation follow :mod:`detloss.ops.polygon`: ``(N, K, 2)`` vertices,
validity as a bool mask ``(N, K)`` or a vertex count ``(N,)`` (the first ``n`` valid; so pad at the
end), the polygon is the valid vertices in stored order closed cyclically, and positive
:func:`~detloss.ops.signed_polygon_area` means counter-clockwise in a y-up frame (clockwise as
drawn in y-down image coordinates). MGIoU itself is orientation-agnostic.

**Local origin.** Both polygons of a pair are first shifted by the centre of their joint bounding box
(a constant, no gradient; MGIoU is translation-invariant), so projections keep their precision far
from the origin: identical polygons give 1 at 4000 px in float32 as at the origin.

**Axes.** Edge ``i`` runs from valid vertex ``i`` to the next valid vertex. Padded vertices and
zero-length edges (shorter than ``64 * finfo(dtype).eps`` times the polygon's longest edge, i.e.
repeated vertices up to rounding, or with a squared length below ``finfo.tiny``) give no axis
(:func:`~detloss.ops.polygon.long_edges`). Parallel axes are *not* pruned: each edge is one axis.
For rotated rectangles this equals the paper's MGIoU2D exactly: there each rectangle contributes its two
edge normals (4 axes); here it contributes 4 normals, two pairs of opposite ones, and the 1-D GIoU on
``-a`` equals the one on ``a`` (the projections are mirrored), so every direction is counted exactly
twice and the mean is the same. For general quadrangles it is the paper's MGIoU2D+ (one axis per edge).

**Gradients through padding.** The masked mean is a weighted sum with weight 0 on invalid axes,
and every masked entry is computed from finite values selected *before* the arithmetic (padding is
replaced by a copy of a valid vertex through a gather, so a missing edge has a finite, possibly zero,
normal), so no ``0 * nan`` reaches the backward pass. The min/max over vertices see only valid
vertices (a copy of a valid vertex cannot change a min or max), so padded vertices get exactly zero
gradient and a triangle padded to 8 vertices has the gradient of the bare triangle. No ``nan_to_num`` and no clamp
on the value path. The hull length is 0 only when both projections are one and the same point (two
degenerate polygons); a hull length within rounding of that (at most ``64 * finfo(dtype).eps`` times
the pair's larger side times ``|a_x| + |a_y|``, or below ``finfo.tiny``) counts as 0, and that axis gets
GIoU1D 0 through :func:`torch.where` on a safe denominator. So the value is finite by construction
without an epsilon, ``1 / hull`` is never ``inf`` (a missing axis with a subnormal hull would otherwise
send ``0 * inf = nan`` into backward), and MGIoU stays exactly scale-invariant (1 for identical
polygons at any scale). An optional ``eps`` (in the coordinates' unit, default 0 as in the paper's reference code)
is added to the hull length only. The count of valid axes is floored at 1 (a pair with no axis at all
has MGIoU 0).

Everything computes in float32 (float64 kept, for gradcheck), also under autocast: only elementwise
ops, reductions, gathers and scatters are used, which autocast does not downcast.

**Speed.** The min/max of the projections and the vertex attaining them are found without autograd
(on CPU by a running min/max over the vertices on cache-sized blocks, elsewhere by a dense
``(N, A, K)`` reduction); the gradient is then applied by hand from the saved indices
(:class:`_Extents`). It is exactly the gradient of ``torch.max(dim)`` / ``torch.min(dim)`` (first vertex
at ties), first order only (no double backward). On CPU this is over 10x faster than the exact
:func:`~detloss.ops.polygon_giou` (``benchmarks/polygon.py``).
"""

from __future__ import annotations

import torch

from detloss.core.checks import as_float32, check_same, common_float
from detloss.ops.polygon import (
    box_centre,
    box_side,
    check_polygon,
    gather_vertices,
    has_zero_area,
    long_edges,
    next_valid_index,
    prev_valid_index,
    rounding_tolerance,
    shoelace_xy,
    signed_polygon_area,
    vertex_mask,
)

__all__ = ["axis_giou", "convexity_penalty", "mgiou", "mgiou_loss", "sort_by_angle"]


def _prepare(name: str, poly: object, valid_name: str, valid: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate; cast to the compute dtype; the mask, or ``None`` when all vertices are valid."""
    check_polygon(name, poly)
    assert isinstance(poly, torch.Tensor)
    mask = None if valid is None else vertex_mask(valid_name, valid, poly)
    return as_float32(poly), mask


def _to_local(px: torch.Tensor, py: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Filled coordinates (:func:`_coords`) of both polygons shifted by the centre of their joint bounding
    box (a constant: MGIoU is translation-invariant) and the larger side ``(N,)`` of that box; then the
    centre ``x, y`` ``(N, 1)`` and larger side ``(N,)`` of the target's own box.

    Projections of absolute coordinates far from the origin would lose all but the leading digits. Filled
    slots hold copies of valid vertices, so they change no bounds.
    """
    with torch.no_grad():
        (pxl, pxh), (pyl, pyh), (gxl, gxh), (gyl, gyh) = ((c.amin(1), c.amax(1)) for c in (px, py, gx, gy))
        lo = torch.stack([torch.minimum(pxl, gxl), torch.minimum(pyl, gyl)], -1)
        hi = torch.stack([torch.maximum(pxh, gxh), torch.maximum(pyh, gyh)], -1)
        cx, cy = box_centre(lo, hi).unbind(-1)  # (N, 1) each
        g_lo, g_hi = torch.stack([gxl, gyl], -1), torch.stack([gxh, gyh], -1)
        gcx, gcy = box_centre(g_lo, g_hi).unbind(-1)
    return px - cx, py - cy, gx - cx, gy - cy, box_side(lo, hi), gcx, gcy, box_side(g_lo, g_hi)


def _full(mask: torch.Tensor | None, poly: torch.Tensor) -> torch.Tensor:
    return vertex_mask("valid", None, poly) if mask is None else mask


def _fill_index(mask: torch.Tensor) -> torch.Tensor:
    """Source vertex ``(N, K)`` of every slot: itself if valid, else the first valid vertex (0 if none)."""
    first = mask.to(torch.uint8).argmax(1, keepdim=True)
    return torch.where(mask, torch.arange(mask.shape[1], device=mask.device), first)


def _coords(poly: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous ``x, y`` ``(N, K)`` with every invalid vertex replaced by a copy of a valid one.

    A copy of a valid vertex changes no min/max of the projections, and since the copy is a gather,
    padded values (whatever they are, even ``nan``) get exactly zero gradient and never enter the
    arithmetic. A polygon with no valid vertex becomes the point ``(0, 0)``.
    """
    if mask is None:
        x, y = poly.unbind(-1)
        return x.contiguous(), y.contiguous()
    n, k = mask.shape
    src = _fill_index(mask) + torch.arange(n, device=mask.device)[:, None] * k
    src = torch.where(mask.any(1, keepdim=True), src, n * k)  # -> the zero row
    flat = torch.cat([poly.reshape(-1, 2), poly.new_zeros(1, 2)])
    filled = flat.index_select(0, src.reshape(-1)).view(n, k, 2)
    x, y = filled.unbind(-1)
    return x.contiguous(), y.contiguous()


def _edge_axes(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, unit: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normals ``(ax, ay)`` ``(N, K)`` of the edges of filled polygons, and which edges are valid.

    The normal of edge ``e`` is ``(-e_y, e_x)``, of length ``|e|``; divided by it only if ``unit``.
    GIoU1D is a ratio of lengths measured along the axis, so it does not depend on the axis length
    (with ``eps = 0``): normalising would only add work and a ``1 / |e|`` factor to the backward pass.
    A missing edge (padding, or zero length) gets a finite stand-in axis and weight 0.
    """
    if mask is None:
        ex, ey = x.roll(-1, 1) - x, y.roll(-1, 1) - y
    else:
        nxt = next_valid_index(mask)
        ex, ey = x.gather(1, nxt) - x, y.gather(1, nxt) - y
    with torch.no_grad():
        ok = long_edges(torch.addcmul(ex * ex, ey, ey), mask)
    if not unit:
        return -ey, ex, ok
    inv_len = torch.rsqrt(torch.addcmul(ex * ex, ey, ey) + ~ok)  # missing edges: len2 + 1 > 0, finite
    return -ey * inv_len, ex * inv_len, ok


_CHUNK = 4096  # rows per block in the support search: keeps the (rows, 2, axes) temporaries in cache


def _support(
    px: torch.Tensor, py: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, ax: torch.Tensor, ay: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Extreme projections of two polygons on shared axes, and which vertex attains them.

    ``px, py`` ``(N, K)``, ``gx, gy`` ``(N, M)`` are finite vertices, ``ax, ay`` ``(N, A)`` the axes.
    Returns ``lo, hi`` ``(2, N, A)`` (pred, target), the min and max over the vertices of
    ``ax * x + ay * y``, and ``i_lo, i_hi`` ``(2, N, A)``, the vertex attaining them (the first one at
    ties), as whole numbers in the dtype of the axes.

    A running min/max over the vertices, both polygons at once, on ``(2, rows, A)`` blocks with
    in-place ops writing straight into the outputs: on CPU several times faster than materialising
    ``(N, A, K)`` and reducing it with indices. The shorter polygon is padded by repeating its last
    vertex, which never wins a tie (the first vertex does), so indices stay below its own size.
    """
    n, k = px.shape
    m, a = gx.shape[1], ax.shape[1]
    if ax.device.type != "cpu":
        return _support_dense(px, py, gx, gy, ax, ay)
    v = max(k, m)
    if k < v:
        px, py = (torch.cat([c, c[:, -1:].expand(-1, v - k)], 1) for c in (px, py))
    if m < v:
        gx, gy = (torch.cat([c, c[:, -1:].expand(-1, v - m)], 1) for c in (gx, gy))
    xt = torch.stack([px.t(), gx.t()], dim=1)[..., None]  # (V, 2, N, 1): a vertex is contiguous
    yt = torch.stack([py.t(), gy.t()], dim=1)[..., None]
    lo, hi = ax.new_empty(2, n, a), ax.new_empty(2, n, a)
    i_lo, i_hi = ax.new_zeros(2, n, a), ax.new_zeros(2, n, a)
    for s in range(0, n, _CHUNK):
        e = min(s + _CHUNK, n)
        a0, a1 = ax[s:e], ay[s:e]  # (rows, A), broadcast over the outer (pred, target) dim
        xs, ys = xt[:, :, s:e], yt[:, :, s:e]  # (V, 2, rows, 1)
        c_lo, c_hi, c_ilo, c_ihi = lo[:, s:e], hi[:, s:e], i_lo[:, s:e], i_hi[:, s:e]  # (2, rows, A)
        torch.mul(a0, xs[0], out=c_hi).addcmul_(a1, ys[0])
        c_lo.copy_(c_hi)
        proj, rise = torch.empty_like(c_hi), torch.empty_like(c_hi)
        for j in range(1, v):  # j grows, so the last strict rise is the first arg-extreme
            torch.mul(a0, xs[j], out=proj).addcmul_(a1, ys[j])
            torch.maximum(c_ihi, torch.gt(proj, c_hi, out=rise).mul_(j), out=c_ihi)
            torch.maximum(c_hi, proj, out=c_hi)
            torch.maximum(c_ilo, torch.lt(proj, c_lo, out=rise).mul_(j), out=c_ilo)
            torch.minimum(c_lo, proj, out=c_lo)
    return lo, hi, i_lo, i_hi


def _support_dense(
    px: torch.Tensor, py: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, ax: torch.Tensor, ay: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_support` by materialising the ``(N, A, K)`` projections: fewer, larger kernels (GPU)."""
    out = []
    for x, y in ((px, py), (gx, gy)):
        proj = torch.addcmul(ax[:, :, None] * x[:, None, :], ay[:, :, None], y[:, None, :])  # (N, A, K)
        lo, i_lo = proj.min(-1)
        hi, i_hi = proj.max(-1)
        out.append((lo, hi, i_lo.to(ax.dtype), i_hi.to(ax.dtype)))
    return tuple(torch.stack(pair) for pair in zip(*out, strict=True))  # type: ignore[return-value]


class _Extents(torch.autograd.Function):
    """Min and max ``(N, A)`` of the projections of pred and of target on shared axes.

    The gradient is that of ``torch.min(dim)`` / ``torch.max(dim)`` over the vertices: all of it to the
    vertex attaining the extreme (the first one at ties) and to the axis, none to the other vertices.
    Computed by hand from the saved indices, which is several times cheaper than autograd through an
    ``(N, A, K)`` projection tensor.
    """

    @staticmethod
    def forward(ctx, px, py, gx, gy, ax, ay):  # type: ignore[override]
        lo, hi, i_lo, i_hi = _support(px, py, gx, gy, ax, ay)
        ctx.save_for_backward(px, py, gx, gy, ax, ay, i_lo, i_hi)
        return lo[0], hi[0], lo[1], hi[1]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_plo, d_phi, d_glo, d_ghi):  # type: ignore[override]
        px, py, gx, gy, ax, ay, i_lo, i_hi = ctx.saved_tensors
        need = ctx.needs_input_grad
        i_lo, i_hi = i_lo.long(), i_hi.long()  # kept as float by the forward loop
        # extent = ax * x[i] + ay * y[i]: d/d axis = the support vertex, d/d vertex i = the axis
        terms = ((d_plo, i_lo[0], px, py), (d_phi, i_hi[0], px, py), (d_glo, i_lo[1], gx, gy), (d_ghi, i_hi[1], gx, gy))
        grads: list[torch.Tensor | None] = [None] * 6
        if need[4] or need[5]:
            d_ax, d_ay = torch.zeros_like(ax), torch.zeros_like(ay)
            for d, i, x, y in terms:
                d_ax.addcmul_(d, x.gather(1, i))
                d_ay.addcmul_(d, y.gather(1, i))
            grads[4], grads[5] = d_ax, d_ay
        for slot, (lo, hi) in ((0, terms[:2]), (2, terms[2:])):
            if need[slot] or need[slot + 1]:
                d_x, d_y = torch.zeros_like(lo[2]), torch.zeros_like(lo[3])
                for d, i, _, _ in (lo, hi):
                    d_x.scatter_add_(1, i, d * ax)
                    d_y.scatter_add_(1, i, d * ay)
                grads[slot], grads[slot + 1] = d_x, d_y
        return tuple(grads)


def _axis_giou(
    px: torch.Tensor,
    py: torch.Tensor,
    mp: torch.Tensor | None,
    gx: torch.Tensor,
    gy: torch.Tensor,
    mg: torch.Tensor | None,
    eps: float,
    side: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GIoU1D ``(N, K + M)`` on every axis (pred's edge normals, then target's) and the axis weights
    ``(N, K + M)`` (1 for a valid axis, 0 for a missing one), from filled local coordinates
    (:func:`_to_local`, :func:`_coords`); ``side`` ``(N,)`` is the larger side of the pair's bounding box."""
    pax, pay, pok = _edge_axes(px, py, mp, unit=eps > 0)
    gax, gay, gok = _edge_axes(gx, gy, mg, unit=eps > 0)
    ax, ay = torch.cat([pax, gax], dim=1), torch.cat([pay, gay], dim=1)
    weight = torch.cat([pok, gok], dim=1).to(px.dtype)
    p_lo, p_hi, g_lo, g_hi = _Extents.apply(px, py, gx, gy, ax, ay)
    # with S = |P| + |G| (sum of the interval lengths) and D = |p.max - g.max| + |p.min - g.min|:
    #   inter = min(maxes) - max(mins) = (S - D) / 2,  hull = max(maxes) - min(mins) = (S + D) / 2
    # (min(a, b) = (a + b - |a - b|) / 2); abs has a cheaper backward than minimum/maximum
    span = (p_hi - p_lo) + (g_hi - g_lo)
    gap = (p_hi - g_hi).abs() + (p_lo - g_lo).abs()
    hull2 = span + gap + 2 * eps  # 2 * (hull + eps) >= |span - gap| = 2 * |inter|: GIoU1D in [-1, 1]
    with torch.no_grad():
        # A hull length within rounding of the projections (|coordinate| <= side) is 0: both projections
        # are one point, GIoU1D := 0. Also keeps 1 / hull2 finite, so a missing axis (weight 0) cannot
        # send 0 * inf = nan into backward.
        noise = ax.abs().add_(ay.abs()).mul_(rounding_tolerance(hull2.dtype) * side[:, None])
        usable = hull2 > noise.clamp_(min=torch.finfo(hull2.dtype).tiny)
    giou1d = (span - gap) / torch.where(usable, hull2, hull2.new_ones(()))  # = inter / (hull + eps)
    return torch.where(usable, giou1d, giou1d.new_zeros(())), weight


def _mgiou(
    px: torch.Tensor,
    py: torch.Tensor,
    mp: torch.Tensor | None,
    gx: torch.Tensor,
    gy: torch.Tensor,
    mg: torch.Tensor | None,
    eps: float,
    side: torch.Tensor,
) -> torch.Tensor:
    """MGIoU from filled local coordinates (:func:`_coords`); ``mp`` / ``mg`` are masks or ``None``."""
    giou1d, weight = _axis_giou(px, py, mp, gx, gy, mg, eps, side)
    return (giou1d * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)


def mgiou(
    pred: torch.Tensor,
    target: torch.Tensor,
    pred_valid: torch.Tensor | None = None,
    target_valid: torch.Tensor | None = None,
    *,
    eps: float = 0.0,
) -> torch.Tensor:
    """MGIoU ``(N,)`` in ``[-1, 1]`` of aligned polygon pairs ``pred`` ``(N, K, 2)``, ``target`` ``(N, M, 2)``.

    ``pred_valid`` / ``target_valid``: ``None`` (all valid), a bool mask ``(N, K)`` or a vertex count
    ``(N,)`` (padding at the end). See the module docstring for axes, conventions and gradients.
    1 for identical polygons, at any scale, in any vertex order or rotation of the list.

    >>> a = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]]])
    >>> b = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [3.0, 2.0], [1.0, 2.0]]])
    >>> mgiou(a, b)  # (1/3 along x + 1/2 along y) / 2
    tensor([0.4167])
    """
    p, mp = _prepare("pred", pred, "pred_valid", pred_valid)
    g, mg = _prepare("target", target, "target_valid", target_valid)
    check_same("pred", p, "target", g, dims=(0,))
    p, g = common_float(p, g)
    px, py, gx, gy, side, *_ = _to_local(*_coords(p, mp), *_coords(g, mg))
    return _mgiou(px, py, mp, gx, gy, mg, eps, side)


def axis_giou(
    pred: torch.Tensor,
    target: torch.Tensor,
    pred_valid: torch.Tensor | None = None,
    target_valid: torch.Tensor | None = None,
    *,
    eps: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-axis 1-D GIoU that :func:`mgiou` averages, and which axes exist.

    Args:
        pred: ``(N, K, 2)`` polygons; ``pred_valid`` ``None``, a bool mask ``(N, K)`` or counts ``(N,)``.
        target: ``(N, M, 2)`` polygons; ``target_valid`` likewise.
        eps: as in :func:`mgiou`.

    Returns:
        ``giou (N, K + M)``: GIoU1D in ``[-1, 1]`` on the normal of pred's edge ``i`` (columns ``0..K-1``,
        edge ``i`` from valid vertex ``i`` to the next valid one) and of target's edge ``j`` (columns
        ``K + j``); and ``valid (N, K + M)`` bool, the axes that exist (missing ones, from padding or
        zero-length edges, hold a finite value that :func:`mgiou` weights by 0). ``mgiou`` is the mean of
        ``giou`` over ``valid`` (0 where a pair has no axis). +1 on an axis: the two projections coincide
        there; -1: they are two points far apart compared with their lengths (both vanish).

    >>> sq = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    >>> giou, valid = axis_giou(sq, sq + torch.tensor([0.5, 0.0]))
    >>> giou[0, :4]  # normals of pred's edges: y, x, y, x; the x intervals [0, 1] and [0.5, 1.5]
    tensor([1.0000, 0.3333, 1.0000, 0.3333])
    """
    p, mp = _prepare("pred", pred, "pred_valid", pred_valid)
    g, mg = _prepare("target", target, "target_valid", target_valid)
    check_same("pred", p, "target", g, dims=(0,))
    p, g = common_float(p, g)
    px, py, gx, gy, side, *_ = _to_local(*_coords(p, mp), *_coords(g, mg))
    giou, weight = _axis_giou(px, py, mp, gx, gy, mg, eps, side)
    return giou, weight > 0


def sort_by_angle(poly: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Vertices ``(N, K, 2)`` reordered by angle around the centroid of the valid vertices.

    Valid vertices come first, by increasing ``atan2(y - cy, x - cx)``: counter-clockwise in a y-up
    frame, so a convex (or star-shaped about its vertex centroid) polygon gets a positive
    :func:`~detloss.ops.signed_polygon_area`. Invalid vertices follow, in their original order;
    the validity of the result is the count ``valid.sum(1)``. The ordering is piecewise constant
    (no gradient through it); the values are gathered, so gradients reach the original vertices.

    >>> sort_by_angle(torch.tensor([[[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]))
    tensor([[[0., 0.],
             [1., 0.],
             [1., 1.],
             [0., 1.]]])
    """
    check_polygon("poly", poly)
    mask = vertex_mask("valid", valid, poly)
    with torch.no_grad():
        p = poly.detach()
        w = mask.to(p.dtype)[..., None]
        centre = (torch.where(mask[..., None], p, p.new_zeros(())) * w).sum(1, keepdim=True)
        centre = centre / w.sum(1, keepdim=True).clamp(min=1.0)
        d = torch.where(mask[..., None], p - centre, p.new_zeros(()))
        angle = torch.atan2(d[..., 1], d[..., 0])
        key = torch.where(mask, angle, angle.new_full((), 4.0))  # > pi: padding last
        order = torch.argsort(key, dim=1, stable=True)
    return gather_vertices(poly, order)


def convexity_penalty(pred: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MGIoU+ convexity regularizer ``(N,)``: 0 for convex polygons, positive at reflex vertices.

    At each valid vertex ``i`` the turn ``cross_i = (v_i - v_prev) x (v_next - v_i)`` must have the sign
    of the polygon's orientation ``s = sign(signed_polygon_area)`` (``+1`` for counter-clockwise in a
    y-up frame, also used when the area is 0); the penalty is::

        mean_i relu(-s * cross_i) / mean_i |v_next - v_i|^2

    over valid vertices. Dividing by the mean squared edge length makes it scale-invariant; it is
    orientation-agnostic (either vertex order of a convex polygon gives 0). A polygon with no
    non-zero edge (mean squared edge below ``finfo.tiny``) gives 0.

    >>> dart = torch.tensor([[[0.0, 0.0], [2.0, 1.0], [4.0, 0.0], [2.0, 4.0]]])  # reflex at (2, 1)
    >>> bool(convexity_penalty(dart) > 0), float(convexity_penalty(dart[:, [0, 2, 3]]))
    (True, 0.0)
    """
    p, mask = _prepare("pred", pred, "valid", valid)
    mask = _full(mask, p)
    p = torch.where(mask[..., None], p, p.new_zeros(()))
    prev = gather_vertices(p, prev_valid_index(mask))
    nxt = gather_vertices(p, next_valid_index(mask))
    e_in, e_out = p - prev, nxt - p
    cross = e_in[..., 0] * e_out[..., 1] - e_in[..., 1] * e_out[..., 0]
    with torch.no_grad():
        sign = torch.where(signed_polygon_area(p, mask) >= 0, 1.0, -1.0).to(p.dtype)[:, None]
    zero = p.new_zeros(())
    count = mask.sum(1).clamp(min=1).to(p.dtype)
    wrong = torch.where(mask, torch.relu(-sign * cross), zero).sum(1) / count
    scale = torch.where(mask, (e_out * e_out).sum(-1), zero).sum(1) / count
    positive = scale >= torch.finfo(p.dtype).tiny  # 1 / scale finite: no 0 * inf in backward
    return torch.where(positive, wrong / torch.where(positive, scale, p.new_ones(())), zero)


def mgiou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    pred_valid: torch.Tensor | None = None,
    target_valid: torch.Tensor | None = None,
    *,
    convexity_weight: float = 0.0,
    sort_pred: bool = False,
    eps: float = 0.0,
) -> torch.Tensor:
    """MGIoU loss ``(N,)``: ``(1 - mgiou) / 2`` in ``[0, 1]``, per aligned pair ``(N, K, 2)``.

    * **Degenerate target** (zero area up to rounding: fewer than 3 valid vertices, all equal or
      collinear; ``|area| <= 64 * finfo(dtype).eps * side**2`` with ``side`` the larger side of its
      bounding box, :func:`~detloss.ops.has_zero_area`): MGIoU is meaningless there, so that
      pair's loss is the mean L1 distance ``|dx| + |dy|`` between corresponding vertices valid in both
      ``pred`` and ``target`` (0 if none), in the coordinates' unit. The choice is a
      :func:`torch.where` between two finite values, so neither branch leaks ``nan`` into the other.
    * ``sort_pred=True``: pred's valid vertices are first sorted by angle around their centroid
      (:func:`sort_by_angle`), for unstructured predictions; the L1 fallback then pairs the sorted
      vertices with the target's.
    * ``convexity_weight > 0``: MGIoU+, adds ``convexity_weight * convexity_penalty(pred)``.

    ``pred`` and ``target`` must have the same shape (the fallback pairs vertices); use :func:`mgiou`
    for polygons with different ``K``.

    >>> sq = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    >>> mgiou_loss(sq, sq + torch.tensor([0.5, 0.0]))  # GIoU1D 1/3 on x, 1 on y
    tensor([0.1667])
    """
    if not convexity_weight >= 0:
        raise ValueError(f"convexity_weight must be >= 0, got {convexity_weight}")
    p, mp = _prepare("pred", pred, "pred_valid", pred_valid)
    g, mg = _prepare("target", target, "target_valid", target_valid)
    check_same("pred", p, "target", g)
    p, g = common_float(p, g)
    if sort_pred:
        p = sort_by_angle(p, mp)
        if mp is not None:
            mp = torch.arange(p.shape[1], device=p.device) < mp.sum(1, keepdim=True)
    (px, py), (gx, gy) = _coords(p, mp), _coords(g, mg)
    lpx, lpy, lgx, lgy, side, gcx, gcy, side_g = _to_local(px, py, gx, gy)
    loss = (1.0 - _mgiou(lpx, lpy, mp, lgx, lgy, mg, eps, side)) * 0.5

    with torch.no_grad():  # degenerate target: zero area up to rounding, about its own centre
        degenerate = has_zero_area(shoelace_xy(gx - gcx, gy - gcy, mg), side_g)
    if mp is None and mg is None:
        l1 = (p - g).abs().sum((1, 2)) / p.shape[1]
    else:  # filled coordinates: finite everywhere
        both = _full(mp, p) & _full(mg, g)
        dist = (px - gx).abs() + (py - gy).abs()
        l1 = (dist * both).sum(1) / both.sum(1).clamp(min=1).to(dist.dtype)
    loss = torch.where(degenerate, l1, loss)

    if convexity_weight > 0:
        loss = loss + convexity_weight * convexity_penalty(p, _full(mp, p))
    return loss
