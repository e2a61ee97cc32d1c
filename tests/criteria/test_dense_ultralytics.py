"""``DenseCriterion(preset="ultralytics")`` pinned to ultralytics 8.4 ``v8DetectionLoss`` numbers.

ultralytics cannot be installed here, so its behaviour is pinned two ways:

* hand-worked cases on a 32x32 image (strides 8 and 16, 4x4 + 2x2 = 20 anchors, 2 classes), whose expected
  terms are computed below with plain ``math`` (explicit loops over anchors and classes), with the
  assignment worked out by hand in comments and cross-checked by a plain-Python candidate test;
* an independent re-implementation of ``v8DetectionLoss`` in ultralytics' own layout
  (:mod:`detloss.testing.reference_yolo`: permute + contiguous predictions, dense ``(B, M, A)`` assigner
  tensors, BCE over ``(B, A, C)``), written from the semantics without any detloss code, checked against
  the hand cases here and compared with the preset on random inputs.

Semantics being pinned (ultralytics 8.4, ``v8DetectionLoss`` + ``TaskAlignedAssigner``):
gains box 7.5 / cls 0.5 / dfl 1.5; ``topk=10, alpha=0.5, beta=6``; a candidate is an anchor point strictly
inside the GT (``> 1e-9``), where for this test only a GT side shorter than ``SMALL_GT_RULE[0]`` is
replaced by ``SMALL_GT_RULE[1]`` about the box centre; ``t = s^0.5 * CIoU(gt, pred)^6`` on candidates;
top-k per GT; an anchor claimed by several GTs goes to the one of highest CIoU; soft target
``t * max_P IoU / (max_P t + 1e-9)``; ``D = max(sum of soft targets, 1)``; cls = BCE sum / D; box =
sum (1 - CIoU) * soft-target mass / D and DFL likewise, both in grid units; ``total = sum * B``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from detloss.criteria.dense import DenseCriterion
from detloss.testing.reference_yolo import v8_detection_loss

GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}
EPS_IOU = 1e-7  # ultralytics bbox_iou
EPS_TAL = 1e-9  # ultralytics TaskAlignedAssigner (inside test and normalization)
TOPK, ALPHA, BETA = 10, 0.5, 6.0
#: The 8.4 small-GT rule for strides (8, 16, ...) as ``(below, size)``: every GT side shorter than ``below``
#: becomes ``size`` (about the centre) for candidate selection only. Current 8.4 releases (8.4.128 on) use
#: the second stride for both, ``(16, 16)``, the rule the preset follows and this suite pins; 8.4.0-8.4.127
#: compared with the first stride, ``(8, 16)`` (``ultralytics_min_candidate_size(strides, legacy=True)``).
#: Every expectation below follows this one constant.
SMALL_GT_RULE = (16.0, 16.0)


# ----------------------------------------------------------------------------------------------------------
# Plain-Python math
# ----------------------------------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce(x: float, t: float) -> float:
    """-(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))), in the stable form."""
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def expected_distance(row: list[float]) -> float:
    """DFL decode of one side: softmax(row) . (0, 1, ..., R - 1)."""
    return sum(math.exp(lp) * k for k, lp in enumerate(log_softmax(row)))


def ciou(b1: tuple[float, ...], b2: tuple[float, ...], eps: float = EPS_IOU) -> float:
    """ultralytics ``bbox_iou(b1, b2, xywh=False, CIoU=True)`` for one pair of xyxy boxes."""
    x1, y1, x2, y2 = b1
    u1, v1, u2, v2 = b2
    w1, h1 = x2 - x1, y2 - y1 + eps
    w2, h2 = u2 - u1, v2 - v1 + eps
    inter = max(min(x2, u2) - max(x1, u1), 0.0) * max(min(y2, v2) - max(y1, v1), 0.0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = max(x2, u2) - min(x1, u1)
    ch = max(y2, v2) - min(y1, v1)
    c2 = cw**2 + ch**2 + eps
    rho2 = ((u1 + u2 - x1 - x2) ** 2 + (v1 + v2 - y1 - y2) ** 2) / 4
    v = (4 / math.pi**2) * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def dfl_side(row: list[float], target: float) -> float:
    """DFL of one side; the target (grid units) is clamped to [0, R - 1 - 0.01]."""
    reg_max = len(row)
    t = min(max(target, 0.0), reg_max - 1 - 0.01)
    left = int(t)
    wl = left + 1 - t
    wr = 1 - wl
    lp = log_softmax(row)
    return -lp[left] * wl - lp[left + 1] * wr


# ----------------------------------------------------------------------------------------------------------
# Hand cases: a tiny head whose logits are zero except for a few chosen values
# ----------------------------------------------------------------------------------------------------------


@dataclass
class HandCase:
    """A 32x32 image batch, strides (8, 16): anchors 0-15 are level 0 (4x4, points 4, 12, 20, 28 px, row-major,
    index ``4 * gy + gx``), anchors 16-19 level 1 (2x2, points 8, 24 px, index ``16 + 2 * gy + gx``)."""

    batch: int
    reg_max: int
    gts: list[tuple[int, int, tuple[float, float, float, float]]]  # (image, class, pixel xyxy)
    cls_logits: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)  # (image, anchor)
    box_logits: dict[tuple[int, int, int], dict[int, float]] = field(default_factory=dict)  # (image, anchor, side)
    box_bias: dict[int, float] = field(default_factory=dict)  # bin -> logit, on every side of every anchor
    num_classes: int = 2
    strides: tuple[int, int] = (8, 16)
    image: int = 32

    # geometry ---------------------------------------------------------------------------------------------
    def levels(self) -> list[tuple[int, int]]:
        return [(self.image // s, s) for s in self.strides]  # (side in cells, stride)

    def anchors(self) -> list[tuple[int, int, int, int]]:
        """(level, gy, gx, stride) of every anchor in ultralytics order."""
        out = []
        for level, (side, s) in enumerate(self.levels()):
            out += [(level, gy, gx, s) for gy in range(side) for gx in range(side)]
        return out

    def grid_point(self, a: int) -> tuple[float, float, int]:
        _, gy, gx, s = self.anchors()[a]
        return gx + 0.5, gy + 0.5, s

    # logits -----------------------------------------------------------------------------------------------
    def cls_row(self, b: int, a: int) -> list[float]:
        return list(self.cls_logits.get((b, a), (0.0,) * self.num_classes))

    def box_row(self, b: int, a: int, side: int) -> list[float]:
        row = [self.box_bias.get(k, 0.0) for k in range(self.reg_max)]
        for k, v in self.box_logits.get((b, a, side), {}).items():
            row[k] = v
        return row

    def pred_grid(self, b: int, a: int) -> tuple[float, float, float, float]:
        """Predicted xyxy box in grid units: anchor point -/+ expected ltrb distances."""
        ax, ay, _ = self.grid_point(a)
        lt, tp, rt, bt = (expected_distance(self.box_row(b, a, k)) for k in range(4))
        return ax - lt, ay - tp, ax + rt, ay + bt

    def pred_px(self, b: int, a: int) -> tuple[float, float, float, float]:
        s = self.grid_point(a)[2]
        return tuple(v * s for v in self.pred_grid(b, a))

    # the inputs of the criterion ----------------------------------------------------------------------------
    def feats(self) -> list[torch.Tensor]:
        r4 = 4 * self.reg_max
        out = [torch.zeros(self.batch, r4 + self.num_classes, side, side) for side, _ in self.levels()]
        for b in range(self.batch):
            for a, (level, gy, gx, _) in enumerate(self.anchors()):
                for side in range(4):
                    row = self.box_row(b, a, side)
                    out[level][b, side * self.reg_max : (side + 1) * self.reg_max, gy, gx] = torch.tensor(row)
                out[level][b, r4:, gy, gx] = torch.tensor(self.cls_row(b, a))
        return [f.requires_grad_(True) for f in out]

    def targets(self) -> dict[str, torch.Tensor]:
        rows = [
            ((x1 + x2) / 2 / self.image, (y1 + y2) / 2 / self.image, (x2 - x1) / self.image, (y2 - y1) / self.image)
            for _, _, (x1, y1, x2, y2) in self.gts
        ]
        return {
            "batch_idx": torch.tensor([g[0] for g in self.gts], dtype=torch.long),
            "cls": torch.tensor([g[1] for g in self.gts], dtype=torch.long),
            "bboxes": torch.tensor(rows, dtype=torch.float32).reshape(-1, 4),
        }

    # plain-Python cross-check of the hand-worked candidate sets -------------------------------------------
    def candidates(self, box: tuple[float, float, float, float], rule: tuple[float, float] | None) -> list[int]:
        """Anchors strictly inside ``box``, its sides first enlarged by ``rule = (below, size)`` if given."""
        x1, y1, x2, y2 = box
        if rule is not None:
            below, size = rule
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            w = size if w < below else w
            h = size if h < below else h
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        out = []
        for a in range(len(self.anchors())):
            gx, gy, s = self.grid_point(a)
            px, py = gx * s, gy * s
            if min(px - x1, py - y1, x2 - px, y2 - py) > EPS_TAL:
                out.append(a)
        return out


def expected_terms(case: HandCase, positives: dict[int, list[int]]) -> dict[str, float]:
    """Terms after gains (and the fg count) for a hand-determined assignment ``{gt index: [anchors]}``."""
    target = {}  # (image, anchor) -> (class, soft target, gt box px)
    for j, anchors in positives.items():
        b, c, box = case.gts[j]
        ious = [max(ciou(box, case.pred_px(b, a)), 0.0) for a in anchors]  # GT first, as the assigner
        align = [sigmoid(case.cls_row(b, a)[c]) ** ALPHA * iou**BETA for a, iou in zip(anchors, ious, strict=True)]
        for a, t in zip(anchors, align, strict=True):
            assert (b, a) not in target, "an anchor can belong to one GT only"
            target[(b, a)] = (c, t * max(ious) / (max(align) + EPS_TAL), box)
    denom = max(sum(score for _, score, _ in target.values()), 1.0)

    cls_sum = 0.0
    for b in range(case.batch):
        for a in range(len(case.anchors())):
            c_pos, score, _ = target.get((b, a), (-1, 0.0, None))
            row = case.cls_row(b, a)
            for c in range(case.num_classes):
                cls_sum += bce(row[c], score if c == c_pos else 0.0)

    box_sum = dfl_sum = 0.0
    for (b, a), (_, score, box) in target.items():
        ax, ay, s = case.grid_point(a)
        tgt = tuple(v / s for v in box)  # grid units
        box_sum += (1.0 - ciou(case.pred_grid(b, a), tgt)) * score  # pred first, as BboxLoss
        ltrb = (ax - tgt[0], ay - tgt[1], tgt[2] - ax, tgt[3] - ay)
        dfl_sum += sum(dfl_side(case.box_row(b, a, k), ltrb[k]) for k in range(4)) / 4 * score

    terms = {
        "box": GAINS["box"] * box_sum / denom,
        "cls": GAINS["cls"] * cls_sum / denom,
        "dfl": GAINS["dfl"] * dfl_sum / denom,
    }
    terms["fg"] = float(len(target))
    return terms


def check_report(report, expected: dict[str, float], scale: float) -> None:
    for name in ("box", "cls", "dfl"):
        assert report[name].value.item() == pytest.approx(expected[name], rel=1e-5, abs=1e-12), name
    assert report["box"].num_pos.item() == expected["fg"]
    total = (expected["box"] + expected["cls"] + expected["dfl"]) * scale
    assert report.total.item() == pytest.approx(total, rel=1e-5)


# Case 1 — a 6x5 px GT that no anchor point lies inside: the 8.4 small-GT rule makes it learnable.
#
# GT (class 1) xyxy = [13, 12.5, 19, 17.5], centre (16, 15). No anchor point is strictly inside: level-0
# points are at x, y in {4, 12, 20, 28} (12 < 12.5 and 12 < 13, 20 > 19), level-1 points at {8, 24}.
# Both sides (6, 5) are shorter than strides[0] = 8, so for candidate selection they become 16:
# [8, 7, 24, 23]. Strictly inside: level-0 x in {12, 20}, y in {12, 20} -> anchors 5, 6, 9, 10; level-1
# points x = 8 and x = 24 lie on the border (difference 0, not > 1e-9) -> none. 4 candidates < topk = 10,
# and each has CIoU > 0 (asserted below), so all 4 are positives; one GT, so no conflicts.
# Chosen logits: anchor 5 is confident in class 1, anchor 6 doubtful, anchor 9 has a skewed left-side
# distribution; for reg_max = 16 every side gets a bias on bins 1 and 2 so the boxes stay ~1.6 cells.
SMALL_GT = (13.0, 12.5, 19.0, 17.5)
SMALL_GT_POSITIVES = [5, 6, 9, 10]


def small_gt_case(reg_max: int) -> HandCase:
    return HandCase(
        batch=1,
        reg_max=reg_max,
        gts=[(0, 1, SMALL_GT)],
        cls_logits={(0, 5): (-1.0, 2.0), (0, 6): (0.25, -0.5), (0, 12): (0.75, 0.0)},
        box_logits={(0, 9, 0): {0: 2.0, 3: -1.0}, (0, 10, 3): {2: 1.5}},
        box_bias={} if reg_max == 4 else {1: 6.0, 2: 6.0},
    )


# Case 2 — two images, image 1 has no GT; two overlapping GTs in image 0.
#
# GT A (class 0) = [2, 2, 30, 18]: level 0 x in {4, 12, 20, 28}, y in {4, 12} -> anchors 0-7; level 1
# x in {8, 24}, y = 8 -> anchors 16, 17. Exactly 10 candidates = topk, all with t > 0, so all are picked.
# GT B (class 1) = [10, 10, 26, 30]: level 0 x in {12, 20}, y in {12, 20, 28} -> anchors 5, 6, 9, 10, 13, 14;
# level 1 (24, 24) -> anchor 19. 7 candidates, all picked.
# Anchors 5 (12, 12) and 6 (20, 12) are claimed by both. Their predicted boxes (1.5 cells each side, 24 px
# squares, except where logits say otherwise) overlap A much more than B (IoU ~0.52 vs ~0.28 and ~0.33),
# so both go to A (the CIoU comparison is asserted below). Final: A -> 0-7, 16, 17; B -> 9, 10, 13, 14, 19.
# Image 1 has only background anchors, which still enter the cls BCE (sum over all images / D).
GT_A = (2.0, 2.0, 30.0, 18.0)
GT_B = (10.0, 10.0, 26.0, 30.0)
A_CANDIDATES = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17]
B_CANDIDATES = [5, 6, 9, 10, 13, 14, 19]
TWO_IMAGE_POSITIVES = {0: A_CANDIDATES, 1: [9, 10, 13, 14, 19]}


def two_image_case() -> HandCase:
    return HandCase(
        batch=2,
        reg_max=4,
        gts=[(0, 0, GT_A), (0, 1, GT_B)],
        cls_logits={(0, 5): (1.5, -0.5), (0, 9): (0.0, 1.0), (0, 17): (-0.75, 0.5), (1, 3): (-2.0, 3.0)},
        box_logits={(0, 0, 0): {0: 2.0, 3: -1.0}, (0, 19, 3): {2: 1.0, 3: 0.5}, (1, 3, 1): {0: 4.0}},
    )


# Case 3 — a 10x10 px GT, between the two strides: this is where the 8.4 rules differ.
#
# GT (class 0) = [13, 13, 23, 23]. Under the 8.4.0 rule (8, 16) it is not small (10 >= 8) and keeps its
# size: strictly inside is level-0 (20, 20) only -> anchor 10 (12 < 13, 28 > 23; level-1 24 > 23, 8 < 13).
# Under the later rule (16, 16) it becomes [10, 10, 26, 26]: anchors 5, 6, 9, 10 and level-1 (24, 24) -> 19.
# Every one of these has CIoU > 0 with its 24 px / 48 px predicted square (asserted), so all are positives.
MID_GT = (13.0, 13.0, 23.0, 23.0)
MID_GT_POSITIVES = [5, 6, 9, 10, 19] if SMALL_GT_RULE[0] > 10 else [10]


def mid_gt_case() -> HandCase:
    return HandCase(batch=1, reg_max=4, gts=[(0, 0, MID_GT)], cls_logits={(0, 10): (0.5, -1.0)})


def run(case: HandCase, **kwargs):
    crit = DenseCriterion(case.num_classes, case.strides, case.reg_max, **kwargs)
    return crit(case.feats(), case.targets())


@pytest.mark.parametrize("reg_max", [4, 16])
def test_small_gt_gets_candidates_only_by_enlargement(reg_max):
    case = small_gt_case(reg_max)
    assert case.candidates(SMALL_GT, rule=None) == []
    assert case.candidates(SMALL_GT, rule=SMALL_GT_RULE) == SMALL_GT_POSITIVES
    assert all(ciou(SMALL_GT, case.pred_px(0, a)) > 0 for a in SMALL_GT_POSITIVES)

    expected = expected_terms(case, {0: SMALL_GT_POSITIVES})
    assert expected["fg"] == 4 and expected["box"] > 0 and expected["dfl"] > 0
    check_report(run(case, preset="ultralytics"), expected, scale=1)


def test_small_gt_without_preset_is_background():
    """Default options use the classic candidate rule: no anchor inside -> no positive, D = 1."""
    case = small_gt_case(4)
    expected = expected_terms(case, {})
    assert expected["box"] == 0 and expected["dfl"] == 0 and expected["fg"] == 0
    report = run(case)
    check_report(report, expected, scale=1)


def test_two_images_one_without_gt():
    case = two_image_case()
    assert case.candidates(GT_A, rule=SMALL_GT_RULE) == A_CANDIDATES
    assert case.candidates(GT_B, rule=SMALL_GT_RULE) == B_CANDIDATES
    for j, box in enumerate((GT_A, GT_B)):
        assert all(ciou(box, case.pred_px(0, a)) > 0 for a in (A_CANDIDATES, B_CANDIDATES)[j]), "t > 0 everywhere"
    for a in (5, 6):  # the two shared anchors: A has the larger CIoU with their predicted boxes
        assert ciou(GT_A, case.pred_px(0, a)) > ciou(GT_B, case.pred_px(0, a))

    expected = expected_terms(case, TWO_IMAGE_POSITIVES)
    assert expected["fg"] == 15
    report = run(case, preset="ultralytics")
    check_report(report, expected, scale=2)
    assert report.total.item() == pytest.approx(
        2 * sum(report[k].value.item() for k in ("box", "cls", "dfl")), rel=1e-6
    )


def test_side_between_first_and_second_stride():
    case = mid_gt_case()
    assert case.candidates(MID_GT, rule=SMALL_GT_RULE) == MID_GT_POSITIVES
    assert all(ciou(MID_GT, case.pred_px(0, a)) > 0 for a in MID_GT_POSITIVES)
    expected = expected_terms(case, {0: MID_GT_POSITIVES})
    check_report(run(case, preset="ultralytics"), expected, scale=1)


def test_default_total_is_unscaled_sum():
    case = two_image_case()  # without the preset the small-GT rule is off, but A and B are not small
    expected = expected_terms(case, TWO_IMAGE_POSITIVES)
    report = run(case)
    check_report(report, expected, scale=1)
    assert report.total.item() == pytest.approx(sum(report[k].value.item() for k in ("box", "cls", "dfl")), rel=1e-6)


@pytest.mark.parametrize(
    "case, positives",
    [
        (small_gt_case(4), {0: SMALL_GT_POSITIVES}),
        (two_image_case(), TWO_IMAGE_POSITIVES),
        (mid_gt_case(), {0: MID_GT_POSITIVES}),
    ],
    ids=["small_gt", "two_images", "mid_gt"],
)
def test_reference_matches_hand_cases(case, positives):
    """The tensor reference below agrees with the plain-Python hand computations (it is checked, too)."""
    expected = expected_terms(case, positives)
    ref = v8_detection_loss(case.feats(), case.targets(), case.num_classes, case.strides, case.reg_max)
    for name in ("box", "cls", "dfl"):
        assert ref[name].item() == pytest.approx(expected[name], rel=1e-5, abs=1e-12), name
    assert ref["fg"] == expected["fg"]


def random_batch(seed: int, batch: int, image: int = 160, nc: int = 80, reg_max: int = 16):
    """Random head outputs and 1-6 GTs per image (image ``batch - 1`` empty), sides 3-90 px so that the
    small-GT rule (< 8 px), the in-between range (8-16 px) and large boxes all occur."""
    g = torch.Generator().manual_seed(seed)
    strides = (8, 16, 32)
    feats = [torch.randn(batch, 4 * reg_max + nc, image // s, image // s, generator=g) for s in strides]
    for f in feats:
        f[:, 4 * reg_max :] -= 2.0  # class logits centred on sigmoid ~ 0.12, like a head early in training
    counts = torch.randint(1, 7, (batch,), generator=g)
    counts[-1] = 0
    n = int(counts.sum())
    sides = torch.cat(
        (torch.empty(n, 2).uniform_(3, 16, generator=g), torch.empty(n, 2).uniform_(16, 90, generator=g))
    )[torch.randperm(2 * n, generator=g)[:n]]
    centres = sides / 2 + (image - sides) * torch.rand(n, 2, generator=g)
    targets = {
        "batch_idx": torch.repeat_interleave(torch.arange(batch), counts),
        "cls": torch.randint(nc, (n,), generator=g),
        "bboxes": torch.cat((centres, sides), 1) / image,
    }
    return [f.requires_grad_(True) for f in feats], targets, strides


@pytest.mark.parametrize("seed, batch", [(0, 2), (1, 3), (2, 4), (3, 4), (4, 3)])
def test_preset_matches_dense_reference(seed, batch):
    feats, targets, strides = random_batch(seed, batch)
    report = DenseCriterion(80, strides, 16, preset="ultralytics")(feats, targets)
    ref = v8_detection_loss([f.detach() for f in feats], targets, 80, strides, 16)
    assert ref["fg"] > 0
    assert int(report["box"].num_pos.item()) == ref["fg"]
    for name in ("box", "cls", "dfl"):
        assert report[name].value.item() == pytest.approx(ref[name].item(), rel=1e-5), name
    expected_total = sum(ref[name].item() for name in ("box", "cls", "dfl")) * batch
    assert report.total.item() == pytest.approx(expected_total, rel=1e-5)


def test_reference_gradients_match():
    """Same gradient with respect to the head outputs (what training actually consumes)."""
    feats, targets, strides = random_batch(7, 3)
    DenseCriterion(80, strides, 16, preset="ultralytics")(feats, targets).total.backward()
    ref_feats = [f.detach().clone().requires_grad_(True) for f in feats]
    ref = v8_detection_loss(ref_feats, targets, 80, strides, 16)
    ((ref["box"] + ref["cls"] + ref["dfl"]) * 3).backward()
    for f, r in zip(feats, ref_feats, strict=True):
        torch.testing.assert_close(f.grad, r.grad, rtol=1e-4, atol=1e-6)
