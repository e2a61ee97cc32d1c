"""Exact convex polygon geometry: area, IoU, GIoU (hand-worked cases, shapely, gradcheck, padding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from shapely.geometry import MultiPoint

from detloss.ops import (
    next_valid_index,
    polygon_area,
    polygon_giou,
    polygon_iou,
    prev_valid_index,
    signed_polygon_area,
    vertex_mask,
)


def _t(*polys: list[list[float]], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(polys, dtype=dtype)


UNIT = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]


def square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]]


def random_convex(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, k, 2)`` convex polygons, counter-clockwise: sorted angles on a random ellipse."""
    angle = np.sort(rng.uniform(0.0, 2 * math.pi, (n, k)), axis=1)
    pts = np.stack([np.cos(angle), np.sin(angle)], -1) * rng.uniform(0.3, 2.0, (n, 1, 2))
    theta = rng.uniform(0.0, math.pi, n)
    rot = np.stack([np.stack([np.cos(theta), -np.sin(theta)], -1), np.stack([np.sin(theta), np.cos(theta)], -1)], -2)
    return pts @ rot.transpose(0, 2, 1) + rng.uniform(-1.0, 1.0, (n, 1, 2))


# ------------------------------------------------------------------------------------------ area
def test_area_hand_cases() -> None:
    polys = _t(square(0, 0, 2), [[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [0.0, 3.0]], [[1, 1], [3, 1], [2, 1], [0, 5]])
    # square 4; right triangle 6 (repeated vertex is harmless); a degenerate (collinear) polygon 0
    # in the third row only the first 3 vertices are valid
    area = polygon_area(polys, torch.tensor([4, 4, 3]))
    torch.testing.assert_close(area, torch.tensor([4.0, 6.0, 0.0], dtype=torch.float64))


def test_signed_area_convention() -> None:
    """Positive = counter-clockwise with y up (clockwise as drawn in a y-down image)."""
    ccw = _t(UNIT)
    assert signed_polygon_area(ccw).item() == 1.0
    assert signed_polygon_area(ccw.flip(1)).item() == -1.0
    assert polygon_area(ccw.flip(1)).item() == 1.0


def test_area_skips_invalid_vertices_anywhere() -> None:
    """A mask with holes means the compacted polygon; padded values (even nan) do not matter."""
    poly = _t([[0, 0], [math.nan, 7], [2, 0], [2, 2], [math.inf, 1], [0, 2]])
    mask = torch.tensor([[True, False, True, True, False, True]])
    assert polygon_area(poly, mask).item() == 4.0


def test_next_prev_valid_index() -> None:
    mask = torch.tensor([[True, False, True, True, False], [False, False, False, False, False]])
    assert next_valid_index(mask).tolist() == [[2, 2, 3, 0, 0], [0, 1, 2, 3, 4]]
    assert prev_valid_index(mask).tolist() == [[3, 0, 0, 2, 3], [0, 1, 2, 3, 4]]


def test_vertex_mask_forms() -> None:
    poly = torch.zeros(2, 3, 2)
    assert vertex_mask("v", None, poly).all()
    assert vertex_mask("v", torch.tensor([1, 3]), poly).tolist() == [[True, False, False], [True, True, True]]
    assert vertex_mask("v", torch.tensor([[1, 0, 1], [0, 1, 1]]), poly).tolist() == [
        [True, False, True],
        [False, True, True],
    ]
    with pytest.raises(ValueError, match="v"):
        vertex_mask("v", torch.tensor([1.0, 3.0]), poly)  # a count must be an integer
    with pytest.raises(ValueError, match="v"):
        vertex_mask("v", torch.ones(2, 4, dtype=torch.bool), poly)
    with pytest.raises(ValueError, match="v"):
        vertex_mask("v", [3, 3], poly)


# ------------------------------------------------------------------------------------------- IoU
@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (square(0, 0, 2), square(1, 1, 2), 1 / 7),  # overlap 1, union 7
        (square(0, 0, 2), square(0, 0, 2), 1.0),  # identical
        (square(0, 0, 2), square(2, 0, 2)[::-1], 0.0),  # touching along an edge, other orientation
        (square(0, 0, 2), square(2, 2, 1), 0.0),  # touching at a corner
        (square(0, 0, 1), square(3, 3, 1), 0.0),  # disjoint
        (square(0, 0, 4), [[1.0, 1.0], [3.0, 1.0], [2.0, 3.0], [2.0, 3.0]], 2 / 16),  # triangle inside
        (square(0, 0, 4), square(1, 1, 2)[::-1], 4 / 16),  # nested, opposite orientations
        (square(0, 0, 2), [[1.0, -1.0], [3.0, 1.0], [1.0, 3.0], [-1.0, 1.0]], 4 / 8),  # square vs diamond
    ],
)
def test_iou_hand_cases(a: list, b: list, expected: float) -> None:
    iou = polygon_iou(_t(a), _t(b))
    assert iou.item() == pytest.approx(expected, abs=1e-12)
    assert polygon_iou(_t(b), _t(a)).item() == pytest.approx(expected, abs=1e-12)
    assert polygon_iou(_t(a, dtype=torch.float32), _t(b, dtype=torch.float32)).item() == pytest.approx(
        expected, abs=1e-6
    )


