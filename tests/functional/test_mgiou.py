"""MGIoU / MGIoU+ for polygons: values, gradients through padding (report 001), degenerate inputs, speed of learning."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.functional.polygon import convexity_penalty, mgiou, mgiou_loss, sort_by_angle
from detloss.ops import polygon_iou, signed_polygon_area

SETTINGS = settings(max_examples=60, deadline=None)


def rotation(theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def random_convex(n: int, k: int, g: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(n, k, 2)`` convex polygons, counter-clockwise (y up): sorted angles on a random ellipse."""
    angle = torch.rand(n, k, generator=g, dtype=dtype).mul(2 * math.pi).sort(1).values
    pts = torch.stack([angle.cos(), angle.sin()], -1) * (0.3 + 1.7 * torch.rand(n, 1, 2, generator=g, dtype=dtype))
    theta = torch.rand(n, generator=g, dtype=dtype) * math.pi
    return pts @ rotation(theta).transpose(1, 2) + torch.rand(n, 1, 2, generator=g, dtype=dtype) * 2 - 1


@st.composite
def convex_polygon(draw: st.DrawFn, scale: float | None = None) -> torch.Tensor:
    """A convex polygon ``(k, 2)``, 3 <= k <= 8, float64, counter-clockwise, angles >= 0.07 rad apart."""
    k = draw(st.integers(3, 8))
    gaps = torch.tensor(draw(st.lists(st.floats(0.1, 1.0), min_size=k, max_size=k)), dtype=torch.float64)
    angle = draw(st.floats(0.0, 2 * math.pi)) + (gaps.cumsum(0) - gaps[0]) * (2 * math.pi / gaps.sum())
    radii = torch.tensor([draw(st.floats(0.2, 3.0)), draw(st.floats(0.2, 3.0))], dtype=torch.float64)
    theta = torch.tensor(draw(st.floats(0.0, math.pi)), dtype=torch.float64)
    centre = torch.tensor([draw(st.floats(-3, 3)), draw(st.floats(-3, 3))], dtype=torch.float64)
    pts = (torch.stack([angle.cos(), angle.sin()], -1) * radii) @ rotation(theta).T + centre
    s = scale if scale is not None else draw(st.sampled_from([1e-4, 1.0, 1e4]))
    return pts * s


def pad(poly: torch.Tensor, k: int = 8, value: float = 0.0) -> torch.Tensor:
    """Pad ``(n, m, 2)`` to ``(n, k, 2)`` at the end."""
    return torch.cat([poly, poly.new_full((poly.shape[0], k - poly.shape[1], 2), value)], dim=1)


# ------------------------------------------------------------------------- values and conventions
def test_axis_aligned_rectangles_by_hand() -> None:
    """MGIoU2D of [0,2]x[0,1] and [1,3]x[0,2]: GIoU1D 1/3 along x, 1/2 along y, mean 5/12."""
    a = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [3.0, 2.0], [1.0, 2.0]]], dtype=torch.float64)
    assert mgiou(a, b, eps=0.0).item() == pytest.approx(5 / 12, abs=1e-15)
    assert mgiou_loss(a, b, eps=0.0).item() == pytest.approx((1 - 5 / 12) / 2, abs=1e-15)
    # disjoint along x by a gap of 1, hull 5 -> GIoU1D = -1/5; along y identical -> 1
    c = a + torch.tensor([3.0, 0.0], dtype=torch.float64)
    assert mgiou(a, c, eps=0.0).item() == pytest.approx((-1 / 5 + 1) / 2, abs=1e-15)


