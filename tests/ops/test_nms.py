"""NMS against a brute-force greedy reference written in plain Python."""

from __future__ import annotations

import pytest
import torch

from detloss.evaluate import batched_nms, nms


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _brute_nms(boxes, scores, thr):
    b, s = boxes.tolist(), scores.tolist()
    keep = []
    for i in sorted(range(len(b)), key=lambda i: (-s[i], i)):
        if all(_iou(b[i], b[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def _random(n, seed, spread=200.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * spread
    wh = 2 + torch.rand(n, 2, generator=g, dtype=dtype) * 40
    scores = (torch.rand(n, generator=g, dtype=dtype) * 20).round() / 20  # many ties
    return torch.cat([xy, xy + wh], 1), scores


@pytest.mark.parametrize(("n", "seed", "thr"), [(0, 0, 0.5), (1, 0, 0.5), (40, 1, 0.3), (300, 2, 0.5), (1100, 3, 0.7)])
def test_nms_matches_brute_force(n, seed, thr):
    boxes, scores = _random(n, seed)
    keep = nms(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == _brute_nms(boxes, scores, thr)


def test_nms_float32_and_threshold_is_strict():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 5.0, 10.0, 15.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.5, 0.9, 0.5])
    # IoU(0, 1) = 1/3 exactly: kept at threshold 1/3 (suppression needs IoU > threshold)
    assert nms(boxes, scores, 1 / 3).tolist() == [1, 0]
    assert nms(boxes, scores, 0.3).tolist() == [1]
    assert nms(boxes, scores, 1.0).tolist() == [1, 0, 2]  # tie: lower index first


def test_batched_nms_matches_per_class_brute_force():
    boxes, scores = _random(600, 4, spread=80.0)
    boxes = boxes - 40.0  # negative coordinates: the offset must use the full span
    labels = torch.randint(0, 5, (600,), generator=torch.Generator().manual_seed(5))
    keep = batched_nms(boxes, scores, labels, 0.5)
    expected = []
    for c in range(5):
        idx = (labels == c).nonzero().squeeze(1)
        expected += [idx[i].item() for i in _brute_nms(boxes[idx], scores[idx], 0.5)]
    s = scores.tolist()
    assert keep.tolist() == sorted(expected, key=lambda i: (-s[i], i))


def test_batched_nms_classes_do_not_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3, 1)
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 1]), 0.5)
    assert keep.tolist() == [0, 1]
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="labels"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
