"""The student's geometric strong view moves pseudo-boxes, polygons and dense anchor maps exactly
(hand-worked cases on an 8 x 8 image)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from detloss.data.transforms import reverse_valid_vertices
from detloss.semi.views import GeometricView, draw_view

#: hflip, then vflip, then one quarter turn on an 8 x 8 image: (x, y) -> (8 - x, 8 - y) -> (8 - y, x)
ALL = GeometricView(hflip=True, vflip=True, turns=1)


def _box_mask(box: list[int], hw: int = 8) -> torch.Tensor:
    image = torch.zeros(3, hw, hw)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 1.0  # pixels whose square lies inside the box
    return image


def _bounds(image: torch.Tensor) -> list[float]:
    rows, cols = torch.nonzero(image[0], as_tuple=True)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def test_flips_and_quarter_turn_move_boxes_exactly_and_with_the_pixels():
    sample = {"image": _box_mask([1, 1, 3, 4]), "boxes": torch.tensor([[1.0, 1.0, 3.0, 4.0]]),
              "labels": torch.tensor([2]), "scores": torch.tensor([0.7])}  # fmt: skip
    out = ALL.apply(sample)
    # by hand: hflip [5, 1, 7, 4]; vflip [5, 4, 7, 7]; (x, y) -> (y, 8 - x): [4, 1, 7, 3]
    assert out["boxes"].tolist() == [[4.0, 1.0, 7.0, 3.0]]
    assert _bounds(out["image"]) == [4.0, 1.0, 7.0, 3.0]  # the pixels went to the same place
    assert out["labels"].tolist() == [2] and out["scores"].tolist() == pytest.approx([0.7])
    assert GeometricView().apply(sample)["boxes"].tolist() == [[1.0, 1.0, 3.0, 4.0]]  # the identity


def test_polygons_move_exactly_and_keep_their_orientation():
    tri = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [1.0, 4.0]]])
    out = ALL.apply({"image": torch.zeros(3, 8, 8), "polygons": tri, "polygon_counts": torch.tensor([3])})
    # (x, y) -> (8 - y, x) per vertex; each flip reverses the vertex order, twice: back to the drawn order
    assert out["polygons"].tolist() == [[[7.0, 1.0], [7.0, 3.0], [4.0, 1.0]]]
    before, after = Polygon(tri[0].tolist()), Polygon(out["polygons"][0].tolist())
    assert after.area == before.area == 3.0
    signed = lambda p: sum(p[i][0] * p[i - 2][1] - p[i - 2][0] * p[i][1] for i in range(3))  # noqa: E731
    assert (signed(tri[0].tolist()) > 0) == (signed(out["polygons"][0].tolist()) > 0)
    one_flip = GeometricView(hflip=True).apply({"image": torch.zeros(3, 8, 8), "polygons": tri})
    assert one_flip["polygons"].tolist() == reverse_valid_vertices(
        torch.tensor([[[7.0, 1.0], [5.0, 1.0], [7.0, 4.0]]]), torch.tensor([3])
    ).tolist()


def test_scale_crop_moves_and_clips_boxes():
    # scale 2, window at (4, 2): x -> 2x - 4, y -> 2y - 2; [1, 1, 3, 4] -> [-2, 0, 2, 6], clipped [0, 0, 2, 6]
    view = GeometricView(scale=2.0, left=4, top=2, min_visible=0.25)
    boxes = torch.tensor([[1.0, 1.0, 3.0, 4.0], [0.0, 6.0, 1.0, 8.0]])  # the second leaves the window
    out = view.apply({"image": torch.zeros(3, 8, 8), "boxes": boxes, "labels": torch.tensor([1, 4])})
    assert out["boxes"].tolist() == [[0.0, 0.0, 2.0, 6.0]] and out["labels"].tolist() == [1]


@pytest.mark.parametrize("view", [ALL, GeometricView(hflip=True), GeometricView(vflip=True, turns=3),
                                  GeometricView(turns=2)])  # fmt: skip
@pytest.mark.parametrize("stride", [1, 2, 4])
def test_anchor_maps_follow_the_anchor_points(view, stride):
    n = 8 // stride
    grid = torch.arange(n * n, dtype=torch.float32).view(1, n, n)  # each cell holds its own id
    moved = view.apply_grid(grid, stride)
    for i in range(n):
        for j in range(n):
            c = ((j + 0.5) * stride, (i + 0.5) * stride)  # the anchor point, a zero-size box
            (x, y, _, _), = view.apply({"image": torch.zeros(3, 8, 8), "boxes": torch.tensor([[*c, *c]])})["boxes"].tolist()
            assert moved[0, int(y // stride), int(x // stride)] == grid[0, i, j]


def test_anchor_maps_after_a_crop_take_the_nearest_cell():
    # scale 2, window at (4, 2), stride 2 (4 x 4 cells): a view cell centre x = 2j + 1 comes from
    # (x + 4) / 2, the weak cell floor(that / 2): columns 1, 1, 2, 2; rows from (y + 2) / 2: 0, 1, 1, 2
    grid = torch.arange(16.0).view(4, 4)
    moved = GeometricView(scale=2.0, left=4, top=2).apply_grid(grid, 2)
    assert moved.tolist() == [[grid[r, c].item() for c in (1, 1, 2, 2)] for r in (0, 1, 1, 2)]
    out = GeometricView(scale=0.5, left=-2, top=-2).apply_grid(torch.ones(4, 4), 2, fill=-1.0)
    assert out.tolist() == [[-1.0] * 4, [-1.0, 1.0, 1.0, -1.0], [-1.0, 1.0, 1.0, -1.0], [-1.0] * 4]
    with pytest.raises(ValueError, match="stride"):
        GeometricView(scale=2.0).apply_grid(grid)


def test_draws_depend_on_the_seed_alone_and_bad_options_raise():
    a = draw_view(torch.Generator().manual_seed(3), (8, 8), hflip=0.5, vflip=0.5, rot90=0.5, scale_jitter=0.3)
    b = draw_view(torch.Generator().manual_seed(3), (8, 8), hflip=0.5, vflip=0.5, rot90=0.5, scale_jitter=0.3)
    assert a == b and 0.7 <= a.scale <= 1.3
    assert draw_view(torch.Generator().manual_seed(0), (8, 8)) == GeometricView()
    with pytest.raises(ValueError, match="square"):
        draw_view(torch.Generator(), (8, 16), rot90=0.5)
    with pytest.raises(ValueError, match="hflip"):
        draw_view(torch.Generator(), (8, 8), hflip=1.5)


def _point_map(view: GeometricView, pts: torch.Tensor, h: float, w: float) -> torch.Tensor:
    """The view's closed-form map of points ``(n, 2)`` (no crop), written out independently."""
    x, y = pts[:, 0].double(), pts[:, 1].double()
    if view.hflip:
        x = w - x
    if view.vflip:
        y = h - y
    for _ in range(view.turns % 4):
        x, y, h, w = y, w - x, w, h
    return torch.stack((x, y), -1)


