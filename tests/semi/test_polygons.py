"""Polygon pseudo-labels: the convex hull of a teacher's K vertices, worked by hand."""

from __future__ import annotations

import pytest
import torch

from detloss.ops.polygon import signed_polygon_area
from detloss.semi.polygons import hull_pseudo_polygons
from detloss.train.semi import detections_to_targets


def test_hull_drops_inner_edge_and_repeated_vertices():
    # a 4 x 2 rectangle given as 6 vertices: one inside, one on the bottom edge, one corner repeated
    raw = torch.tensor(
        [[[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [4.0, 2.0], [2.0, 1.0], [0.0, 2.0]]],
    )
    raw = torch.cat([raw, raw[:, :1]], 1)  # 7th vertex: (0, 0) again
    (out,) = hull_pseudo_polygons([{"polygons": raw, "labels": torch.tensor([3])}])
    assert out["polygon_counts"].tolist() == [4]
    assert out["labels"].tolist() == [3]  # other keys kept
    hull = out["polygons"][0, :4]
    assert sorted(map(tuple, hull.tolist())) == [(0.0, 0.0), (0.0, 2.0), (4.0, 0.0), (4.0, 2.0)]
    assert float(signed_polygon_area(hull[None]).item()) == pytest.approx(8.0)  # 4 x 2, positive orientation
    assert out["polygons"][0, 4:].abs().sum() == 0  # padding after the hull


def test_collinear_vertices_keep_the_raw_polygon_and_empty_images_stay_empty():
    line = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    (out,) = hull_pseudo_polygons([{"polygons": line}])
    assert out["polygon_counts"].tolist() == [4] and torch.equal(out["polygons"], line)
    (empty,) = hull_pseudo_polygons([{"polygons": torch.zeros(0, 4, 2)}])
    assert empty["polygons"].shape == (0, 4, 2) and empty["polygon_counts"].shape == (0,)


def test_bad_input_names_the_key():
    with pytest.raises(ValueError, match=r"dets\[0\] must hold 'polygons'"):
        hull_pseudo_polygons([{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        hull_pseudo_polygons([{"polygons": torch.zeros(2, 4)}])


def test_detections_to_targets_normalizes_the_polygons():
    # a 64 x 32 image (H x W): x / 32, y / 64
    det = {
        "boxes": torch.tensor([[8.0, 16.0, 24.0, 48.0]]),
        "labels": torch.tensor([1]),
        "polygons": torch.tensor([[[8.0, 16.0], [24.0, 16.0], [16.0, 48.0], [0.0, 0.0]]]),
        "polygon_counts": torch.tensor([3]),
    }
    t = detections_to_targets([det, {**det, "boxes": det["boxes"][:0], "labels": det["labels"][:0],
                                      "polygons": det["polygons"][:0], "polygon_counts": det["polygon_counts"][:0]}],
                              (64, 32))  # fmt: skip
    assert t["batch_idx"].tolist() == [0] and t["cls"].tolist() == [1]
    torch.testing.assert_close(t["bboxes"], torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    torch.testing.assert_close(t["polygons"], torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.5, 0.75], [0.0, 0.0]]]))
    assert t["polygon_counts"].tolist() == [3]
    assert "polygons" not in detections_to_targets([{"boxes": det["boxes"], "labels": det["labels"]}], (64, 32))