def test_iou_of_degenerate_polygons_is_zero_unless_the_same_point_set() -> None:
    point, other_point = _t([[1.0, 1.0]] * 4), _t([[1.0, 2.0]] * 4)
    segment = _t([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 0.0]])
    same_segment = _t([[2.0, 2.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # other order, a repeat
    cross = _t([[0.0, 2.0], [2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # crosses segment at (1, 1)
    line = _t(
        [
            [1.7860617520075095, 4.239116971213805],
            [3.511076243939284, 8.333341709030707],
            [5.813409198075745, 13.797799300317648],
            [2.8823589213615017, 6.841116555426738],
        ]
    )
    other_line = _t(
        [
            [1.5489247369528125, 4.305437284289687],
            [1.5411846605260904, 4.283922737561988],
            [0.5533442283894596, 1.5380920809886105],
            [0.7527648468575776, 2.092407565482613],
        ]
    )
    for a, b, iou, giou in [
        (point, point, 1.0, 1.0),  # a set with itself: IoU 1; its hull is flat, GIoU = IoU
        (segment, same_segment, 1.0, 1.0),
        (point, other_point, 0.0, 0.0),  # flat hull: GIoU = IoU
        (segment, _t(UNIT), 0.0, -0.5),  # hull (0,0) (1,0) (2,2) (0,1): area 2, union 1
        (segment, cross, 0.0, -1.0),  # union 0, hull the square [0, 2]^2: GIoU = 0 - (4 - 0) / 4
        # points (x, k x) rounded: collinear up to rounding, so their shoelace sums, the clipped area and
        # the hull area are noise (clipped / union gave 0.32; the hull 1.1e-16, so GIoU -1): zero area
        (line, line[:, [0, 2, 1, 3]], 1.0, 1.0),
        (other_line[:, [0, 1, 1]], other_line[:, [2, 3, 3]], 0.0, 0.0),  # two pieces of one line
    ]:
        for x, y in ((a, b), (b, a)):
            assert polygon_iou(x, y).item() == iou
            assert polygon_giou(x, y).item() == pytest.approx(giou, abs=1e-15)


#: a pentagon of radius 1e-3 around (1, 0) stored as a 7-gon with two repeated vertices
SMALL_7GON = [
    [1.000999257716433, 3.8522930173500475e-05],
    [1.0006200900721618, 0.0007845306255376599],
    [1.0006200900721618, 0.0007845306255376599],
    [0.9994659324846635, 0.0008454418306792507],
    [0.9994625431129196, 0.0008432912275897604],
    [0.9990002387777194, 2.1851737320063804e-05],
    [0.9990002387777194, 2.1851737320063804e-05],
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_small_polygon_against_a_degenerate_one(dtype: torch.dtype) -> None:
    """SMALL_7GON against 7 copies of the origin gave IoU 1.8e14 in float64 (8.3e4 in float32 for such
    polygons): clipping by zero-length edges kept all of it and the union was rounding noise."""
    a, zero = _t(SMALL_7GON, dtype=dtype), torch.zeros(1, 7, 2, dtype=dtype)
    assert polygon_iou(a, zero).item() == 0.0
    assert polygon_iou(zero, a).item() == 0.0
    # GIoU = -(C - U) / C with U the polygon and C its hull with the origin
    pts = a[0].double().numpy()
    union = MultiPoint(pts).convex_hull.area
    hull = MultiPoint(np.concatenate([pts, [[0.0, 0.0]]])).convex_hull.area
    assert polygon_giou(a, zero).item() == pytest.approx(-(hull - union) / hull, rel=1e-5)


def test_clip_through_a_subnormal_crossing_has_finite_gradients() -> None:
    """Edge (0, 1e-40) -> (1, -1e-40) crosses the clip line y = 0 with a subnormal denominator (float32):
    t = dist / (dist - dist_j) had an infinite derivative, giving inf and nan gradients."""
    b = torch.tensor([[[-2.0, 0.0], [2.0, 0.0], [2.0, 2.0], [-2.0, 2.0]]])
    # above the line: a sliver of area ~1e-40; symmetric about the origin, so no shift absorbs the 1e-40
    a = torch.tensor([[[0.0, 1e-40], [0.5, -2.0], [1.0, -1e-40]]], requires_grad=True)
    iou = polygon_iou(a, b)
    iou.backward()
    assert 0 <= iou.item() < 1e-30
    assert torch.isfinite(a.grad).all()
    # the same crossing with the triangle above the line: inside the 4 x 2 box (area 1/2 of 8)
    a = torch.tensor([[[0.0, 1e-40], [1.0, -1e-40], [0.5, 1.0]]], requires_grad=True)
    iou = polygon_iou(a, b)
    iou.backward()
    assert iou.item() == pytest.approx(0.5 / 8, rel=1e-6)
    assert torch.isfinite(a.grad).all()


def test_iou_and_giou_against_shapely() -> None:
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import MultiPoint, Polygon

    rng = np.random.default_rng(0)
    a, b = random_convex(300, 8, rng), random_convex(300, 5, rng)
    b[::2] = b[::2, ::-1]  # either orientation
    ref_iou, ref_giou = [], []
    for pa, pb in zip(a, b, strict=True):
        sa, sb = Polygon(pa), Polygon(pb)
        inter, union = sa.intersection(sb).area, sa.union(sb).area
        hull = MultiPoint(np.concatenate([pa, pb])).convex_hull.area
        ref_iou.append(inter / union)
        ref_giou.append(inter / union - (hull - union) / hull)
    assert shapely.__version__  # imported for real
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    np.testing.assert_allclose(polygon_iou(ta, tb).numpy(), ref_iou, atol=1e-10)
    np.testing.assert_allclose(polygon_giou(ta, tb).numpy(), ref_giou, atol=1e-10)
    # float32: exact up to rounding
    np.testing.assert_allclose(polygon_iou(ta.float(), tb.float()).numpy(), ref_iou, atol=1e-5)
    np.testing.assert_allclose(polygon_giou(ta.float(), tb.float()).numpy(), ref_giou, atol=1e-5)
    assert 0.3 < np.mean(np.array(ref_iou) > 0) < 1  # overlapping and disjoint pairs both tested


def test_giou_hand_cases_and_hull_with_collinear_points() -> None:
    # two unit squares one apart: hull 3 x 1, union 2 -> GIoU = -1/3
    assert polygon_giou(_t(UNIT), _t(square(2, 0, 1))).item() == pytest.approx(-1 / 3, abs=1e-12)
    # squares sharing an edge: hull = union (collinear hull points), GIoU = IoU = 0
    assert polygon_giou(_t(UNIT), _t(square(1, 0, 1))).item() == pytest.approx(0.0, abs=1e-12)
    # duplicated and collinear vertices in both inputs
    a = _t([[0, 0], [0.5, 0], [1, 0], [1, 0], [1, 1], [0, 1]])
    b = _t([[2, 0], [3, 0], [3, 1], [2.5, 1], [2, 1], [2, 1]])
    assert polygon_giou(a, b).item() == pytest.approx(-1 / 3, abs=1e-12)


def test_padding_matches_unpadded_and_gets_no_gradient() -> None:
    rng = np.random.default_rng(1)
    a3 = torch.from_numpy(random_convex(6, 3, rng))
    b5 = torch.from_numpy(random_convex(6, 5, rng))
    a8 = torch.cat([a3, torch.full((6, 5, 2), math.nan, dtype=torch.float64)], 1).requires_grad_()
    a3 = a3.clone().requires_grad_()
    for fn in (polygon_iou, polygon_giou):
        v8 = fn(a8, b5, torch.full((6,), 3), None)
        v3 = fn(a3, b5)
        torch.testing.assert_close(v8, v3, rtol=0, atol=1e-12)
        (g8,) = torch.autograd.grad(v8.sum(), a8)
        (g3,) = torch.autograd.grad(v3.sum(), a3)
        torch.testing.assert_close(g8[:, :3], g3, rtol=0, atol=1e-12)
        assert (g8[:, 3:] == 0).all()


def test_gradcheck_iou_and_giou() -> None:
    rng = np.random.default_rng(2)
    a = torch.from_numpy(random_convex(6, 6, rng)).requires_grad_()
    b = torch.from_numpy(random_convex(6, 4, rng) * 0.8).requires_grad_()
    assert torch.autograd.gradcheck(polygon_iou, (a, b))
    assert torch.autograd.gradcheck(polygon_giou, (a, b))
    count = torch.tensor([6, 5, 4, 3, 6, 6])
    assert torch.autograd.gradcheck(lambda x, y: polygon_giou(x, y, count, None), (a, b))


def test_area_gradient() -> None:
    poly = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]]], dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(polygon_area, (poly,))


def test_bad_shapes_name_the_argument() -> None:
    ok = torch.zeros(2, 4, 2)
    with pytest.raises(ValueError, match="^a "):
        polygon_iou(torch.zeros(2, 4), ok)
    with pytest.raises(ValueError, match="^b "):
        polygon_giou(ok, torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="b"):
        polygon_iou(ok, torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="a_valid"):
        polygon_iou(ok, ok, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="b_valid"):
        polygon_giou(ok, ok, None, torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="poly"):
        polygon_area(torch.zeros(2, 4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="poly"):
        signed_polygon_area(torch.zeros(2, 0, 2))