def _paper_mgiou2d(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MGIoU2D as in the paper for rectangles: 2 normals per rectangle (edges 0-1 and 0-3), 4 axes."""

    def normals(r: torch.Tensor) -> torch.Tensor:
        e = torch.stack([r[:, 1] - r[:, 0], r[:, 3] - r[:, 0]], 1)
        return torch.stack([-e[..., 1], e[..., 0]], -1) / e.norm(dim=-1, keepdim=True)

    axes = torch.cat([normals(a), normals(b)], 1)  # (N, 4, 2)
    pa, pb = a @ axes.transpose(1, 2), b @ axes.transpose(1, 2)  # (N, 4 vertices, 4 axes)
    inter = torch.minimum(pa.amax(1), pb.amax(1)) - torch.maximum(pa.amin(1), pb.amin(1))
    hull = torch.maximum(pa.amax(1), pb.amax(1)) - torch.minimum(pa.amin(1), pb.amin(1))
    return (inter / hull).mean(1)


def test_rotated_rectangles_equal_paper_mgiou2d() -> None:
    """Each rectangle gives 4 edge normals = 2 directions twice each, so the mean is the paper's."""
    g = torch.Generator().manual_seed(0)
    n = 200
    unit = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)

    def rects() -> torch.Tensor:
        wh = 0.2 + 2 * torch.rand(n, 1, 2, generator=g, dtype=torch.float64)
        theta = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
        return (unit * wh) @ rotation(theta).transpose(1, 2) + torch.rand(n, 1, 2, generator=g, dtype=torch.float64)

    a, b = rects(), rects()
    torch.testing.assert_close(mgiou(a, b, eps=0.0), _paper_mgiou2d(a, b), rtol=0, atol=1e-12)


def test_counts_masks_and_holes_agree() -> None:
    g = torch.Generator().manual_seed(1)
    p, t = random_convex(16, 8, g), random_convex(16, 6, g)
    count = torch.randint(3, 9, (16,), generator=g)
    mask = torch.arange(8) < count[:, None]
    by_count = mgiou(p, t, count, None)
    torch.testing.assert_close(mgiou(p, t, mask, None), by_count, rtol=0, atol=0)
    torch.testing.assert_close(mgiou(p, t, mask.int(), torch.ones(16, 6)), by_count, rtol=0, atol=0)
    # a polygon with holes in its mask is the compacted polygon
    holes = torch.zeros(16, 16, 2, dtype=torch.float64)
    holes[:, ::2] = p
    hole_mask = torch.zeros(16, 16, dtype=torch.bool)
    hole_mask[:, ::2] = mask
    torch.testing.assert_close(mgiou(holes, t, hole_mask), by_count, rtol=0, atol=1e-15)
    # different vertex counts of pred and target; float32 in, float32 out
    out = mgiou(p.float(), t.float(), count)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), by_count, rtol=0, atol=1e-5)


def test_eps_is_added_to_the_hull_length_only() -> None:
    a = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    b = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [3.0, 2.0], [1.0, 2.0]]], dtype=torch.float64)
    # x: inter 1, hull 3; y: inter 1, hull 2 (unit axes when eps > 0)
    assert mgiou(a, b, eps=0.5).item() == pytest.approx((1 / 3.5 + 1 / 2.5) / 2, abs=1e-15)
    g = torch.Generator().manual_seed(6)
    p = random_convex(4, 5, g).requires_grad_()
    t = random_convex(4, 5, g)
    assert torch.autograd.gradcheck(lambda x: mgiou(x, t, eps=1e-3), (p,))


def test_dense_support_matches_the_cpu_loop() -> None:
    """The dense (N, A, K) path used off-CPU finds the same extremes and vertices as the CPU loop."""
    from detloss.functional import polygon as impl

    g = torch.Generator().manual_seed(7)
    px, py = torch.randn(300, 7, generator=g), torch.randn(300, 7, generator=g)
    gx, gy = torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g)
    ax, ay = torch.randn(300, 11, generator=g), torch.randn(300, 11, generator=g)
    for loop, dense in zip(
        impl._support(px, py, gx, gy, ax, ay), impl._support_dense(px, py, gx, gy, ax, ay), strict=True
    ):
        torch.testing.assert_close(loop, dense, rtol=0, atol=0)