@settings(max_examples=60, deadline=None)
@given(
    hw=st.sampled_from([(1, 1), (8, 8), (5000, 5000)]),
    box=st.tuples(*[st.floats(0.0, 1.0)] * 4),
    flips=st.tuples(st.booleans(), st.booleans()),
    turns=st.integers(0, 3),
)
def test_views_move_boxes_like_their_corners(hw, box, flips, turns):
    """Degenerate (zero width), tiny and huge boxes: the moved box is the bounds of the moved corners, its
    area is kept, and it stays inside the image."""
    h, w = hw
    x1, x2 = sorted((box[0] * w, box[2] * w))
    y1, y2 = sorted((box[1] * h, box[3] * h))
    view = GeometricView(hflip=flips[0], vflip=flips[1], turns=turns)
    b = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float64)
    out = view.apply({"image": torch.zeros(0, h, w), "boxes": b})["boxes"][0]  # no channels: only its size
    corners = _point_map(view, torch.tensor([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=torch.float64), h, w)
    expected = torch.cat((corners.min(0).values, corners.max(0).values))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-9 * max(h, w))
    assert float((out[2] - out[0]) * (out[3] - out[1])) == pytest.approx((x2 - x1) * (y2 - y1), abs=1e-6 * h * w)
    assert 0 <= float(out.min()) and float(out.max()) <= max(h, w)
