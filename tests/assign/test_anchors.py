"""make_anchors ordering / pixel coordinates and the ltrb <-> xyxy conversions, on hand-worked values."""

from __future__ import annotations

import pytest
import torch

from detloss.assign.anchors import bbox2dist, dist2bbox, make_anchors


def test_make_anchors_two_levels_pixel_centres_row_major():
    # level 0: 2 rows x 3 cols at stride 8 -> centres x in {4, 12, 20}, y in {4, 12}, x fastest;
    # level 1: 1 row x 2 cols at stride 16 -> centres (8, 8), (24, 8); levels concatenated in order.
    points, strides = make_anchors([(2, 3), (1, 2)], [8, 16])
    expected = torch.tensor(
        [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [4.0, 12.0], [12.0, 12.0], [20.0, 12.0], [8.0, 8.0], [24.0, 8.0]]
    )
    assert torch.equal(points, expected)
    assert torch.equal(strides, torch.tensor([8.0] * 6 + [16.0] * 2))
    assert points.dtype == torch.float32 and strides.dtype == torch.float32


def test_make_anchors_offset_dtype_and_non_square_level():
    points, strides = make_anchors([(3, 1)], [4.0], offset=0.0, dtype=torch.float64)
    # one column, three rows: (0, 0), (0, 4), (0, 8)
    assert torch.equal(points, torch.tensor([[0.0, 0.0], [0.0, 4.0], [0.0, 8.0]], dtype=torch.float64))
    assert torch.equal(strides, torch.full((3,), 4.0, dtype=torch.float64))


def test_make_anchors_is_grid_units_times_stride():
    # ultralytics returns grid units (x + 0.5); ours are those times the stride, same order of operations.
    points, strides = make_anchors([(5, 7), (3, 4)], [8, 16])
    grid = points / strides[:, None]
    assert torch.equal(grid[:35, 0].view(5, 7)[0], torch.arange(7) + 0.5)
    assert torch.equal(grid[:35, 1].view(5, 7)[:, 0], torch.arange(5) + 0.5)
    assert torch.equal(grid[35:, 0].view(3, 4)[2], torch.arange(4) + 0.5)


def test_make_anchors_empty_and_errors():
    points, strides = make_anchors([], [])
    assert points.shape == (0, 2) and strides.shape == (0,)
    with pytest.raises(ValueError, match="strides"):
        make_anchors([(2, 2)], [8, 16])
    with pytest.raises(ValueError, match=r"feat_sizes\[0\]"):
        make_anchors([(2, -1)], [8])
    with pytest.raises(ValueError, match=r"strides\[1\]"):
        make_anchors([(2, 2), (1, 1)], [8, 0])
    with pytest.raises(ValueError, match="dtype"):
        make_anchors([(2, 2)], [8], dtype=torch.int64)


def test_dist2bbox_hand_values():
    # point (10, 20), distances l=1, t=2, r=3, b=4 -> box (9, 18, 13, 24)
    box = dist2bbox(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0]))
    assert torch.equal(box, torch.tensor([9.0, 18.0, 13.0, 24.0]))


def test_bbox2dist_hand_values_no_clamp():
    # the point (2, 30) lies left of and below the box: negative left/bottom distances are kept
    dist = bbox2dist(torch.tensor([[10.0, 20.0], [2.0, 30.0]]), torch.tensor([[9.0, 18.0, 13.0, 24.0]] * 2))
    assert torch.equal(dist, torch.tensor([[1.0, 2.0, 3.0, 4.0], [-7.0, 12.0, 11.0, -6.0]]))


def test_round_trip_with_broadcast_points():
    points = torch.tensor([[4.0, 4.0], [12.0, 4.0]])  # (A=2, 2)
    dist = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [0.5, 0.25, 8.0, 2.0]]] * 3)  # (B=3, A=2, 4)
    boxes = dist2bbox(dist, points)
    assert boxes.shape == (3, 2, 4)
    assert torch.equal(boxes[0], torch.tensor([[3.0, 2.0, 7.0, 8.0], [11.5, 3.75, 20.0, 6.0]]))
    assert torch.equal(bbox2dist(points, boxes), dist)


def test_conversion_errors_name_the_argument():
    with pytest.raises(ValueError, match="distance"):
        dist2bbox(torch.zeros(3, 5), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="points"):
        dist2bbox(torch.zeros(3, 4), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="boxes"):
        bbox2dist(torch.zeros(3, 2), torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="broadcast"):
        bbox2dist(torch.zeros(3, 2), torch.zeros(4, 4))
