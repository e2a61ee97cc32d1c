"""box_errors: a hand-worked image of each error kind, ignored objects, and agreement with box_map's P / R."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.evaluate import box_map
from detloss.evaluate.errors import box_errors


def _image_one():
    gt = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], [40, 40, 50, 50]]),
        "labels": torch.tensor([0, 0, 1, 0]),
    }
    pred = {
        "boxes": torch.tensor(
            [[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 0, 30, 10], [20, 0, 40, 20], [100, 100, 110, 110], [40, 40, 50, 50]]
        ),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.1]),
        "labels": torch.tensor([0, 0, 1, 0, 0, 0]),
    }
    return pred, gt


def _image_two():  # the first object is VOC-difficult
    gt = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 0])}
    gt["ignore"] = torch.tensor([True, False])
    pred = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5], [20, 20, 30, 30]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([0, 0, 0]),
    }
    return pred, gt


def test_each_kind_on_hand_worked_images():
    (p1, g1), (p2, g2) = _image_one(), _image_two()
    e = box_errors([p1, p2], [g1, g2], conf=0.25)
    # image 1: 0.9 takes A; 0.8 overlaps the taken A at 100/110 (duplicate); 0.7 is class 1 on the class-0 B
    # (wrong class); 0.6 overlaps B at 100/400 = 0.25 (localization, area 400/100); 0.5 is nowhere
    # (background); 0.1 is under conf. B, C and D are missed. Image 2: the first detection of the difficult
    # object counts nowhere, the second is a duplicate (as in COCO), the third a true positive.
    assert (e.detections, e.true_positives) == (7, 2)
    assert (e.duplicate, e.wrong_class, e.localization, e.background) == (2, 1, 1, 1)
    assert (e.ground_truths, e.missed) == (5, 3)
    assert e.area_ratio == pytest.approx(4.0)


def test_precision_and_recall_agree_with_box_map():
    (p1, g1), (p2, g2) = _image_one(), _image_two()
    for conf in (0.05, 0.25, 0.65):
        e = box_errors([p1, p2], [g1, g2], conf=conf)
        ref = box_map([p1, p2], [g1, g2], conf=conf)
        assert e.true_positives / e.detections == pytest.approx(ref["precision"]), conf
        assert 1 - e.missed / e.ground_truths == pytest.approx(ref["recall"]), conf


def test_no_localization_error_gives_nan_ratio_and_bad_thresholds_raise():
    p, g = _image_two()
    assert math.isnan(box_errors([p], [g]).area_ratio)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    e = box_errors([p], [empty])  # an image without objects: its 3 detections are background
    assert (e.detections, e.background, e.true_positives, e.ground_truths, e.missed) == (3, 3, 0, 0, 0)
    with pytest.raises(ValueError, match="background_iou"):
        box_errors([p], [g], iou=0.3, background_iou=0.4)
    with pytest.raises(ValueError, match="one entry per image"):
        box_errors([p], [])
