"""RPNCriterion: hand-computed terms for every normalizer, box losses, empty GT, sampling determinism."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.ops.box_coder import decode_deltas, encode_deltas
from detloss.criteria.rpn import RPNCriterion

# Image 0: GT 0 overlaps anchor 0 (IoU 90/110) and GT 1 anchor 3 (IoU 100/110): 2 positives, 2 negatives.
# Image 1: no GT, 4 negatives. The budget takes everything: 8 samples, 2 positives, 1 image with fg.
ANCHORS = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [20, 20, 30, 30]])
GT = [torch.tensor([[1.0, 0, 11, 10], [20, 20, 30, 31]]), torch.zeros(0, 4)]
LOGITS = torch.tensor([[0.5, -1.0, 2.0, -0.3], [0.0, 1.5, -2.0, 0.7]])
DELTAS = torch.zeros(2, 4, 4)
DELTAS[0, 0] = torch.tensor([0.1, -0.2, 0.05, 0.3])
BETA = 1 / 9
# counts: num_elements (obj, box), num_pos, num_samples, batch_size, images_with_fg, num_cells
D = {
    "sum": (1, 1),
    "mean": (8, 2),
    "num_pos": (2, 2),
    "target_sum": (2, 2),
    "num_samples": (8, 8),
    "batch_size": (2, 2),
    "images_with_fg": (1, 1),
    "fixed:3": (3, 3),
    "density": (2 + 2 / 4, 2 + 2 / 4),
    "ema_num_pos:0.9": (2, 2),  # first observation
}


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _sl1(d: float, beta: float = BETA) -> float:
    d = abs(d)
    return 0.5 * d * d / beta if d < beta else d - 0.5 * beta


def _obj_raw(pos_weight: float = 1.0) -> float:
    x = LOGITS.tolist()
    pos = pos_weight * (_softplus(-x[0][0]) + _softplus(-x[0][3]))
    neg = _softplus(x[0][1]) + _softplus(x[0][2]) + sum(_softplus(v) for v in x[1])
    return pos + neg


# targets: anchor 0 -> GT 0: (0.1, 0, 0, 0); anchor 3 -> GT 1: (0, 0.05, 0, log 1.1)
TARGETS = [(0.1, 0.0, 0.0, 0.0), (0.0, 0.05, 0.0, math.log(1.1))]
PREDS = [(0.1, -0.2, 0.05, 0.3), (0.0, 0.0, 0.0, 0.0)]


def _box_raw(kind: str) -> float:
    f = (lambda d: _sl1(d)) if kind == "smooth_l1" else abs
    return sum(f(p - t) for pred, tgt in zip(PREDS, TARGETS, strict=True) for p, t in zip(pred, tgt, strict=True))


def _run(**kw):
    crit = RPNCriterion(**kw)
    obj = LOGITS.clone().requires_grad_()
    deltas = DELTAS.clone().requires_grad_()
    return crit(obj, deltas, ANCHORS, GT), obj, deltas


@pytest.mark.parametrize("name", list(D))
def test_each_term_equals_the_hand_computed_value_for_each_normalizer(name):
    report, _, _ = _run(normalizers={"obj": name, "box": name}, weights={"obj": 2.0, "box": 3.0}, pos_weight=1.5)
    d_obj, d_box = D[name]
    torch.testing.assert_close(report["obj"].value, torch.tensor(2.0 * _obj_raw(1.5) / d_obj))
    torch.testing.assert_close(report["box"].value, torch.tensor(3.0 * _box_raw("smooth_l1") / d_box))
    assert report["obj"].normalizer_name == name
    assert float(report["obj"].normalizer) == pytest.approx(d_obj)
    assert float(report["obj"].num_elements) == 8 and float(report["box"].num_elements) == 2
    assert float(report["box"].num_pos) == 2


def test_default_normalizers_are_num_samples_and_num_pos():
    report, _, _ = _run()
    torch.testing.assert_close(report["obj"].value, torch.tensor(_obj_raw() / 8))
    torch.testing.assert_close(report["box"].value, torch.tensor(_box_raw("smooth_l1") / 2))
    torch.testing.assert_close(report.total, report["obj"].value + report["box"].value)


def test_l1_and_decoded_giou_box_losses():
    report, _, _ = _run(box_loss="l1")
    torch.testing.assert_close(report["box"].value, torch.tensor(_box_raw("l1") / 2))
    report, _, _ = _run(box_loss="giou")
    giou = []
    for anchor, pred, gt in ((ANCHORS[0], PREDS[0], GT[0][0]), (ANCHORS[3], PREDS[1], GT[0][1])):
        ax1, ay1, ax2, ay2 = anchor.tolist()
        w, h = ax2 - ax1, ay2 - ay1
        cx, cy = (ax1 + ax2) / 2 + pred[0] * w, (ay1 + ay2) / 2 + pred[1] * h
        pw, ph = w * math.exp(pred[2]), h * math.exp(pred[3])
        b = (cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2)
        g = gt.tolist()
        iw = max(0.0, min(b[2], g[2]) - max(b[0], g[0]))
        ih = max(0.0, min(b[3], g[3]) - max(b[1], g[1]))
        inter = iw * ih
        union = pw * ph + (g[2] - g[0]) * (g[3] - g[1]) - inter
        enclose = (max(b[2], g[2]) - min(b[0], g[0])) * (max(b[3], g[3]) - min(b[1], g[1]))
        giou.append(inter / union - (enclose - union) / enclose)
    torch.testing.assert_close(report["box"].value, torch.tensor(sum(1 - v for v in giou) / 2), atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_sampled_anchors_and_positive_deltas():
    report, obj, deltas = _run(sample_num=4, pos_fraction=0.25)  # image 0: 1 of 2 positives + its 2 negatives
    report.total.backward()
    sampled = obj.grad != 0
    assert sampled.sum(1).tolist() == [3, 4]
    box_rows = (deltas.grad != 0).any(-1)
    assert box_rows.sum() == 1 and not box_rows[1].any()
    assert float(report["box"].num_pos) == 1


def test_images_without_gt_give_finite_terms_and_zero_box_gradient():
    crit = RPNCriterion(sample_num=3)
    obj = torch.randn(2, 4, requires_grad=True)
    deltas = torch.randn(2, 4, 4, requires_grad=True)
    report = crit(obj, deltas, ANCHORS, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert list(report) == ["obj", "box"]
    assert all(torch.isfinite(report[k].value) for k in report)
    assert float(report["obj"].num_elements) == 6  # 3 negatives per image
    report.total.backward()
    assert deltas.grad is not None and torch.equal(deltas.grad, torch.zeros_like(deltas))
    assert (obj.grad != 0).sum() == 6


def _many(seed: int, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    return torch.cat([xy, xy + 6 + torch.rand(n, 2, generator=g) * 20], 1)


def _grid_anchors() -> torch.Tensor:
    out = []
    for size in (8.0, 16.0):
        for y in range(0, 80, 4):
            for x in range(0, 80, 4):
                out.append([x, y, x + size, y + size])
    return torch.tensor(out)


def test_sample_of_an_image_does_not_depend_on_its_batch_position():
    crit = RPNCriterion(sample_num=32, pos_fraction=0.25)
    anchors = _grid_anchors()
    g0, g1 = _many(0), _many(1)
    t = crit.assign(anchors, [g0, g1, torch.zeros(0, 4)])
    swapped = crit.assign(anchors, [torch.zeros(0, 4), g1, g0])
    assert torch.equal(t.pos[0], swapped.pos[2]) and torch.equal(t.neg[0], swapped.neg[2])
    assert torch.equal(t.neg[2], swapped.neg[0])
    assert int(t.pos[0].sum()) == 8 and int(t.neg[0].sum()) == 24  # more positives than the fraction
    # explicit image ids take the place of the content hash
    a = crit.assign(anchors, [g0, g1], image_ids=[7, 9])
    b = crit.assign(anchors, [g1, g0], image_ids=[9, 7])
    assert torch.equal(a.pos, b.pos.flip(0)) and torch.equal(a.neg, b.neg.flip(0))
    # a new epoch draws a new sample
    crit.set_epoch(1.5)
    assert not torch.equal(crit.assign(anchors, [g0, g1, torch.zeros(0, 4)]).neg, t.neg)


def test_box_coder_round_trip_and_stds():
    a, g = _many(3), _many(4)
    for stds in ((1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)):
        d = encode_deltas(a, g, stds=stds)
        torch.testing.assert_close(decode_deltas(a, d, stds=stds), g, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(
        encode_deltas(a, g, stds=(0.1, 0.1, 0.2, 0.2)), encode_deltas(a, g) / torch.tensor([0.1, 0.1, 0.2, 0.2])
    )


def test_bad_inputs_raise():
    crit = RPNCriterion()
    with pytest.raises(ValueError, match="box_deltas"):
        crit(LOGITS, torch.zeros(2, 4, 3), ANCHORS, GT)
    with pytest.raises(ValueError, match="gt_boxes"):
        crit(LOGITS, DELTAS, ANCHORS, GT[:1])
    with pytest.raises(ValueError, match="anchors"):
        crit(LOGITS, DELTAS, ANCHORS[:, :3], GT)
    with pytest.raises(ValueError, match="unknown terms"):
        RPNCriterion(normalizers={"cls": "sum"})
    with pytest.raises(ValueError, match="box_loss"):
        RPNCriterion(box_loss="ciou")
