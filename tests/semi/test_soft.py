"""The dense soft class term (u_soft) by hand on a tiny case."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.semi.soft import DenseSoftClassTerm, dense_soft_targets

TEACHER = torch.tensor([[[0.8, 0.2], [0.1, 0.0], [0.3, 0.6]]])  # (B=1, A=3, C=2)


def test_targets_are_the_teachers_scores_on_its_top_anchors():
    targets, selected = dense_soft_targets(TEACHER, 2)  # best scores 0.8, 0.1, 0.6: anchors 0 and 2
    assert selected.tolist() == [[True, False, True]]
    assert targets.flatten().tolist() == pytest.approx([0.8, 0.2, 0.0, 0.0, 0.3, 0.6])
    with pytest.raises(ValueError, match=r"\(B, A, C\)"):
        dense_soft_targets(TEACHER[0], 2)


def test_soft_term_by_hand():
    logits = torch.zeros(1, 3, 2, requires_grad=True)  # sigmoid 0.5; BCE(0, q) = log 2 for every q
    record = DenseSoftClassTerm(topk=2, beta=2.0)(logits, TEACHER, weight=2.0)
    # |q - 0.5|^2: 0.09 + 0.09 (anchor 0) + 0.25 + 0.25 (anchor 1: target 0) + 0.04 + 0.01 (anchor 2)
    raw = (0.09 + 0.09 + 0.25 + 0.25 + 0.04 + 0.01) * math.log(2)
    assert float(record.raw_sum) == pytest.approx(raw, rel=1e-6)
    assert float(record.normalizer) == pytest.approx(0.8 + 0.2 + 0.3 + 0.6)  # target_sum: score mass
    assert float(record.value.detach()) == pytest.approx(2.0 * raw / 1.9, rel=1e-6)
    assert record.normalizer_name == "target_sum"
    record.value.backward()
    # d/dx |q - s|^2 BCE(x, q) at x = 0: 2 (s - q) s (1 - s) log 2 + |q - s|^2 (s - q), times 2 / 1.9
    q, s = 0.8, 0.5
    by_hand = (2 * (s - q) * s * (1 - s) * math.log(2) + (q - s) ** 2 * (s - q)) * 2 / 1.9
    assert float(logits.grad[0, 0, 0]) == pytest.approx(by_hand, rel=1e-5)


def test_ignored_unselected_anchors_are_left_out_and_selected_ones_never_are():
    ignore = torch.tensor([[True, True, False]])  # anchor 0 is selected: kept anyway
    record = DenseSoftClassTerm(topk=2)(torch.zeros(1, 3, 2), TEACHER, ignore)
    assert float(record.raw_sum) == pytest.approx((0.09 + 0.09 + 0.04 + 0.01) * math.log(2), rel=1e-6)
    assert float(record.num_elements) == 4


def test_no_teacher_score_keeps_the_term_finite():
    logits = torch.zeros(2, 3, 2, requires_grad=True)
    record = DenseSoftClassTerm(topk=2, normalizer="target_sum")(logits, torch.zeros(2, 3, 2))
    assert float(record.normalizer) == 1.0  # the floor
    record.value.backward()
    assert torch.isfinite(record.value) and torch.isfinite(logits.grad).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="topk"):
        DenseSoftClassTerm(topk=0)
    with pytest.raises(ValueError, match="normalizer"):
        DenseSoftClassTerm(normalizer="nope")
    with pytest.raises(ValueError, match="ignore"):
        DenseSoftClassTerm()(torch.zeros(1, 3, 2), TEACHER, torch.zeros(1, 3))
