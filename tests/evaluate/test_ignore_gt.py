"""Ground truths flagged ``ignore`` (VOC ``difficult``): out of recall, and a detection on one is no FP."""

from __future__ import annotations

import pytest
import torch

from detloss.evaluate import box_map, polygon_map

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]


def _rect(b):
    x1, y1, x2, y2 = b
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def _gt(ignore_b: bool | None):
    gt = {"boxes": torch.tensor([A, B]), "labels": torch.tensor([0, 0]), "polygons": torch.tensor([_rect(A), _rect(B)])}
    if ignore_b is not None:
        gt["ignore"] = torch.tensor([False, ignore_b])
    return gt


def _pred(boxes, scores):
    return {
        "boxes": torch.tensor(boxes),
        "scores": torch.tensor(scores),
        "labels": torch.zeros(len(boxes), dtype=torch.long),
        "polygons": torch.tensor([_rect(b) for b in boxes]),
    }


@pytest.mark.parametrize("fn", [box_map, polygon_map])
def test_missed_ignored_gt_does_not_lower_recall(fn):
    pred = _pred([A], [0.9])
    # B regular and missed: precision 1 up to recall 0.5 -> 51 of the 101 recall points: AP = 51/101
    assert fn([pred], [_gt(None)])["map50"] == pytest.approx(51 / 101)
    assert fn([pred], [_gt(False)])["map50"] == pytest.approx(51 / 101)
    r = fn([pred], [_gt(True)])
    assert r["map50"] == pytest.approx(1.0) and r["recall"] == 1.0 and r["precision"] == 1.0


@pytest.mark.parametrize("fn", [box_map, polygon_map])
def test_detection_on_ignored_gt_is_neither_tp_nor_fp(fn):
    pred = _pred([B, A, [40.0, 40.0, 50.0, 50.0]], [0.95, 0.9, 0.8])
    r = fn([pred], [_gt(True)])
    # evaluated: A (TP at 0.9), the box at 40 (FP at 0.8); B's detection is left out
    assert r["precision"] == pytest.approx(0.5) and r["recall"] == 1.0 and r["map50"] == pytest.approx(1.0)
    r = fn([pred], [_gt(False)])  # B regular: two TPs then an FP
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0


def test_ignore_must_be_bool_rows():
    with pytest.raises(ValueError, match=r"gts\[0\]\['ignore'\] must have shape \(2\)"):
        box_map([_pred([A], [0.9])], [{**_gt(None), "ignore": torch.tensor([True])}])
    with pytest.raises(ValueError, match=r"gts\[0\]\['ignore'\] must be a bool tensor"):
        box_map([_pred([A], [0.9])], [{**_gt(None), "ignore": torch.tensor([0, 1])}])
