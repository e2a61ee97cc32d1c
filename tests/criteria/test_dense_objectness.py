"""DenseCriterion's objectness branch (``obj``) by hand, on the batch of ``test_dense_counts``.

One 4 x 4 level at stride 8, ``reg_max=4``, two classes, box and class outputs zero (positives known by
hand there: image 0 anchors 0, 1, 4, 5; image 2 anchors 5, 6, 7, 9, 10, 11; ``P = 10``, ``B = 3``,
``A = 16``). The objectness channel is 1 everywhere, so each element is ``BCE(1, t) = softplus(1) - t``:
``t = 1`` (``"hard"``) or the soft target (``"score"``) on a positive, 0 on every other anchor, and its
gradient w.r.t. the logit is ``sigmoid(1) - t``.
"""

from __future__ import annotations

import math

import pytest
import torch

from detloss import BackgroundPenalty, DenseCriterion
from test_dense_counts import A, B, C, IGNORED, P, POSITIVES, R, _ignore, _target_sum, _targets

SOFTPLUS_1 = math.log1p(math.e)  # BCE(1, 0)
SIGMOID_1 = 1 / (1 + math.exp(-1))
OBJ = 4 * R + C  # the objectness channel: right after the classes


def _feats(crit: DenseCriterion) -> torch.Tensor:
    x = torch.zeros(B, crit.num_channels, 4, 4)
    x[:, OBJ] = 1.0
    return x.requires_grad_()


def test_layout_term_and_defaults():
    crit = DenseCriterion(C, (8,), R, objectness=True)
    assert crit.num_channels == 4 * R + C + 1 and crit.layout.obj == slice(OBJ, OBJ + 1)
    assert crit.terms == ["box", "cls", "dfl", "obj"]
    assert crit.weights["obj"] == 1.0 and crit.normalizers["obj"].spec == "num_pos"
    both = DenseCriterion(C, (8,), R, objectness=True, background=BackgroundPenalty(), num_vertices=3)
    assert both.terms == ["box", "cls", "dfl", "poly", "bg", "obj"]
    assert both.layout.poly == slice(OBJ + 1, OBJ + 1 + 6)  # the polygon channels move up by one
    assert DenseCriterion(C, (8,), R).terms == ["box", "cls", "dfl"]  # off by default: no obj, no channel


@pytest.mark.parametrize("with_ignore", [False, True])
def test_obj_value_and_gradient_by_hand(with_ignore):
    crit = DenseCriterion(C, (8,), R, objectness=True)
    feats = _feats(crit)
    ignore = _ignore() if with_ignore else None
    report = crit([feats], _targets(), ignore=ignore)
    ignored = IGNORED if with_ignore else 0  # image 1's anchors 0, 1, 2 (image 0's anchor 0 is a positive)
    kept = B * A - ignored
    assert report["obj"].num_elements.item() == kept
    assert report["obj"].num_pos.item() == P and report["obj"].normalizer.item() == P
    assert report["obj"].raw_sum.item() == pytest.approx(kept * SOFTPLUS_1 - P, rel=1e-6)
    assert report["obj"].value.item() == pytest.approx((kept * SOFTPLUS_1 - P) / P, rel=1e-6)

    (grad,) = torch.autograd.grad(report["obj"].value, feats)
    expected = torch.full((B, A), SIGMOID_1 / P)
    for image, anchors in POSITIVES.items():
        expected[image, anchors] = (SIGMOID_1 - 1) / P
    if with_ignore:
        expected[1, :3] = 0.0
    torch.testing.assert_close(grad[:, OBJ].flatten(1), expected)
    others = torch.ones(crit.num_channels, dtype=torch.bool)
    others[OBJ] = False
    assert grad[:, others].abs().max().item() == 0  # obj reads its own channel only


def test_soft_target_is_the_assigners_score():
    crit = DenseCriterion(C, (8,), R, objectness=True, objectness_target="score")
    report = crit([_feats(crit)], _targets())
    assert report["obj"].raw_sum.item() == pytest.approx(B * A * SOFTPLUS_1 - _target_sum(), rel=1e-6)


def test_no_targets_is_finite_and_all_background():
    crit = DenseCriterion(C, (8,), R, objectness=True)
    feats = _feats(crit)
    empty = {"batch_idx": torch.zeros(0, dtype=torch.long), "cls": torch.zeros(0), "bboxes": torch.zeros(0, 4)}
    report = crit([feats], empty)
    # every anchor is background; num_pos is 0, floored at 1
    assert report["obj"].value.item() == pytest.approx(B * A * SOFTPLUS_1, rel=1e-6)
    report.total.backward()
    assert torch.isfinite(feats.grad).all()
    torch.testing.assert_close(feats.grad[:, OBJ], torch.full((B, 4, 4), SIGMOID_1))


def test_bad_options_and_inputs_name_the_argument():
    with pytest.raises(ValueError, match="objectness_target must be one of"):
        DenseCriterion(C, (8,), R, objectness=True, objectness_target="iou")
    with pytest.raises(ValueError, match="objectness must be a bool"):
        DenseCriterion(C, (8,), R, objectness=1)
    crit = DenseCriterion(C, (8,), R, objectness=True)
    with pytest.raises(ValueError, match=r"feats\[0\] must have shape \(3, 19, H, W\)"):  # 4R + C + O: no O here
        crit([torch.zeros(B, 4 * R + C, 4, 4)], _targets())
