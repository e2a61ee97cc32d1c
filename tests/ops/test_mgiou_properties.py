"""Property suites for MGIoU over degenerate, tiny, huge and far-from-origin polygons: agreement with a plain
numpy MGIoU, ranges, finite values and gradients, a gradient for every disjoint pair; and the reported
cases (strategies: ``polygon_strategies``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from polygon_strategies import PROPERTY, Pairs, for_shapely, pixel_polygons, polygon_pairs

from detloss.functional.polygon import convexity_penalty, mgiou, mgiou_loss

shapely = pytest.importorskip("shapely")
from shapely.geometry import MultiPoint  # noqa: E402


def flatness(pts: np.ndarray, dtype: torch.dtype) -> str:
    """The documented rule, ``|area| <= 64 * eps * side**2``, with the shoelace area of the vertices as
    given (numpy, float64, about their mean): ``"flat"``, ``"solid"``, or ``"either"`` within a factor 2 of
    the bound, where the rounding of a float32 shoelace may decide either way."""
    info = torch.finfo(dtype)
    side = float(np.ptp(pts, 0).max())
    q = pts - pts.mean(0)
    area = 0.5 * abs(float(np.sum(q[:, 0] * np.roll(q[:, 1], -1) - q[:, 1] * np.roll(q[:, 0], -1))))
    bound = max(64 * info.eps * side * side, info.tiny)
    return "flat" if area <= bound / 2 else "solid" if area >= 2 * bound else "either"


def numpy_mgiou(p: np.ndarray, g: np.ndarray) -> float:
    """MGIoU as the paper defines it for polygons: the mean over the unit normals of every edge of both
    (repeated vertices give no edge) of the 1-D GIoU ``inter / hull`` of the projections."""
    normals = []
    for poly in (p, g):
        e = np.roll(poly, -1, 0) - poly
        e = e[(e != 0).any(1)]
        normals.append(np.stack([-e[:, 1], e[:, 0]], 1) / np.hypot(e[:, 0], e[:, 1])[:, None])
    axes = np.concatenate(normals)
    pp, gg = p @ axes.T, g @ axes.T
    inter = np.minimum(pp.max(0), gg.max(0)) - np.maximum(pp.min(0), gg.min(0))
    hull = np.maximum(pp.max(0), gg.max(0)) - np.minimum(pp.min(0), gg.min(0))
    return float((inter / hull).mean())


def l1(pairs: Pairs, i: int) -> float:
    """The degenerate-target fallback: mean ``|dx| + |dy|`` over the vertices valid in both."""
    va, vb = pairs.vertices(i)
    n = min(len(va), len(vb))
    return float(np.abs(va[:n] - vb[:n]).sum(1).mean())


# ------------------------------------------------------------------------------------- values
@PROPERTY
@given(polygon_pairs(dtypes=(torch.float64,), kinds=("convex", "repeated")))
def test_float64_matches_numpy_mgiou_far_from_the_origin(pairs: Pairs) -> None:
    """At offsets up to 1e6, MGIoU of non-flat pairs is within 1e-9 of the numpy MGIoU of the local
    coordinates; the loss is (1 - MGIoU) / 2, or the L1 fallback for a flat target."""
    value = mgiou(pairs.a, pairs.b, pairs.na, pairs.nb)
    loss = mgiou_loss(pairs.a, pairs.b, pairs.na, pairs.nb)
    for i in range(len(value)):
        la, lb = pairs.local(i)
        if flatness(lb, torch.float64) == "flat":
            assert loss[i].item() == pytest.approx(l1(pairs, i), rel=1e-12)
        elif flatness(la, torch.float64) == flatness(lb, torch.float64) == "solid":
            ref = numpy_mgiou(la, lb)
            assert value[i].item() == pytest.approx(ref, abs=1e-9), (i, pairs.kind_a[i], pairs.kind_b[i])
            assert loss[i].item() == pytest.approx((1 - ref) / 2, abs=1e-9)


# ------------------------------------------------------------------------- finite values and gradients
@PROPERTY
@given(polygon_pairs())
def test_finite_values_gradients_and_a_gradient_for_every_disjoint_pair(pairs: Pairs) -> None:
    """float32 and float64, every kind, offsets up to 1e6, nan padding: MGIoU in [-1, 1], the loss in
    [0, 1] (or the L1 fallback for a flat target), finite values and gradients, none on padding; and a
    non-zero gradient of the loss for every pair whose polygons are apart."""
    dtype = pairs.a.dtype
    for fn in (
        lambda a, b: mgiou(a, b, pairs.na, pairs.nb),
        lambda a, b: mgiou_loss(a, b, pairs.na, pairs.nb),
        lambda a, b: mgiou_loss(a, b, pairs.na, pairs.nb, convexity_weight=0.5, sort_pred=True),
    ):
        a = pairs.a.clone().requires_grad_()
        b = pairs.b.clone().requires_grad_()
        value = fn(a, b)
        assert value.dtype == dtype and torch.isfinite(value).all(), value
        grad_a, grad_b = torch.autograd.grad(value.sum(), (a, b))
        for grad, count in ((grad_a, pairs.na), (grad_b, pairs.nb)):
            assert torch.isfinite(grad).all(), grad
            assert (grad[torch.arange(grad.shape[1]) >= count[:, None]] == 0).all()
    a = pairs.a.clone().requires_grad_()
    value = mgiou(a, pairs.b, pairs.na, pairs.nb)
    assert ((value >= -1) & (value <= 1)).all(), value
    loss = mgiou_loss(a, pairs.b, pairs.na, pairs.nb)
    (grad,) = torch.autograd.grad(loss.sum(), a)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for i in range(len(loss)):
        la, lb = pairs.local(i)
        target = flatness(lb, dtype)
        is_l1 = loss[i].item() == pytest.approx(l1(pairs, i), rel=tol)
        in_range = 0 <= loss[i].item() <= 1
        if target == "flat":
            assert is_l1
        elif target == "solid":
            assert in_range
        else:  # rounding decides
            assert is_l1 or in_range
        side = float(np.ptp(np.concatenate([la, lb]), 0).max())
        hull_a, hull_b = MultiPoint(for_shapely(la)).convex_hull, MultiPoint(for_shapely(lb)).convex_hull
        if hull_a.distance(hull_b) > 1e-6 * side:
            assert grad[i].abs().sum() > 0, (i, pairs.kind_a[i], pairs.kind_b[i])


@PROPERTY
@given(pixel_polygons())
def test_float32_identity_far_from_the_origin(polygons: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """A polygon against itself, from any start vertex in either order: MGIoU 1 +- 1e-5, loss <= 1e-5
    in float32 at any position up to 8192 px; against a shifted copy, the numpy value +- 1e-5."""
    a, b, count = polygons
    assert ((mgiou(a, b, count, count) - 1).abs() <= 1e-5).all()
    assert (mgiou_loss(a, b, count, count) <= 1e-5).all()
    # against a copy shifted by a third of a pixel along (1, 2): the numpy MGIoU of the float32 inputs in
    # float64 (about the first vertex; exact differences), to float32 rounding of the local coordinates
    moved = a + torch.tensor([1 / 3, 2 / 3])
    value = mgiou(a, moved, count, count)
    for i, n in enumerate(count.tolist()):
        pa, pb = a[i, :n].double().numpy(), moved[i, :n].double().numpy()
        assert value[i].item() == pytest.approx(numpy_mgiou(pa - pa[0], pb - pa[0]), abs=1e-5)


# ---------------------------------------------------------------------------------- reported cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_square_far_from_the_origin(dtype: torch.dtype) -> None:
    """A 0.5 px square at (1000.5, 4000.25): float32 gave polygon IoU 0 and loss 0.5 against itself
    reversed (the target was taken as degenerate: its shoelace sum cancelled to 0)."""
    square = torch.tensor([[[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]], dtype=torch.float64)
    a = (square + torch.tensor([1000.5, 4000.25], dtype=torch.float64)).to(dtype)
    assert mgiou(a, a.flip(1)).item() == 1.0
    assert mgiou_loss(a, a.flip(1)).item() == 0.0
    # shifted by a quarter of its side along x: GIoU1D on x 3/5 ([0, .5] vs [.125, .625]: 3/8 over 5/8), 1 on y
    b = a + torch.tensor([0.125, 0.0], dtype=dtype)
    assert mgiou(a, b).item() == pytest.approx((3 / 5 + 1) / 2, abs=1e-6)


@pytest.mark.parametrize("shift", [(0.5, 0.5), (0.0, 0.5), (0.25, 0.0)])
def test_subnormal_vertex_gives_finite_gradients(shift: tuple[float, float]) -> None:
    """A target edge of length 1e-40 (subnormal in float32) has no axis, but its hull length, subnormal
    too, was a denominator: 0 * inf = nan in the gradient although the value was finite."""
    t = torch.tensor([[[0.0, 0.0], [1e-40, 0.0], [1.0, 1.0], [-1.0, 1.0]]])
    p = (t + torch.tensor(shift)).requires_grad_()
    loss = mgiou_loss(p, t)
    loss.backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    if shift == (0.5, 0.5):
        # pred: the triangle (.5, .5), (1.5, 1.5), (-.5, 1.5) (its first two vertices coincide in float32);
        # target: the triangle (0, 0), (1, 1), (-1, 1). Axes: the normals of the three edges of each, every
        # direction twice. On (-1, 1): pred [0, 2], target [0, 2]: GIoU1D 1; on (1, 1): pred [1, 3], target
        # [0, 2]: 1/3; on (0, 1): pred [.5, 1.5], target [0, 1]: 1/3. Loss (1 - 5/9) / 2.
        assert loss.item() == pytest.approx((1 - 5 / 9) / 2, abs=1e-6)


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e-20), (torch.float64, 1e-160)])
def test_convexity_penalty_of_a_subnormal_polygon_is_zero_with_finite_gradient(dtype, scale) -> None:
    """A dart whose squared edges are subnormal has no edge above ``finfo.tiny`` (documented: penalty 0);
    dividing by its subnormal mean squared edge gave inf and nan gradients."""
    dart = (torch.tensor([[[0.0, 0.0], [2.0, 1.0], [4.0, 0.0], [2.0, 4.0]]], dtype=dtype) * scale).requires_grad_()
    penalty = convexity_penalty(dart)
    penalty.sum().backward()
    assert penalty.item() == 0.0
    assert torch.isfinite(dart.grad).all()
