"""The corner term by hand on a triangle padded to 8 slots (value and gradient), padded == unpadded,
gradcheck in float64, bad arguments, and the term in :class:`DenseCriterion`'s report."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.criteria.dense import DenseCriterion
from detloss.data.synthetic import random_feats, random_targets
from detloss.functional.polygon_corner import corner_loss

TRIANGLE = [[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]]  # box 4 x 3: diagonal 5
# 8 predicted vertices inside the triangle's box, so the pair's diagonal is 5:
PRED = [
    [0.0, 0.0],  # corner (0, 0), exactly
    [4.0, 0.0],  # corner (4, 0), exactly
    [0.0, 2.0],  # nearest vertex of corner (0, 3): 1 below it; on the edge x = 0
    [2.0, 0.0],  # on the edge y = 0
    [1.0, 0.5],  # inside: 0.5 above y = 0 (1 from x = 0, 1.4 from 3x + 4y = 12)
    [2.0, 0.0],  # a repeat, on the boundary
    [3.0, 0.0],
    [0.0, 1.0],
]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-16)


def padded_triangle(pad: float = math.nan, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor([TRIANGLE + [[pad, pad]] * 5], dtype=dtype)


def test_triangle_padded_to_8_slots_by_hand() -> None:
    """beta = 0.05, distances in units of the diagonal 5. Corners: (0, 3) misses by 1, r = 0.2, Huber
    0.2 - 0.025 = 0.175; mean over the 3 corners 0.175 / 3. Boundary: vertex (1, 0.5) is 0.5 off, r = 0.1,
    Huber 0.075; mean over the 8 vertices 0.075 / 8. Gradients (Huber slope 1 / 5 per unit length):
    vertex 2 towards (0, 3) with weight 1/3, vertex 4 away from (1, 0) with weight 1/8, nothing else."""
    pred = torch.tensor([PRED], dtype=torch.float64, requires_grad=True)
    target = padded_triangle().requires_grad_()
    loss = corner_loss(pred, target, target_valid=torch.tensor([3]))
    assert loss.item() == pytest.approx(0.175 / 3 + 0.075 / 8, rel=1e-12)
    grad_p, grad_t = torch.autograd.grad(loss.sum(), (pred, target))
    expected = torch.zeros(1, 8, 2, dtype=torch.float64)
    # d/dp |g - p| = (p - g) / |p - g| = (0, -1), times 1 / (3 * 5)
    expected[0, 2] = torch.tensor([0.0, -1.0 / 15], dtype=torch.float64)
    expected[0, 4] = torch.tensor([0.0, 1.0 / 40], dtype=torch.float64)  # (0, 1) times 1/(8*5)
    torch.testing.assert_close(grad_p, expected, rtol=1e-12, atol=1e-15)
    # the target gets a gradient too (its corners, edges and size s), none on its padded slots
    assert torch.isfinite(grad_t).all() and (grad_t[0, 3:] == 0).all() and (grad_t[0, :3] != 0).any()


def test_exact_hull_of_surplus_vertices_is_zero() -> None:
    """8 vertices on the triangle's boundary, covering its 3 corners: the convex hull is the triangle,
    and the loss (and its gradient) is 0."""
    on_boundary = [[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 1.0], [4.0, 0.0], [0.0, 2.0], [1.0, 0.0]]
    pred = torch.tensor([on_boundary], dtype=torch.float64, requires_grad=True)
    loss = corner_loss(pred, padded_triangle(0.0), target_valid=torch.tensor([3]))
    assert loss.item() < 1e-30  # 0 up to the rounding of the local frame ((x - 2) / 5, ...)
    (grad,) = torch.autograd.grad(loss.sum(), pred)
    assert grad.abs().max() < 1e-14


@pytest.mark.parametrize("pad", [0.0, -7.5, math.nan])
def test_padded_equals_unpadded(pad: float) -> None:
    """Padding at the end (a count), padding in holes (a mask), with any padded values: the value and
    gradient of the bare triangle, exactly; padded slots get exactly zero gradient."""
    g = torch.Generator().manual_seed(0)
    pred = (torch.rand(1, 8, 2, generator=g, dtype=torch.float64) * 5 - 0.5).requires_grad_()
    bare = torch.tensor([TRIANGLE], dtype=torch.float64, requires_grad=True)
    ref = corner_loss(pred, bare)
    ref_p, ref_t = torch.autograd.grad(ref.sum(), (pred, bare))

    padded = padded_triangle(pad).requires_grad_()
    out = corner_loss(pred, padded, target_valid=torch.tensor([3]))
    gp, gt = torch.autograd.grad(out.sum(), (pred, padded))
    assert out.item() == ref.item()
    assert torch.equal(gp, ref_p) and (gt[0, 3:] == 0).all()
    close(gt[0, :3], ref_t[0])  # the gather's backward adds in another order

    holes = torch.full((1, 8, 2), pad, dtype=torch.float64)
    slots = [1, 4, 6]
    holes[0, slots] = bare.detach()[0]
    holes.requires_grad_()
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, slots] = True
    out = corner_loss(pred, holes, target_valid=mask)
    gp, gt = torch.autograd.grad(out.sum(), (pred, holes))
    assert out.item() == ref.item()
    assert torch.equal(gp, ref_p)
    close(gt[0, slots], ref_t[0])
    assert (gt[0, [0, 2, 3, 5, 7]] == 0).all()

    # padded predictions: the 8 vertices in slots 0..7 of 12, the rest nan
    pred12 = torch.cat([pred.detach(), torch.full((1, 4, 2), math.nan, dtype=torch.float64)], 1).requires_grad_()
    out = corner_loss(pred12, bare.detach(), pred_valid=torch.tensor([8]))
    (gp,) = torch.autograd.grad(out.sum(), pred12)
    assert out.item() == ref.item() and torch.equal(gp[0, :8], ref_p[0]) and (gp[0, 8:] == 0).all()


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(1)
    pred = (torch.rand(4, 8, 2, generator=g, dtype=torch.float64) * 6 - 1).requires_grad_()
    angle = torch.sort(torch.rand(4, 5, generator=g, dtype=torch.float64) * 2 * math.pi, 1).values
    target = (2 + 2 * torch.stack([angle.cos(), angle.sin()], -1)).requires_grad_()
    counts = torch.tensor([3, 4, 5, 5])
    for beta in (0.05, 0.5, 5.0):  # linear, mixed, quadratic Huber regions
        assert torch.autograd.gradcheck(lambda p, t: corner_loss(p, t, target_valid=counts, beta=beta), (pred, target))


def test_scale_and_translation_free() -> None:
    pred = torch.tensor([PRED], dtype=torch.float64)
    target = torch.tensor([TRIANGLE], dtype=torch.float64)
    ref = corner_loss(pred, target)
    for scale, shift in ((1e-3, 0.0), (1e3, 0.0), (1.0, 1e5)):
        torch.testing.assert_close(corner_loss(pred * scale + shift, target * scale + shift), ref, rtol=1e-9, atol=0)


def test_degenerate_pairs() -> None:
    """All points equal: 0. A point target: the mean distance of the vertices to it, twice (corner and
    boundary halves), here in the linear Huber branch. No valid target vertex: 0 (nothing to pull)."""
    same = torch.ones(1, 4, 2)
    assert corner_loss(same, same).item() == 0.0
    pred = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])  # joint box with the point (0, 0): 3 x 4, diagonal 5
    point = torch.zeros(1, 1, 2)
    corner = 3 / 5 - 0.025  # nearest vertex of the point: (3, 0)
    edge = ((3 / 5 - 0.025) + (4 / 5 - 0.025)) / 2
    assert corner_loss(pred, point).item() == pytest.approx(corner + edge, rel=1e-6)
    assert corner_loss(pred, point, target_valid=torch.tensor([0])).item() == 0.0


def test_bad_arguments() -> None:
    tri = torch.tensor([TRIANGLE])
    with pytest.raises(ValueError, match="beta"):
        corner_loss(tri, tri, beta=0.0)
    with pytest.raises(ValueError, match="pred"):
        corner_loss(tri[0], tri)
    with pytest.raises(ValueError, match="target_valid"):
        corner_loss(tri, tri, target_valid=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="corner_beta"):
        DenseCriterion(3, strides=(8,), num_vertices=8, polygon_corner=True, corner_beta=-1.0)


def test_dense_criterion_reports_the_corner_term() -> None:
    """The term has its own name, gain and normalizer; its raw sum is the weighted sum of
    :func:`corner_loss` over the positives; without a polygon branch it does not exist."""
    assert "corner" not in DenseCriterion(3, strides=(8, 16), num_vertices=0, polygon_corner=True).terms
    crit = DenseCriterion(3, strides=(8, 16), reg_max=4, num_vertices=8, polygon_corner=True)
    feats = random_feats(2, crit.num_channels, 64, (8, 16), seed=0)
    targets = random_targets(2, 3, 3, num_vertices=8, seed=0)
    report = crit(feats, targets)
    assert list(report) == ["box", "cls", "dfl", "poly", "corner"]
    term = report["corner"]
    assert term.normalizer_name == "target_sum" and term.weight == 7.5
    t = crit.assign(feats, targets)
    offsets = crit.layout.vertices(crit._split(feats).gather(crit._split(feats).poly, t.image, t.anchor))
    el = corner_loss(t.points[:, None] + offsets, t.polygons, target_valid=t.polygon_valid)
    torch.testing.assert_close(term.raw_sum, (el * t.weight).sum())
    report.total.backward()
    assert all(torch.isfinite(f.grad).all() for f in feats)


def test_doctor_dependencies_of_the_corner_term() -> None:
    """The term depends on all 2K polygon channels of the weighted positives (all K vertices are candidate
    corners): the same elements as MGIoU's ``poly``; with ``polygon_loss="l1"`` more than ``poly``'s
    (which reads only the target's valid vertices)."""
    from detloss.diagnose.dense import dense_dependencies

    feats = random_feats(2, DenseCriterion(3, (8, 16), 4, num_vertices=8).num_channels, 64, (8, 16), seed=0)
    targets = random_targets(2, 3, 3, num_vertices=8, seed=0)
    for loss in ("mgiou", "l1"):
        crit = DenseCriterion(3, (8, 16), 4, num_vertices=8, polygon_loss=loss, polygon_corner=True)
        deps = dense_dependencies(crit, feats, targets)
        poly_channels = [m[:, crit.layout.poly] for m in deps["corner"]]
        assert sum(int(m.sum()) for m in poly_channels) > 0
        assert all(int(m.sum()) == int(m[:, crit.layout.poly].sum()) for m in deps["corner"])  # poly channels only
        for corner, poly in zip(deps["corner"], deps["poly"], strict=True):
            if loss == "mgiou":
                assert torch.equal(corner, poly)
            else:  # a superset, strictly
                assert bool((corner | ~poly).all() and (corner & ~poly).any())
    assert "corner" not in dense_dependencies(DenseCriterion(3, (8, 16), 4, num_vertices=8), feats, targets)
