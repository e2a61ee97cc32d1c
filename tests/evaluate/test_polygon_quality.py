"""Polygon quality (best matches, IoU quantiles, redundant vertices) on hand-built cases, and the
``detloss polygons`` command on a tiny run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detloss.evaluate.polygon_quality import polygon_corners, polygon_quality

SQUARE = [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]]
TRIANGLE = [[10.0, 10.0], [16.0, 10.0], [10.0, 16.0]]


def test_corners_drop_coincident_collinear_and_inside_vertices() -> None:
    tri8 = np.array(TRIANGLE + [[16.3, 10.0], [10.0, 10.5], [13.0, 10.0], [13.0, 13.0], [11.0, 11.0]])
    # (16.3, 10) within 1 px of corner (16, 10) along the edge; (10, 10.5) near (10, 10); (13, 10) on an edge;
    # (13, 13) on the hypotenuse; (11, 11) inside
    corners = polygon_corners(tri8, tol=1.0)
    assert len(corners) == 3
    assert len(polygon_corners(tri8, tol=0.1)) == 3  # all of them exactly on the hull's edges, or inside
    bump = np.concatenate([tri8, [[13.2, 13.2]]])  # 1.56 / 8.71 = 0.18 px outside the chord (16.3, 10)-(10, 16)
    assert len(polygon_corners(bump, tol=1.0)) == 3 and len(polygon_corners(bump, tol=0.1)) == 4
    assert len(polygon_corners(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]), tol=0.0)) == 2  # flat
    with pytest.raises(ValueError, match="tol"):
        polygon_corners(tri8, tol=-1.0)


def test_hand_built_matches() -> None:
    """Image 0: a square GT (class 0) with two predictions: the square shifted by half its side (IoU 8 / 24
    = 1/3) and the exact square with 4 surplus vertices on its edges (IoU 1, 4 redundant); a triangle GT
    (class 1) predicted by 8 points, 3 corners and 5 redundant (IoU 1), and one prediction of class 1
    scored below conf. Image 1: a square GT with no prediction (missed, IoU 0)."""
    exact8 = SQUARE + [[2.0, 0.0], [4.0, 2.0], [2.0, 4.0], [0.0, 2.0]]
    shifted = [[x + 2.0, y] for x, y in SQUARE] * 2
    tri8 = TRIANGLE + [[13.0, 10.0], [10.0, 13.0], [13.0, 13.0], [11.0, 11.0], [16.0, 10.0]]
    preds = [
        {
            "polygons": torch.tensor([shifted, exact8, tri8, tri8]),
            "scores": torch.tensor([0.9, 0.8, 0.7, 0.1]),
            "labels": torch.tensor([0, 0, 1, 1]),
        },
        {"polygons": torch.zeros(0, 8, 2), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    pad = [[0.0, 0.0]] * 5
    gts = [
        {
            "polygons": torch.tensor([SQUARE + pad[:4], TRIANGLE + pad]),
            "polygon_counts": torch.tensor([4, 3]),
            "labels": torch.tensor([0, 1]),
        },
        {
            "polygons": torch.tensor([SQUARE + pad[:4]]),
            "polygon_counts": torch.tensor([4]),
            "labels": torch.tensor([0]),
        },
    ]
    q = polygon_quality(preds, gts, conf=0.25, tol=0.5, names=["square", "triangle"])
    by = {(m.image, m.gt_index): m for m in q.matches}
    assert by[0, 0].pred_index == 1 and by[0, 0].iou == pytest.approx(1.0) and by[0, 0].corners == 4
    assert by[0, 0].redundant == 4
    assert by[0, 1].pred_index == 2 and by[0, 1].iou == pytest.approx(1.0) and by[0, 1].redundant == 5
    assert by[1, 0].pred_index == -1 and by[1, 0].iou == 0.0
    rows = q.per_class()
    assert rows[0]["gts"] == 2 and rows[0]["missed"] == 1 and rows[0]["iou_p50"] == pytest.approx(0.5)
    assert rows[0]["iou_p10"] == pytest.approx(0.1)  # linear between 0 and 1
    assert rows[0]["redundant"] == 4 and rows[0]["corner_excess"] == 0 and rows[0]["corners_right"] == 1
    assert rows[1]["iou_mean"] == pytest.approx(1.0) and rows[1]["corner_excess"] == 0
    assert [m.image for m in q.worst(1, 0)] == [1]
    assert "square" in q.table() and "triangle" in q.table()
    # without the exact prediction, the shifted square is the best match: IoU 8 / 24
    preds[0]["scores"] = torch.tensor([0.9, 0.1, 0.7, 0.1])
    m = polygon_quality(preds, gts, conf=0.25, tol=0.5).matches[0]
    assert m.pred_index == 0 and m.iou == pytest.approx(1 / 3) and m.corners == 4 and m.redundant == 4


def test_preds_and_gts_must_pair_up() -> None:
    with pytest.raises(ValueError, match="one entry per image"):
        polygon_quality([], [{}])


def test_polygons_command_on_a_tiny_run(tmp_path, capsys) -> None:
    """``detloss polygons RUN_DIR`` reads the run's config and last checkpoint: a table row per class, the
    worst cases, and the figure."""
    pytest.importorskip("matplotlib")
    from detloss.cli import main
    from detloss.testing.tiny import TINY_RUN

    assert main(["train", *TINY_RUN, f"out_dir={tmp_path}", "eval.plots=false"]) == 0
    capsys.readouterr()
    assert main(["polygons", str(tmp_path), "--conf", "0.0", "--plot", "2"]) == 0
    out = capsys.readouterr().out
    assert "iou_p50" in out and "redundant" in out and "worst cases" in out
    assert (tmp_path / "polygons.png").stat().st_size > 0
