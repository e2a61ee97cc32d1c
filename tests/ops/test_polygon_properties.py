"""Property suites for the exact polygon geometry over degenerate, tiny, huge and far-from-origin polygons:
ranges, agreement with shapely, finite values and gradients (strategies: ``polygon_strategies``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from polygon_strategies import CONVEX, PROPERTY, Pairs, for_shapely, pixel_polygons, polygon_pairs

from detloss.ops import polygon_area, polygon_giou, polygon_iou
from detloss.ops.hull import convex_hull

shapely = pytest.importorskip("shapely")
from shapely.geometry import MultiPoint  # noqa: E402

F64 = torch.finfo(torch.float64)


def flat(area: float, pts: np.ndarray) -> bool:
    """The documented rule: zero area up to rounding relative to the larger side of the bounding box."""
    side = float(np.ptp(pts, 0).max()) if len(pts) else 0.0
    return area <= max(64 * F64.eps * side * side, F64.tiny)


def reference(pairs: Pairs, i: int) -> tuple[float, float, float, float]:
    """Area of ``a`` and ``b``, IoU and GIoU of pair ``i`` by shapely, on the pair's local coordinates
    (the exact input minus its offset), with the documented rules for flat polygons."""
    va, vb = pairs.vertices(i)
    la, lb = (for_shapely(x) for x in pairs.local(i))
    ha, hb = MultiPoint(la).convex_hull, MultiPoint(lb).convex_hull  # = the polygon, for convex input
    flat_a, flat_b = flat(ha.area, la), flat(hb.area, lb)
    if flat_a or flat_b:
        inter = 0.0
        same = {tuple(v) for v in va} == {tuple(v) for v in vb}
        iou = 1.0 if flat_a and flat_b and same else 0.0
    else:
        inter = ha.intersection(hb).area
        iou = inter / (ha.area + hb.area - inter)
    union = (0.0 if flat_a else ha.area) + (0.0 if flat_b else hb.area) - inter
    both = np.concatenate([la, lb])
    hull = MultiPoint(both).convex_hull.area
    giou = iou if flat(hull, both) else iou - (max(hull, union) - union) / max(hull, union)
    return ha.area, hb.area, iou, giou


# ---------------------------------------------------------------------------------- float64 vs shapely
@PROPERTY
@given(polygon_pairs(dtypes=(torch.float64,)))
def test_float64_matches_shapely_far_from_the_origin(pairs: Pairs) -> None:
    """Offsets up to 1e6 change nothing: IoU and GIoU within 1e-9 of shapely on the local coordinates,
    IoU in [0, 1] and GIoU in [-1, 1] exactly, the flat-polygon rules as documented."""
    iou = polygon_iou(pairs.a, pairs.b, pairs.na, pairs.nb)
    giou = polygon_giou(pairs.a, pairs.b, pairs.na, pairs.nb)
    area_a = polygon_area(pairs.a, pairs.na)
    assert ((iou >= 0) & (iou <= 1)).all(), iou
    assert ((giou >= -1) & (giou <= 1)).all(), giou
    for i in range(len(iou)):
        ref_area, _, ref_iou, ref_giou = reference(pairs, i)
        assert iou[i].item() == pytest.approx(ref_iou, abs=1e-9), (i, pairs.kind_a[i], pairs.kind_b[i])
        assert giou[i].item() == pytest.approx(ref_giou, abs=1e-9), (i, pairs.kind_a[i], pairs.kind_b[i])
        # the shoelace of a non-convex (collinear, back-and-forth) path may differ from its hull's
        if pairs.kind_a[i] in CONVEX:
            assert area_a[i].item() == pytest.approx(ref_area, rel=1e-9, abs=1e-9 * ref_area + F64.tiny)


# ------------------------------------------------------------------------- finite values and gradients
@PROPERTY
@given(polygon_pairs())
def test_finite_values_and_gradients_in_range(pairs: Pairs) -> None:
    """float32 and float64, every kind, offsets up to 1e6, nan padding: IoU in [0, 1], GIoU in [-1, 1],
    finite values and gradients for both inputs, exactly zero gradient on padding."""
    for fn, low in ((polygon_iou, 0.0), (polygon_giou, -1.0)):
        a = pairs.a.clone().requires_grad_()
        b = pairs.b.clone().requires_grad_()
        value = fn(a, b, pairs.na, pairs.nb)
        assert value.dtype == pairs.a.dtype
        assert ((value >= low) & (value <= 1)).all(), (fn.__name__, value)
        grad_a, grad_b = torch.autograd.grad(value.sum(), (a, b))
        for grad, count in ((grad_a, pairs.na), (grad_b, pairs.nb)):
            assert torch.isfinite(grad).all(), (fn.__name__, grad)
            padding = torch.arange(grad.shape[1]) >= count[:, None]
            assert (grad[padding] == 0).all()
    a = pairs.a.clone().requires_grad_()
    area = polygon_area(a, pairs.na)
    (grad,) = torch.autograd.grad(area.sum(), a)
    assert torch.isfinite(area).all() and (area >= 0).all() and torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- float32, up to 8192 px
@PROPERTY
@given(pixel_polygons())
def test_float32_identity_far_from_the_origin(polygons: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """A polygon against itself gives IoU = GIoU = 1 +- 1e-5 in float32 at any position up to 8192 px
    (a 2 px polygon near 4000 px gave anything in [0, 1] before the local origin)."""
    a, b, count = polygons
    for fn in (polygon_iou, polygon_giou):
        value = fn(a, b, count, count)
        assert ((value - 1).abs() <= 1e-5).all(), (fn.__name__, value)


# ---------------------------------------------------------------------------------------- convex hull
@PROPERTY
@given(polygon_pairs(dtypes=(torch.float64,)))
def test_convex_hull_far_from_the_origin_matches_shapely(pairs: Pairs) -> None:
    """The hull of both polygons' vertices has shapely's area (1e-9 of the larger side squared) and only
    shapely's vertices, at any offset."""
    points = torch.cat([pairs.a, pairs.b], 1)
    valid = torch.cat([torch.arange(8) < pairs.na[:, None], torch.arange(8) < pairs.nb[:, None]], 1)
    points = torch.where(valid[..., None], points, 0.0)  # convex_hull reads every point: no nan padding
    hull, mask = convex_hull(points, valid)
    area = polygon_area(hull, mask)
    for i in range(len(points)):
        la, lb = pairs.local(i)
        both = np.concatenate([la, lb])
        ref = MultiPoint(for_shapely(both)).convex_hull
        side = float(np.ptp(both, 0).max())
        assert area[i].item() == pytest.approx(ref.area, abs=1e-9 * side * side)
        if ref.geom_type == "Polygon":
            ours = hull[i][mask[i]].double().numpy() - pairs.offset[i]
            ref_pts = np.array(ref.exterior.coords[:-1])
            gap = np.abs(ours[:, None] - ref_pts[None]).max(-1).min(1)  # each of ours is one of shapely's
            assert (gap <= 1e-9 * max(side, math.ulp(np.abs(pairs.offset[i]).max()))).all()