def test_float32_under_autocast() -> None:
    g = torch.Generator().manual_seed(2)
    p, t = random_convex(8, 5, g, torch.float32), random_convex(8, 5, g, torch.float32)
    ref = mgiou_loss(p, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mgiou_loss(p.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-2)  # only the bfloat16 inputs are rounded


# -------------------------------------------------------------------------------- gradients
def test_gradcheck_mgiou() -> None:
    g = torch.Generator().manual_seed(3)
    p = random_convex(5, 6, g).requires_grad_()
    t = (random_convex(5, 4, g) * 0.7).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mgiou(a, b), (p, t))
    count = torch.tensor([6, 5, 4, 3, 6])
    assert torch.autograd.gradcheck(lambda a, b: mgiou(a, b, count, None), (p, t))
    t6 = random_convex(5, 6, g).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mgiou_loss(a, b, convexity_weight=0.3), (p, t6))
    wobbly = torch.randn(4, 5, 2, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(convexity_penalty, (wobbly,))


@pytest.mark.parametrize("pad_value", [0.0, 1e3, math.nan])
def test_padded_triangle_has_the_gradient_of_the_bare_triangle(pad_value: float) -> None:
    """Report 001: padding must neither add nor remove gradient. Pads get exactly zero."""
    g = torch.Generator().manual_seed(4)
    tri, target_tri, target_pent = random_convex(6, 3, g), random_convex(6, 3, g), random_convex(6, 5, g)
    three = torch.full((6,), 3)
    cases = [  # (value of the bare triangle, value of the triangle padded to 8 with count 3)
        (lambda p: mgiou(p, target_pent), lambda p: mgiou(p, target_pent, three)),
        (lambda p: mgiou_loss(p, target_tri), lambda p: mgiou_loss(p, pad(target_tri), three, three)),
        (
            lambda p: mgiou_loss(p, target_tri, convexity_weight=0.5, sort_pred=True),
            lambda p: mgiou_loss(p, pad(target_tri), three, three, convexity_weight=0.5, sort_pred=True),
        ),
    ]
    for bare_fn, padded_fn in cases:
        bare = tri.clone().requires_grad_()
        padded = pad(tri, 8, pad_value).requires_grad_()
        v_bare, v_pad = bare_fn(bare), padded_fn(padded)
        torch.testing.assert_close(v_pad, v_bare, rtol=0, atol=1e-14)
        (g_bare,) = torch.autograd.grad(v_bare.sum(), bare)
        (g_pad,) = torch.autograd.grad(v_pad.sum(), padded)
        torch.testing.assert_close(g_pad[:, :3], g_bare, rtol=0, atol=1e-14)
        assert (g_pad[:, 3:] == 0).all()
        assert (g_bare.abs().sum((1, 2)) > 0).all()


# ---------------------------------------------------------------------------------- hypothesis
@SETTINGS
@given(convex_polygon(scale=1.0), convex_polygon(scale=1.0))
def test_range_and_symmetry(a: torch.Tensor, b: torch.Tensor) -> None:
    k = max(len(a), len(b))
    pa, pb = pad(a[None], k), pad(b[None], k)
    ca, cb = torch.tensor([len(a)]), torch.tensor([len(b)])
    v = mgiou(pa, pb, ca, cb)
    assert -1.0 <= v.item() <= 1.0
    torch.testing.assert_close(v, mgiou(pb, pa, cb, ca), rtol=0, atol=1e-12)


@SETTINGS
@given(convex_polygon(), st.integers(0, 7), st.booleans())
def test_identical_polygons_give_one(a: torch.Tensor, shift: int, reverse: bool) -> None:
    """1 for identical polygons whatever the start vertex and the orientation, at any scale."""
    b = a.roll(shift % len(a), 0)
    if reverse:
        b = b.flip(0)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        v = mgiou(a[None].to(dtype), b[None].to(dtype))
        assert v.item() == pytest.approx(1.0, abs=tol)
        assert mgiou_loss(a[None].to(dtype), b[None].to(dtype)).item() == pytest.approx(0.0, abs=tol)


@st.composite
def awkward_polygon(draw: st.DrawFn) -> torch.Tensor:
    """Convex, collinear, repeated-vertex, single-point polygons, tiny to huge, as ``(8, 2)`` float32."""
    kind = draw(st.sampled_from(["convex", "collinear", "repeated", "point"]))
    scale = draw(st.sampled_from([1e-4, 1.0, 1e4]))
    base = draw(convex_polygon(scale=scale))
    if kind == "collinear":
        t = torch.tensor(draw(st.lists(st.floats(-1, 1), min_size=4, max_size=8)), dtype=torch.float64)
        base = base[0] + t[:, None] * (base[1] - base[0])
    elif kind == "repeated":
        idx = torch.tensor(sorted(draw(st.lists(st.integers(0, len(base) - 1), min_size=4, max_size=8))))
        base = base[idx]
    elif kind == "point":
        base = base[:1].repeat(draw(st.integers(1, 8)), 1)
    return pad(base[None], 8, value=draw(st.sampled_from([0.0, 5.0]))).float()[0], len(base)


@SETTINGS
@given(awkward_polygon(), awkward_polygon(), st.floats(0.0, 1.0))
def test_finite_values_and_gradients_on_degenerate_input(pa, pb, convexity_weight) -> None:
    (a, na), (b, nb) = pa, pb
    a = a[None].clone().requires_grad_()
    count_a, count_b = torch.tensor([na]), torch.tensor([nb])
    for out in (
        mgiou(a, b[None], count_a, count_b),
        mgiou_loss(a, b[None], count_a, count_b, convexity_weight=convexity_weight),
        mgiou_loss(a, b[None], count_a, count_b, sort_pred=True),
    ):
        assert torch.isfinite(out).all()
        (grad,) = torch.autograd.grad(out.sum(), a)
        assert torch.isfinite(grad).all()
        assert (grad[0, na:] == 0).all()
    assert -1.0 <= mgiou(a, b[None], count_a, count_b).item() <= 1.0


# ------------------------------------------------------------------------- agreement with IoU
def test_rank_correlation_with_exact_iou() -> None:
    """Spearman(MGIoU, IoU) >= 0.9 over overlapping pairs: a convex 3..8-gon and a similar copy of it
    (rotated by up to 0.15 rad, scaled 0.7..1.3, shifted by up to half its size)."""
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    n, k = 2000, 8

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    angle = u(n, k).mul(2 * math.pi).sort(1).values
    size = 0.5 + 2 * u(n, 1, 1)
    target = (
        (torch.stack([angle.cos(), angle.sin()], -1) * (0.5 + 0.5 * u(n, 1, 2)))
        @ rotation(u(n) * math.pi).transpose(1, 2)
        * size
    )
    count = torch.randint(3, k + 1, (n,), generator=g)
    pred = target @ rotation((u(n) - 0.5) * 0.3).transpose(1, 2) * (0.7 + 0.6 * u(n, 1, 1))
    pred = pred + (u(n, 1, 2) - 0.5) * size
    iou = polygon_iou(pred, target, count, count)
    value = mgiou(pred, target, count, count)
    overlap = iou > 0
    assert overlap.sum() > 1000
    rho = stats.spearmanr(value[overlap].numpy(), iou[overlap].numpy()).statistic
    assert rho >= 0.9


# ------------------------------------------------------------------------------ optimisation
def _report_001_masked_mgiou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The loss of report 001 after its "NaN fixes", on polygons zero-padded to ``K`` vertices.

    Computed over all ``K`` slots as if every vertex were real: the axes come from all ``K`` cyclic
    edges (so the closing edge is replaced by last-vertex -> padding -> first-vertex), the projections'
    min/max include the padding vertices, ``nan_to_num`` is applied to every intermediate, the 1-D
    GIoU is clamped to [-1, 1], and the mean is the masked mean of the report (line 503), with the mask
    from line 611 (edge length > eps) multiplied in after the NaN-prone values were computed. Normals
    divide by ``length.clamp(min=eps)`` and the GIoU by ``hull.clamp(min=eps)``: without those two the
    zero-length padding edges send ``nan`` into the real vertices' gradients (0 * nan), and the
    report says its training was stable.
    """

    def axes(poly: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        edges = poly.roll(-1, 1) - poly
        length = edges.norm(dim=-1)
        normals = torch.stack([-edges[..., 1], edges[..., 0]], -1) / length.clamp(min=eps)[..., None]
        return torch.nan_to_num(normals, nan=0.0, posinf=1e6, neginf=-1e6), length > eps

    axes_p, mask_p = axes(pred)
    axes_t, mask_t = axes(target)
    ax, mask = torch.cat([axes_p, axes_t], 1), torch.cat([mask_p, mask_t], 1)
    proj1 = torch.nan_to_num(pred @ ax.transpose(1, 2), nan=0.0, posinf=1e6, neginf=-1e6)
    proj2 = torch.nan_to_num(target @ ax.transpose(1, 2), nan=0.0, posinf=1e6, neginf=-1e6)
    min1, max1 = proj1.min(1).values, proj1.max(1).values
    min2, max2 = proj2.min(1).values, proj2.max(1).values
    inter = torch.nan_to_num(torch.minimum(max1, max2) - torch.maximum(min1, min2), nan=0.0, posinf=1e6, neginf=0)
    hull = torch.nan_to_num(torch.maximum(max1, max2) - torch.minimum(min1, min2), nan=eps, posinf=1e6, neginf=eps)
    giou1d = torch.nan_to_num(inter / hull.clamp(min=eps), nan=0.0, posinf=1.0, neginf=0.0).clamp(-1.0, 1.0)
    giou1d_masked = giou1d * mask.to(giou1d.dtype)
    num_valid = mask.sum(dim=1, keepdim=True).clamp(min=1)
    return (1.0 - giou1d_masked.sum(dim=1) / num_valid.squeeze(1)) / 2


def _descend(loss_fn, init: torch.Tensor, target: torch.Tensor, steps: int = 200) -> list[torch.Tensor]:
    """Adam(lr=0.05) on the vertices; the exact IoU of every pair after each step."""
    quad = init.clone().requires_grad_()
    opt = torch.optim.Adam([quad], lr=0.05)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(quad).sum().backward()
        opt.step()
        history.append(polygon_iou(quad.detach(), target))
    return history


def test_descent_reaches_iou_and_report_001_variant_is_slower() -> None:
    """From 8 random quadrilaterals (fixed seed) near one target: MGIoU on the quads padded to 8
    vertices (count 4) reaches IoU >= 0.9 for every start within 200 steps, with exactly the updates of
    the unpadded quads; the report-001 masked mean on the same padded quads, same optimizer, same
    starts, ends lower and mostly never gets there."""
    target1 = torch.tensor([[2.0, 1.0], [4.5, 1.5], [4.0, 3.5], [2.5, 3.0]])
    n = 8
    g = torch.Generator().manual_seed(0)
    theta = (torch.rand(n, generator=g) - 0.5) * 0.8
    centre = target1.mean(0)
    init = (target1 - centre) @ rotation(theta).transpose(1, 2) * (0.6 + 0.8 * torch.rand(n, 1, 1, generator=g))
    init = init + centre + (torch.rand(n, 1, 2, generator=g) - 0.5) * 2.5
    init = init + (torch.rand(n, 4, 2, generator=g) - 0.5) * 0.5
    target = target1.expand(n, 4, 2)
    count = torch.full((n,), 4)

    ours = _descend(lambda q: mgiou_loss(pad(q), pad(target), count, count), init, target)
    bare = _descend(lambda q: mgiou_loss(q, target), init, target)
    buggy = _descend(lambda q: _report_001_masked_mgiou_loss(pad(q), pad(target)), init, target)

    def steps_to(history: list[torch.Tensor], level: float = 0.9) -> torch.Tensor:
        reached = torch.stack(history) >= level  # (steps, n)
        first = reached.float().argmax(0) + 1
        return torch.where(reached.any(0), first, len(history) + 1)

    assert polygon_iou(init, target).max() < 0.6
    torch.testing.assert_close(torch.stack(ours), torch.stack(bare), rtol=0, atol=1e-6)  # padding is free
    ours_steps, buggy_steps = steps_to(ours), steps_to(buggy)
    assert (ours_steps <= 200).all(), ours_steps
    assert (buggy_steps >= ours_steps).all(), (ours_steps, buggy_steps)
    assert (buggy_steps > 200).sum() >= n // 2, buggy_steps
    assert buggy[-1].mean() < ours[-1].mean() - 0.1, (buggy[-1], ours[-1])


# --------------------------------------------------------------------- degenerate target, MGIoU+
def test_degenerate_target_falls_back_to_l1_by_hand() -> None:
    pred = torch.tensor(
        [
            [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
            [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
            [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
        ]
    )
    target = torch.tensor(
        [
            [[2.0, 2.0], [2.0, 2.0], [2.0, 2.0], [2.0, 2.0]],  # a point
            [[0.0, 0.0], [1.0, 1.0], [3.0, 3.0], [9.0, 9.0]],  # collinear (3 valid vertices)
            [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],  # a real square: MGIoU
        ]
    )
    loss = mgiou_loss(pred, target, None, torch.tensor([4, 3, 4]))
    # row 0: L1 |dx| + |dy| per vertex = 4, 3, 2, 3 -> mean 3
    # row 1: first 3 vertices: 0, 1, 4 -> mean 5/3 (the 4th vertex is padding in the target)
    torch.testing.assert_close(loss, torch.tensor([3.0, 5 / 3, 0.0]), rtol=0, atol=1e-6)


def test_convexity_penalty_and_sorting() -> None:
    square = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]]])
    dart = torch.tensor([[[0.0, 0.0], [2.0, 1.0], [4.0, 0.0], [2.0, 4.0]]])
    assert convexity_penalty(square).item() == 0.0
    assert convexity_penalty(square.flip(1)).item() == 0.0  # orientation-agnostic
    assert convexity_penalty(dart).item() > 0
    torch.testing.assert_close(convexity_penalty(dart * 1e3), convexity_penalty(dart))  # scale-invariant
    torch.testing.assert_close(convexity_penalty(dart.flip(1)), convexity_penalty(dart))
    assert convexity_penalty(torch.ones(1, 4, 2)).item() == 0.0  # all vertices equal
    with_weight = mgiou_loss(dart, square, convexity_weight=2.0)
    torch.testing.assert_close(with_weight, mgiou_loss(dart, square) + 2.0 * convexity_penalty(dart))
    with pytest.raises(ValueError, match="convexity_weight"):
        mgiou_loss(dart, square, convexity_weight=-1.0)

    # sort_by_angle: shuffled convex vertices come back counter-clockwise, padding stays at the end
    g = torch.Generator().manual_seed(5)
    poly = random_convex(10, 6, g)
    shuffled = poly[:, torch.randperm(6, generator=g)]
    padded = pad(shuffled, 8, value=math.nan)
    out = sort_by_angle(padded, torch.full((10,), 6))
    assert out[:, 6:].isnan().all()
    assert (signed_polygon_area(out[:, :6]) > 0).all()
    torch.testing.assert_close(out[:, :6].sort(1).values, poly.sort(1).values)
    # sort_pred makes the loss independent of the predicted vertex order
    target = random_convex(10, 6, g)
    torch.testing.assert_close(
        mgiou_loss(shuffled, target, sort_pred=True), mgiou_loss(poly, target), rtol=0, atol=1e-12
    )


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_names_the_argument() -> None:
    ok = torch.zeros(2, 4, 2)
    with pytest.raises(ValueError, match="^pred "):
        mgiou(torch.zeros(2, 4), ok)
    with pytest.raises(ValueError, match="^target "):
        mgiou(ok, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="target"):
        mgiou(ok, torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="target"):
        mgiou_loss(ok, torch.zeros(2, 5, 2))  # the L1 fallback pairs vertices: same K
    with pytest.raises(ValueError, match="pred_valid"):
        mgiou(ok, ok, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="target_valid"):
        mgiou_loss(ok, ok, None, torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match="pred"):
        mgiou(ok.long(), ok)
    with pytest.raises(ValueError, match="poly"):
        sort_by_angle(torch.zeros(4, 2))
