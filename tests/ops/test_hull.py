"""convex_hull against shapely on random and degenerate point sets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.ops import polygon_area, signed_polygon_area
from detloss.ops.hull import convex_hull

shapely = pytest.importorskip("shapely")
from shapely.geometry import MultiPoint  # noqa: E402

coords = st.floats(-50, 50, allow_nan=False, width=32)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(coords, coords), min_size=3, max_size=9), st.integers(0, 3))
def test_hull_area_and_vertices_match_shapely(pts, padding):
    k = len(pts) + padding
    points = torch.zeros(1, k, 2, dtype=torch.float64)
    points[0, : len(pts)] = torch.tensor(pts, dtype=torch.float64)
    valid = torch.arange(k)[None] < len(pts)
    hull, mask = convex_hull(points, valid)
    ref = MultiPoint(pts).convex_hull
    if ref.geom_type != "Polygon" or ref.area < 1e-6:
        assert polygon_area(hull, mask).item() == pytest.approx(ref.area, abs=1e-6)
        return
    assert polygon_area(hull, mask).item() == pytest.approx(ref.area, rel=1e-9, abs=1e-9)
    assert signed_polygon_area(hull, mask).item() > 0
    ref_vertices = {(round(x, 6), round(y, 6)) for x, y in list(ref.exterior.coords)[:-1]}
    ours = {(round(x, 6), round(y, 6)) for x, y in hull[0][mask[0]].tolist()}
    # shapely is exact; we drop points within 1e-9 (relative) of an edge, which changes no area above
    assert ours <= ref_vertices


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_float32_hull_of_head_like_predictions_matches_shapely(seed):
    g = torch.Generator().manual_seed(seed)
    points = 100 + 30 * torch.randn(1, 8, 2, generator=g)  # 8 scattered vertices at pixel scale
    hull, mask = convex_hull(points)
    ref = MultiPoint(points[0].double().tolist()).convex_hull
    assert polygon_area(hull, mask).item() == pytest.approx(ref.area, rel=1e-4)


def test_hand_cases():
    square_with_inner_and_edge_points = torch.tensor([[[0.0, 0], [1, 1], [2, 0], [2, 2], [0, 2], [1, 0]]])
    hull, mask = convex_hull(square_with_inner_and_edge_points)
    assert mask.sum().item() == 4
    assert polygon_area(hull, mask).item() == 4.0
    collinear = torch.tensor([[[0.0, 0], [1, 1], [2, 2]]])
    assert convex_hull(collinear)[1].sum().item() == 2
    near_duplicate = torch.tensor([[[0, 1e-9], [0, 0], [0, 1], [1, 0]]], dtype=torch.float64)
    assert polygon_area(*convex_hull(near_duplicate)).item() == pytest.approx(0.5)
    same = torch.ones(1, 4, 2)
    assert convex_hull(same)[1].sum().item() <= 1


def test_small_set_far_from_the_origin_keeps_its_vertices():
    """A 2 px square at 4000 px with a fifth vertex 0.01 px below its bottom edge (float32): tolerances
    relative to the coordinates (64 eps * 4000 = 0.03 px) dropped that vertex; relative to the set's size
    they keep it, and the area is shapely's."""
    pts = torch.tensor([[[4000.0, 4000.0], [4001.0, 3999.99], [4002.0, 4000.0], [4002.0, 4002.0], [4000.0, 4002.0]]])
    hull, mask = convex_hull(pts)
    assert mask.sum().item() == 5
    ref = MultiPoint(pts[0].double().tolist()).convex_hull.area  # 4 + 2 * (4000 - 3999.99...) / 2
    assert polygon_area(hull, mask).item() == pytest.approx(ref, rel=1e-6)


def test_near_coincident_corners_keep_the_hull():
    """Two heptagons of radius 1e-4 that differ by 2.9e-18 in one corner's y (farther apart than the
    coincidence tolerance): each copy of that corner lies inside an edge ending at the other, and the hull
    once lost both. Its area is the heptagon's, r^2 * 7/2 * sin(2 pi / 7)."""
    r = 1e-4
    a = torch.tensor([[r * math.cos(2 * math.pi * k / 7), r * math.sin(2 * math.pi * k / 7)] for k in range(7)])
    a = a.double()
    a[0, 1] = 0.0
    b = a.clone()
    b[0, 1] = 2.8629e-18
    hull, mask = convex_hull(torch.cat([a, b])[None])
    assert polygon_area(hull, mask).item() == pytest.approx(r * r * 3.5 * math.sin(2 * math.pi / 7), rel=1e-12)


def test_bad_shape_names_points():
    with pytest.raises(ValueError, match="points"):
        convex_hull(torch.zeros(3, 2))


def test_decoded_triangle_from_eight_slots_with_near_duplicates_scores_ap_one():
    """The harness decodes a K-slot polygon as the hull of its vertices. A triangle (0,0) (40,0) (0,30) predicted
    with 8 slots: the 3 corners, 3 copies within 1e-6 px of them (inside or on it) and 2 points on its edges. The hull is the
    triangle (area 600 exactly, to 1e-9), so its exact IoU with the ground truth is 1 and AP@[.5:.95] is 1."""
    from detloss.evaluate import polygon_map

    pts = torch.tensor(
        [[0.0, 0.0], [40.0, 0.0], [0.0, 30.0], [1e-6, 1e-6], [40.0 - 1e-6, 0.0], [0.0, 30.0 - 1e-6], [20.0, 15.0], [0.0, 12.0]],
        dtype=torch.float64,
    )
    hull, mask = convex_hull(pts[None])
    assert polygon_area(hull, mask).item() == pytest.approx(600.0, abs=1e-9)
    pred = {"polygons": hull, "polygon_valid": mask, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    gt = {"polygons": pts[None, :3], "labels": torch.tensor([0])}
    assert polygon_map([pred], [gt])["map"] == pytest.approx(1.0)
