"""RPNCriterion with an anchor in the ignore band: it is neither sampled nor counted in ``num_samples``.

Image 0, GT [1, 0, 11, 10] (pos_iou 0.7, neg_iou 0.3):

* anchor 0 [0, 0, 10, 10]: IoU 90 / 110 = 0.82 -> positive;
* anchor 1 [3, 0, 13, 10]: IoU 80 / 120 = 0.67, in [0.3, 0.7), and not the GT's best -> ignored;
* anchors 2, 3 [20, 20, 30, 30], [40, 40, 50, 50]: IoU 0 -> negatives.

Image 1 has no GT: four negatives. With a budget that takes everything the sample is 1 positive and
2 + 4 negatives: ``num_samples = 7`` (8 if the ignored anchor were counted).
"""

from __future__ import annotations

import math

import pytest
import torch

from detloss.criteria.rpn import RPNCriterion

ANCHORS = torch.tensor([[0.0, 0, 10, 10], [3, 0, 13, 10], [20, 20, 30, 30], [40, 40, 50, 50]])
GT = [torch.tensor([[1.0, 0, 11, 10]]), torch.zeros(0, 4)]
LOGITS = torch.tensor([[0.5, 2.0, -1.0, 0.3], [0.0, 1.5, -2.0, 0.7]])
IGNORED = (0, 1)  # image, anchor


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _run(**kw):
    crit = RPNCriterion(normalizers={"obj": "num_samples", "box": "num_samples"}, **kw)
    obj = LOGITS.clone().requires_grad_()
    deltas = torch.zeros(2, 4, 4, requires_grad=True)
    return crit, crit(obj, deltas, ANCHORS, GT), obj


def test_the_ignore_band_anchor_is_ignored_by_the_assigner():
    crit = RPNCriterion()
    t = crit.assign(ANCHORS, GT)
    assert t.gt_index.tolist() == [[0, -2, -1, -1], [-1, -1, -1, -1]]
    assert t.max_iou[0, :2].tolist() == pytest.approx([90 / 110, 80 / 120])


def test_num_samples_counts_sampled_positives_and_negatives_only():
    _, report, obj = _run()
    x = LOGITS.tolist()
    raw = softplus(-x[0][0]) + softplus(x[0][2]) + softplus(x[0][3]) + sum(softplus(v) for v in x[1])
    assert report["obj"].normalizer.item() == 7.0 and report["box"].normalizer.item() == 7.0
    assert report["obj"].num_elements.item() == 7.0 and report["obj"].num_pos.item() == 1.0
    assert report["obj"].value.item() == pytest.approx(raw / 7, rel=1e-6)
    report.total.backward()
    assert obj.grad[IGNORED].item() == 0.0
    assert (obj.grad != 0).sum().item() == 7


def test_num_samples_with_a_budget_smaller_than_the_negatives():
    # sample_num = 3, pos_fraction 0.5: image 0 takes its positive and both negatives (3), image 1 three of
    # its four negatives: 6 samples (7 sampleable anchors, 8 with the ignored one)
    crit, report, obj = _run(sample_num=3)
    t = crit.assign(ANCHORS, GT)
    assert t.sampled.sum(1).tolist() == [3, 3] and not t.sampled[IGNORED]
    assert report["obj"].normalizer.item() == 6.0 and report["obj"].num_elements.item() == 6.0
    report.total.backward()
    assert obj.grad[IGNORED].item() == 0.0
