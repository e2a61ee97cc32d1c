"""ShapesDataset: determinism, exact convex ground truth, masks against shoelace areas, class semantics."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.data.shapes import (
    CLASS_NAMES,
    ShapesDataset,
    rasterize_convex_polygons,
    shape_group,
)
from detloss.ops.clip import clip_convex_polygon_to_rect

SIZE = 96


@pytest.fixture(scope="module")
def samples() -> list[dict[str, torch.Tensor]]:
    ds = ShapesDataset(40, image_size=SIZE, seed=7)
    return [ds[i] for i in range(len(ds))]


def _shoelace(p: torch.Tensor) -> float:
    p = p.double()
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float((x * y.roll(-1) - x.roll(-1) * y).sum())


def _perimeter(p: torch.Tensor) -> float:
    return float((p.double().roll(-1, 0) - p.double()).norm(dim=1).sum())


def test_same_seed_same_tensors_and_different_items_differ():
    a = ShapesDataset(6, image_size=64, seed=3)
    b = ShapesDataset(6, image_size=64, seed=3)
    for i in (0, 5):
        sa, sb = a[i], b[i]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), key
    assert torch.equal(a[2]["image"], a[2]["image"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], ShapesDataset(6, image_size=64, seed=4)[0]["image"])
    assert not torch.equal(a[0]["image"], ShapesDataset(6, image_size=64, seed=3, split="val")[0]["image"])
    assert torch.equal(a[-1]["image"], a[5]["image"])
    with pytest.raises(IndexError):
        a[6]


def test_sample_layout(samples):
    k = 8
    for s in samples:
        n = s["labels"].shape[0]
        assert 1 <= n <= 6
        assert s["image"].shape == (3, SIZE, SIZE) and s["image"].dtype == torch.float32
        assert float(s["image"].min()) >= 0.0 and float(s["image"].max()) <= 1.0
        assert s["boxes"].shape == (n, 4) and s["polygons"].shape == (n, k, 2)
        assert s["polygon_counts"].shape == (n,) and s["sides"].shape == (n,)
        assert s["masks"].shape == (SIZE, SIZE) and s["masks"].dtype == torch.int64
        assert int(s["masks"].max()) <= n and int(s["masks"].min()) >= 0
        valid = torch.arange(k) < s["polygon_counts"].view(-1, 1)
        assert (s["polygons"][~valid] == 0).all()  # padding is zeros, after the valid vertices


def test_polygons_convex_positive_inside_and_boxes_are_bounds(samples):
    for s in samples:
        for p, c, box in zip(s["polygons"], s["polygon_counts"], s["boxes"], strict=True):
            q = p[: int(c)].double()
            assert 3 <= q.shape[0] <= 8
            assert (q >= 0).all() and (q[:, 0] <= SIZE).all() and (q[:, 1] <= SIZE).all()
            e = q.roll(-1, 0) - q
            turn = e[:, 0] * e.roll(-1, 0)[:, 1] - e[:, 1] * e.roll(-1, 0)[:, 0]
            # documented orientation: positive shoelace area; convex: every turn has the same sign
            assert _shoelace(q) > 0
            assert (turn > 0).all(), turn
            assert torch.equal(box, torch.cat((p[: int(c)].min(0).values, p[: int(c)].max(0).values)))


def test_mask_pixel_counts_match_shoelace_areas(samples):
    # A convex region with area A and perimeter P contains N lattice points (here: pixel centres) with
    # A - P/2 < N < A + P/2 + 1 (Nosarzewska 1948; Bokowski, Hadwiger & Wills 1972), so |N - A| <= P/2 + 1
    # holds for every polygon, whatever its position on the grid. Over many polygons the errors cancel,
    # so the total is checked much tighter (0.5%).
    tot_pixels = tot_area = 0.0
    for s in samples:
        raster = rasterize_convex_polygons(s["polygons"], s["polygon_counts"], SIZE, SIZE)
        n = raster.shape[0]
        for i in range(n):
            q = s["polygons"][i, : int(s["polygon_counts"][i])]
            area, count = _shoelace(q), int(raster[i].sum())
            assert abs(count - area) <= _perimeter(q) / 2 + 1, (count, area)
            tot_pixels += count
            tot_area += area
            visible = s["masks"] == i + 1
            assert not (visible & ~raster[i]).any()  # visible part of an object lies inside its polygon
            assert int(visible.sum()) >= 0.5 * count  # at least half of every object stays visible
        # later objects are painted over earlier ones: the last is fully visible, the union is exact
        assert torch.equal(s["masks"] == n, raster[-1])
        assert torch.equal(s["masks"] > 0, raster.any(0))
    assert abs(tot_pixels - tot_area) < 0.005 * tot_area


def test_classes_follow_shape_and_colour(samples):
    seen = set()
    clipped = unclipped = 0
    for s in samples:
        for i, (label, sides, count) in enumerate(zip(s["labels"], s["sides"], s["polygon_counts"], strict=True)):
            label, sides, count = int(label), int(sides), int(count)
            seen.add(label)
            assert 3 <= sides <= 8
            assert shape_group(sides) == label // 2
            q = s["polygons"][i, :count]
            on_border = bool(((q == 0) | (q == SIZE)).any())
            if on_border:
                clipped += 1
            else:  # an unclipped shape has exactly the sides it was drawn with
                unclipped += 1
                assert count == sides
            visible = s["masks"] == i + 1
            if int(visible.sum()) >= 10:
                r, _, b = s["image"][:, visible].mean(1).tolist()
                assert (r - b > 0.15) if label % 2 == 0 else (b - r > 0.15), (CLASS_NAMES[label], r, b)
    assert seen == set(range(len(CLASS_NAMES)))
    assert clipped > 0 and unclipped > 0  # shapes sometimes cross the border


def test_fewer_vertex_slots_limit_the_shapes():
    ds = ShapesDataset(10, image_size=64, num_vertices=4, seed=1)
    for i in range(len(ds)):
        s = ds[i]
        assert s["polygons"].shape[1] == 4
        assert (s["polygon_counts"] <= 4).all() and (s["labels"] < 4).all()


def test_clip_and_rasterize_hand_cases():
    # a triangle crossing the left and top borders of a 10 x 10 image
    tri = torch.tensor([[-2.0, -2.0], [6.0, -2.0], [-2.0, 6.0]], dtype=torch.float64)
    clipped = clip_convex_polygon_to_rect(tri, 10, 10)
    assert sorted(map(tuple, clipped.tolist())) == [(0.0, 0.0), (0.0, 4.0), (4.0, 0.0)]
    assert _shoelace(clipped) > 0  # orientation kept
    outside = torch.tensor([[20.0, 20.0], [30.0, 20.0], [20.0, 30.0]])
    assert clip_convex_polygon_to_rect(outside, 10, 10).shape == (0, 2)
    # [1.2, 3.7] x [2.0, 5.0] holds the centres x = 1.5, 2.5, 3.5 and y = 2.5, 3.5, 4.5 (not 5.5)
    rect = torch.tensor([[[1.2, 2.0], [3.7, 2.0], [3.7, 5.0], [1.2, 5.0]]])
    expected = torch.zeros(1, 6, 6, dtype=torch.bool)
    expected[0, 2:5, 1:4] = True
    assert torch.equal(rasterize_convex_polygons(rect, None, 6, 6), expected)
    assert torch.equal(rasterize_convex_polygons(rect.flip(1), torch.tensor([4]), 6, 6), expected)  # either order


def test_full_size_image_and_shape_sizes(samples):
    s = ShapesDataset(3, seed=0)[0]
    assert s["image"].shape == (3, 256, 256) and s["masks"].shape == (256, 256)
    # circumscribed diameter d in [6%, 45%] of the side, stretched by at most sqrt(4/3) along one axis:
    # an unclipped shape's longer box side lies in [0.75 d / sqrt(4/3), d sqrt(4/3)] (a triangle is the
    # thinnest: its height is 3/4 of d)
    lo, hi = 0.75 * 0.06 * SIZE / math.sqrt(4 / 3), 0.45 * SIZE * math.sqrt(4 / 3)
    for s in samples:
        for box, p, c in zip(s["boxes"], s["polygons"], s["polygon_counts"], strict=True):
            q = p[: int(c)]
            if not ((q == 0) | (q == SIZE)).any():
                side = float((box[2:] - box[:2]).max())
                assert lo - 1e-4 <= side <= hi + 1e-4, side
