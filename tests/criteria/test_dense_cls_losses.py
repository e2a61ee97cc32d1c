"""DenseCriterion's non-BCE class losses train towards the soft targets, on the 2 x 2 hand case.

A 16 x 16 image, one 2 x 2 level at stride 8, ``reg_max=4``, two classes, zero box logits: each anchor
predicts a 24 x 24 px square centred on its point, e.g. [-8, -8, 16, 16] for (4, 4). The GT is the whole
image, class 1, so all four anchors are positives with the same IoU: CIoU = 4/9 - 32/1152 = 5/12 (a
quarter overlap of areas 256 and 576, centres 4 px apart in x and y, enclosing diagonal^2 2 * 24^2,
equal aspect ratios). The alignment is ``t_a = sigmoid(x_a1)^(1/2) * (5/12)^6`` and the soft target on
class 1 is ``q_a = 5/12 * t_a / (max t + 1e-9)``; class 0's target is 0.
"""

from __future__ import annotations

import math

import pytest
import torch

from detloss import DenseCriterion

LOGITS = [[0.0, -2.0], [1.0, 3.0], [-1.0, -4.0], [2.0, 0.5]]  # anchor -> (class 0, class 1)
IOU = 5 / 12


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def soft_targets() -> list[float]:
    t = [math.sqrt(sig(x1)) * IOU**6 for _, x1 in LOGITS]
    return [IOU * ti / (max(t) + 1e-9) for ti in t]


def bce(x: float, t: float, pos_weight: float = 1.0) -> float:
    p = sig(x)
    return -(pos_weight * t * math.log(p) + (1 - t) * math.log(1 - p))


def focal(x: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = sig(x)
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0
    return a_t * (1 - p_t) ** gamma * bce(x, t)


def varifocal(x: float, q: float, alpha: float = 0.75, gamma: float = 2.0) -> float:
    return (q if q > 0 else alpha * sig(x) ** gamma) * bce(x, q)


def quality_focal(x: float, q: float, beta: float = 2.0) -> float:
    return abs(q - sig(x)) ** beta * bce(x, q)


HAND = {"focal": focal, "varifocal": varifocal, "quality_focal": quality_focal, "bce": bce}

CASES = [
    ("focal", {}),
    ("focal", {"alpha": -1.0, "gamma": 1.5}),
    ("varifocal", {}),
    ("varifocal", {"alpha": 0.5, "gamma": 1.0}),
    ("quality_focal", {}),
    ("quality_focal", {"beta": 1.0}),
    ("bce", {"pos_weight": 3.0}),  # BCE with arguments takes the dense-target path too
]


def _feats() -> torch.Tensor:
    feats = torch.zeros(1, 4 * 4 + 2, 2, 2)
    feats[0, 16:] = torch.tensor(LOGITS).T.reshape(2, 2, 2)  # channel c, row, col <- anchor 2 * row + col
    return feats.requires_grad_(True)


WHOLE_IMAGE = {"batch_idx": torch.tensor([0]), "cls": torch.tensor([1]), "bboxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]])}


def test_soft_targets_of_the_hand_case():
    crit = DenseCriterion(2, (8,), 4)
    t = crit.assign([_feats()], WHOLE_IMAGE)
    assert t.fg.tolist() == [[True] * 4] and t.labels.tolist() == [1] * 4
    assert t.weight.tolist() == pytest.approx(soft_targets(), rel=1e-5)
    assert max(soft_targets()) < 0.42  # far from a hard 1: the cases below tell the two apart


@pytest.mark.parametrize(("cls_loss", "args"), CASES)
def test_class_loss_is_the_hand_value_against_the_soft_targets(cls_loss, args):
    crit = DenseCriterion(
        2, (8,), 4, cls_loss=cls_loss, cls_loss_args=args, weights={"cls": 1.0}, normalizers={"cls": "sum"}
    )
    report = crit([_feats()], WHOLE_IMAGE)
    loss = HAND[cls_loss]
    q = soft_targets()
    expected = sum(loss(x0, 0.0, **args) + loss(x1, qa, **args) for (x0, x1), qa in zip(LOGITS, q, strict=True))
    assert report["cls"].value.item() == pytest.approx(expected, rel=1e-5)
    assert report["cls"].num_elements.item() == 8


@pytest.mark.parametrize(("cls_loss", "args"), CASES)
def test_class_loss_under_the_default_normalizer(cls_loss, args):
    # target_sum: D = max(sum q, 1) (the floor), so the value is 0.5 * raw / D
    crit = DenseCriterion(2, (8,), 4, cls_loss=cls_loss, cls_loss_args=args)
    report = crit([_feats()], WHOLE_IMAGE)
    q = soft_targets()
    loss = HAND[cls_loss]
    raw = sum(loss(x0, 0.0, **args) + loss(x1, qa, **args) for (x0, x1), qa in zip(LOGITS, q, strict=True))
    assert report["cls"].normalizer.item() == pytest.approx(max(sum(q), 1.0), rel=1e-5)
    assert report["cls"].value.item() == pytest.approx(0.5 * raw / max(sum(q), 1.0), rel=1e-5)
