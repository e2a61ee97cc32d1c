"""DenseCriterion: every normalizer's count, by value, on a batch whose positives are known by hand.

One 4 x 4 level at stride 8 (a 32 x 32 image), ``reg_max=4``, two classes, all head outputs zero: every
class probability is 1/2 and every anchor predicts a 24 x 24 px square centred on its point (the
expected DFL distance is (0 + 1 + 2 + 3) / 4 = 1.5 cells per side). Anchor ``4 * row + col`` sits at
``(4 + 8 col, 4 + 8 row)``.

* image 0: GT [0, 0, 16, 16] holds the points of anchors 0, 1, 4, 5; all four overlap it (CIoU 5/12 > 0)
  and topk = 10 >= 4, so all four are positives.
* image 1: no object.
* image 2: GT [8, 8, 32, 24] holds x in {12, 20, 28}, y in {12, 20}: anchors 5, 6, 7, 9, 10, 11, six positives.

So ``B = 3``, ``A = 16``, ``P = 10``, two images with an object; and the anchors with a positive in *some*
image are {0, 1, 4, 5, 6, 7, 9, 10, 11}, nine of them (what a count over the wrong axis would give).
"""

from __future__ import annotations

import math

import pytest
import torch

from detloss import BackgroundPenalty, DenseCriterion

B, A, C, R = 3, 16, 2, 4
P = 10
GT_PX = {0: [0.0, 0.0, 16.0, 16.0], 2: [8.0, 8.0, 32.0, 24.0]}
POSITIVES = {0: [0, 1, 4, 5], 2: [5, 6, 7, 9, 10, 11]}
# image 1's anchors 0..2 are ignored, and image 0's anchor 0, which is a positive and so is never ignored
IGNORED = 3


def _targets() -> dict[str, torch.Tensor]:
    boxes = []
    for x1, y1, x2, y2 in GT_PX.values():
        boxes.append([(x1 + x2) / 64, (y1 + y2) / 64, (x2 - x1) / 32, (y2 - y1) / 32])
    return {"batch_idx": torch.tensor([0, 2]), "cls": torch.tensor([1, 0]), "bboxes": torch.tensor(boxes)}


def _ignore() -> torch.Tensor:
    ignore = torch.zeros(B, A, dtype=torch.bool)
    ignore[1, :3] = True
    ignore[0, 0] = True
    return ignore


def _ciou(gt: list[float], pred: list[float], eps: float = 1e-7) -> float:
    """CIoU with ultralytics' eps placements (the assigner's IoU), in plain Python."""
    ax1, ay1, ax2, ay2 = gt
    bx1, by1, bx2, by2 = pred
    w1, h1, w2, h2 = ax2 - ax1, ay2 - ay1 + eps, bx2 - bx1, by2 - by1 + eps
    inter = max(min(ax2, bx2) - max(ax1, bx1), 0) * max(min(ay2, by2) - max(ay1, by1), 0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    c2 = (max(ax2, bx2) - min(ax1, bx1)) ** 2 + (max(ay2, by2) - min(ay1, by1)) ** 2 + eps
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    return iou - (rho2 / c2 + v * v / (v - iou + (1 + eps)))


def _target_sum() -> float:
    """Sum of the soft targets: per GT, ``t_a * max IoU / (max t + 1e-9)``, ``t = sqrt(1/2) * IoU^6``."""
    total = 0.0
    for image, anchors in POSITIVES.items():
        ious = []
        for a in anchors:
            x, y = 4 + 8 * (a % 4), 4 + 8 * (a // 4)
            ious.append(_ciou(GT_PX[image], [x - 12, y - 12, x + 12, y + 12]))
        t = [math.sqrt(0.5) * iou**6 for iou in ious]
        total += sum(ti * max(ious) / (max(t) + 1e-9) for ti in t)
    return total


def test_the_hand_derived_positives_are_the_criterions():
    assert _ciou(GT_PX[0], [-8.0, -8.0, 16.0, 16.0]) == pytest.approx(5 / 12, rel=1e-6)  # 4/9 - 32/1152
    crit = DenseCriterion(C, (8,), R)
    t = crit.assign([torch.zeros(B, crit.num_channels, 4, 4)], _targets())
    assert {i: t.fg[i].nonzero().flatten().tolist() for i in range(B)} == {**POSITIVES, 1: []}


# term -> expected normalizer, with ``ignore`` (see IGNORED) and without
NORMALIZERS = {
    "sum": lambda ign: {"box": 1, "cls": 1, "dfl": 1, "bg": 1},
    "fixed:3": lambda ign: {"box": 3, "cls": 3, "dfl": 3, "bg": 3},
    "num_pos": lambda ign: dict.fromkeys(("box", "cls", "dfl", "bg"), P),
    "target_sum": lambda ign: dict.fromkeys(("box", "cls", "dfl", "bg"), _target_sum()),
    "batch_size": lambda ign: dict.fromkeys(("box", "cls", "dfl", "bg"), B),
    "images_with_fg": lambda ign: dict.fromkeys(("box", "cls", "dfl", "bg"), 2),
    "density": lambda ign: dict.fromkeys(("box", "cls", "dfl", "bg"), B + P / A),  # B (1 + P / (B A)) = 3.625
    "ema_num_pos:0.9": lambda ign: dict.fromkeys(("box", "cls", "dfl", "bg"), P),  # the first count
    # mean: box and dfl have one element per positive; cls one per kept anchor and class; bg one per
    # background anchor: B A - P - ignored
    "mean": lambda ign: {"box": P, "dfl": P, "cls": (B * A - ign) * C, "bg": B * A - P - ign},
}


@pytest.mark.parametrize("with_ignore", [False, True])
@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_every_normalizer_count_by_value(name, with_ignore):
    crit = DenseCriterion(
        C, (8,), R, background=BackgroundPenalty("max"), normalizers=dict.fromkeys(("box", "cls", "dfl", "bg"), name)
    )
    feats = [torch.zeros(B, crit.num_channels, 4, 4, requires_grad=True)]
    report = crit(feats, _targets(), ignore=_ignore() if with_ignore else None)
    ignored = IGNORED if with_ignore else 0
    expected = NORMALIZERS[name](ignored)
    got = {term: report[term].normalizer.item() for term in expected}
    assert got == pytest.approx(expected, rel=1e-6)
    assert {term: report[term].normalizer_name for term in expected} == dict.fromkeys(expected, name)
    # recorded element counts: positives for box and dfl, kept anchor-classes for cls, negatives for bg
    counts = {term: report[term].num_elements.item() for term in ("box", "dfl", "cls", "bg")}
    assert counts == {"box": P, "dfl": P, "cls": (B * A - ignored) * C, "bg": B * A - P - ignored}
    assert report["box"].num_pos.item() == P


def test_bg_mean_is_the_mean_penalty_over_background_anchors():
    # every negative anchor's penalty is sigmoid(max logit) = sigmoid(0) = 1/2: the mean is exactly 1/2
    # whatever the count, provided the divisor is the number of summed elements, B A - P - ignored = 35
    crit = DenseCriterion(C, (8,), R, background=BackgroundPenalty("max"), weights={"bg": 1.0})
    feats = [torch.zeros(B, crit.num_channels, 4, 4, requires_grad=True)]
    report = crit(feats, _targets(), ignore=_ignore())
    assert report["bg"].raw_sum.item() == pytest.approx(0.5 * (B * A - P - IGNORED))
    assert report["bg"].value.item() == pytest.approx(0.5)
