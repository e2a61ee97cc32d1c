"""pseudo_label_quality: hand-built matches, and properties that hold for any input."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.semi import pseudo_label_quality


def _p(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _g(boxes, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


A = [0.0, 0.0, 10.0, 10.0]
A_SHIFT = [0.0, 0.0, 10.0, 5.0]  # IoU with A: 50 / 100 = 0.5 exactly
B = [20.0, 20.0, 30.0, 30.0]
C = [50.0, 50.0, 60.0, 60.0]


def test_hand_built_tp_fp_fn():
    pseudo = [
        _p([A, B, A, C], [0.9, 0.8, 0.7, 0.6], [0, 1, 0, 0]),  # A: TP; B wrong class: FP; A again: duplicate FP; C: FP
        _p([A_SHIFT], [0.5], [2]),  # IoU 0.5 >= 0.5: TP
        _p([], [], []),  # nothing claimed: the GT is missed
    ]
    gts = [_g([A, B], [0, 2]), _g([A], [2]), _g([C], [1])]
    q = pseudo_label_quality(pseudo, gts)
    assert q["per_image"] == [{"tp": 1, "fp": 3, "fn": 1}, {"tp": 1, "fp": 0, "fn": 0}, {"tp": 0, "fp": 0, "fn": 1}]
    assert (q["tp"], q["fp"], q["fn"]) == (2, 3, 2)
    assert q["precision"] == 2 / 5
    assert q["recall"] == 2 / 4
    # a stricter threshold drops the 0.5-IoU match: one FP and one FN more
    strict = pseudo_label_quality(pseudo, gts, iou=0.6)
    assert (strict["tp"], strict["fp"], strict["fn"]) == (1, 4, 3)


def test_wrong_class_is_one_fp_and_one_fn():
    q = pseudo_label_quality([_p([A], [0.9], [1])], [_g([A], [0])])
    assert (q["tp"], q["fp"], q["fn"], q["precision"], q["recall"]) == (0, 1, 1, 0.0, 0.0)


def test_class_agnostic_matching_counts_a_well_placed_box_of_the_wrong_class():
    # A is in the right place with the wrong class; C overlaps no ground truth; B is missed
    pseudo = [_p([A, C], [0.9, 0.8], [1, 0])]
    gts = [_g([A, B], [0, 0])]
    aware = pseudo_label_quality(pseudo, gts)
    agnostic = pseudo_label_quality(pseudo, gts, class_aware=False)
    assert (aware["tp"], aware["fp"], aware["fn"]) == (0, 2, 2)
    assert (agnostic["tp"], agnostic["fp"], agnostic["fn"]) == (1, 1, 1)
    assert agnostic["precision"] == 0.5 and agnostic["recall"] == 0.5


def test_greedy_by_score_takes_the_best_iou_and_matches_each_gt_once():
    near_a = [0.0, 0.0, 10.0, 9.0]  # IoU 90 / 100 = 0.9 with A, 50 / 90 = 0.556 with A_SHIFT
    pseudo = [_p([A_SHIFT, near_a], [0.5, 0.9], [0, 0])]
    gts = [_g([A_SHIFT, A], [0, 0])]
    # at IoU 0.55, near_a (visited first) passes both GTs and takes its best, A (not the first, A_SHIFT);
    # A_SHIFT then matches A_SHIFT (IoU 1; its IoU 0.5 with A would not pass)
    q = pseudo_label_quality(pseudo, gts, iou=0.55)
    assert (q["tp"], q["fp"], q["fn"]) == (2, 0, 0)
    # in score order the higher one wins the only GT, whatever its index
    q = pseudo_label_quality([_p([A, A], [0.3, 0.8], [0, 0])], [_g([A], [0])])
    assert (q["tp"], q["fp"], q["fn"]) == (1, 1, 0)


def test_undefined_precision_and_recall_are_nan():
    none_claimed = pseudo_label_quality([_p([], [], [])], [_g([A], [0])])
    assert math.isnan(none_claimed["precision"]) and none_claimed["recall"] == 0.0
    no_gt = pseudo_label_quality([_p([A], [0.9], [0])], [_g([], [])])
    assert no_gt["precision"] == 0.0 and math.isnan(no_gt["recall"])
    both_empty = pseudo_label_quality([_p([], [], [])], [_g([], [])])
    assert math.isnan(both_empty["precision"]) and math.isnan(both_empty["recall"])
    assert (both_empty["tp"], both_empty["fp"], both_empty["fn"]) == (0, 0, 0)
    no_images = pseudo_label_quality([], [])
    assert math.isnan(no_images["precision"]) and no_images["per_image"] == []


def test_zero_area_boxes_never_match():
    dot = [5.0, 5.0, 5.0, 5.0]
    q = pseudo_label_quality([_p([dot], [0.9], [0])], [_g([dot], [0])])
    assert (q["tp"], q["fp"], q["fn"]) == (0, 1, 1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one dict per image"):
        pseudo_label_quality([_p([A], [0.9], [0])], [])
    with pytest.raises(ValueError, match="iou"):
        pseudo_label_quality([], [], iou=0.0)
    with pytest.raises(ValueError, match=r"pseudo\[0\] must be a dict with keys boxes, labels, scores"):
        pseudo_label_quality([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}], [_g([], [])])
    with pytest.raises(ValueError, match=r"gts\[0\]\['boxes'\] must have shape \(N, 4\)"):
        pseudo_label_quality([_p([], [], [])], [{"boxes": torch.zeros(3), "labels": torch.zeros(3)}])
    with pytest.raises(ValueError, match=r"gts\[0\]\['labels'\] must be an integer"):
        pseudo_label_quality([_p([], [], [])], [{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)}])


_coord = st.integers(0, 20).map(float)
_box = st.tuples(_coord, _coord, st.integers(1, 10).map(float), st.integers(1, 10).map(float)).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # positive area
)
_image = st.lists(st.tuples(_box, st.floats(0, 1, width=32), st.integers(0, 2)), max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_image, _image), max_size=4), st.sampled_from([0.3, 0.5, 0.75, 1.0]))
def test_properties(images, iou):
    pseudo = [_p([b for b, _, _ in p], [s for _, s, _ in p], [c for _, _, c in p]) for p, _ in images]
    gts = [_g([b for b, _, _ in g], [c for _, _, c in g]) for _, g in images]
    q = pseudo_label_quality(pseudo, gts, iou)
    n_pred = sum(len(p) for p, _ in images)
    n_gt = sum(len(g) for _, g in images)
    assert q["tp"] + q["fp"] == n_pred and q["tp"] + q["fn"] == n_gt
    for c, (p, g) in zip(q["per_image"], images, strict=True):
        assert c["tp"] + c["fp"] == len(p) and c["tp"] + c["fn"] == len(g) and c["tp"] <= min(len(p), len(g))
        assert min(c.values()) >= 0
    assert math.isnan(q["precision"]) == (n_pred == 0)
    assert math.isnan(q["recall"]) == (n_gt == 0)
    for v in (q["precision"], q["recall"]):
        assert math.isnan(v) or 0.0 <= v <= 1.0
    # the ground truth itself, as pseudo-labels with any scores, is perfect (duplicates included)
    perfect = pseudo_label_quality([{**g, "scores": torch.rand(len(g["labels"]))} for g in gts], gts, iou)
    assert (perfect["fp"], perfect["fn"]) == (0, 0)
    if n_gt:
        assert perfect["precision"] == 1.0 and perfect["recall"] == 1.0
