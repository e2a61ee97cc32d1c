"""DenseCriterion: gradient reach per term, empty batches, background penalty, polygon targets."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import BackgroundPenalty, DenseCriterion, WarmupSchedule
from detloss.data.synthetic import random_feats, random_targets
from detloss.weighting.policy import WeightPolicy

C, R, K = 3, 4, 6
STRIDES = (8, 16)


def _crit(**kw) -> DenseCriterion:
    return DenseCriterion(C, STRIDES, R, num_vertices=K, background=BackgroundPenalty("max"), **kw)


def _grad_channels(term_value: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
    """(B, channels, A) gradient of one term w.r.t. the head outputs."""
    grads = torch.autograd.grad(term_value, feats, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(f) if g is None else g).flatten(2) for g, f in zip(grads, feats, strict=True)], 2
    )


def test_each_term_reaches_exactly_the_channels_it_depends_on():
    crit = _crit()
    feats = random_feats(2, crit.num_channels, 64, STRIDES, seed=3)
    targets = random_targets(2, C, [2, 3], num_vertices=K, seed=3)
    report = crit(feats, targets)
    t = crit.assign(feats, targets)
    fg = t.fg  # (B, A)
    assert fg.sum() > 0 and (~fg).sum() > 0
    box_ch, cls_ch, poly_ch = slice(0, 4 * R), slice(4 * R, 4 * R + C), slice(4 * R + C, None)
    nz = {name: _grad_channels(report[name].value, feats) != 0 for name in report}

    for name in ("box", "dfl"):  # every bin of every side of every positive, nothing else
        assert nz[name][:, box_ch].permute(0, 2, 1)[fg].all(), name
        assert not nz[name][:, box_ch].permute(0, 2, 1)[~fg].any(), name
        assert not nz[name][:, 4 * R :].any(), name
    assert nz["cls"][:, cls_ch].all()  # BCE: every anchor and class
    assert not nz["cls"][:, box_ch].any() and not nz["cls"][:, poly_ch].any()

    # poly (MGIoU over all K predicted vertices): every vertex of every positive, nothing else
    assert nz["poly"][:, poly_ch].permute(0, 2, 1)[fg].all()
    assert not nz["poly"][:, poly_ch].permute(0, 2, 1)[~fg].any()
    assert not nz["poly"][:, : 4 * R + C].any()

    # bg (max over classes): one class channel per background anchor, none on positives
    bg_cls = nz["bg"][:, cls_ch].permute(0, 2, 1)  # (B, A, C)
    assert torch.equal(bg_cls.sum(-1), (~fg).long())
    assert not nz["bg"][:, box_ch].any() and not nz["bg"][:, poly_ch].any()


def test_l1_polygon_loss_trains_exactly_the_targets_valid_vertices():
    crit = DenseCriterion(C, STRIDES, R, num_vertices=K, polygon_loss="l1")
    feats = random_feats(2, crit.num_channels, 64, STRIDES, seed=3)
    targets = random_targets(2, C, [2, 3], num_vertices=K, seed=3)
    t = crit.assign(feats, targets)
    nz = _grad_channels(crit(feats, targets)["poly"].value, feats) != 0
    poly_nz = nz[:, 4 * R + C :].permute(0, 2, 1)[t.fg].view(-1, K, 2)
    assert torch.equal(poly_nz.all(-1), t.polygon_valid)
    assert torch.equal(poly_nz.any(-1), t.polygon_valid)


def test_empty_targets_give_finite_values_same_keys_and_connected_graph():
    crit = _crit()
    feats = random_feats(2, crit.num_channels, 64, STRIDES, seed=1)
    full = crit(feats, random_targets(2, C, 2, num_vertices=K, seed=1))
    empty_targets = {
        "batch_idx": torch.zeros(0, dtype=torch.long),
        "cls": torch.zeros(0),
        "bboxes": torch.zeros(0, 4),
        "polygons": torch.zeros(0, K, 2),
        "polygon_counts": torch.zeros(0, dtype=torch.long),
    }
    report = crit(feats, empty_targets)
    assert list(report) == list(full) == ["box", "cls", "dfl", "poly", "bg"]
    assert set(report.as_dict()) == set(full.as_dict())
    for name, term in report.items():
        assert math.isfinite(term.value.item()) and term.value.requires_grad, name
    for name in ("box", "dfl", "poly"):
        assert report[name].value.item() == 0.0
    report.total.backward()
    g = torch.cat([f.grad.flatten(2) for f in feats], 2)
    assert torch.equal(g[:, : 4 * R], torch.zeros_like(g[:, : 4 * R]))  # no positives: no box gradient
    assert torch.equal(g[:, 4 * R + C :], torch.zeros_like(g[:, 4 * R + C :]))
    assert g[:, 4 * R : 4 * R + C].abs().sum() > 0  # negatives still teach the classifier


def _one_level(kind="max") -> DenseCriterion:
    return DenseCriterion(2, (8,), 4, background=BackgroundPenalty(kind), weights={"bg": 1.5})


def test_background_penalty_is_exactly_zero_when_every_anchor_is_foreground():
    # 16x16 image, one 2x2 level: all four anchor points lie inside the whole-image GT, topk=10 >= 4,
    # and zero box logits decode to 24 px squares that overlap it (CIoU > 0), so all four are positive.
    crit = _one_level()
    feats = [torch.zeros(1, 4 * 4 + 2, 2, 2, requires_grad=True)]
    targets = {"batch_idx": torch.tensor([0]), "cls": torch.tensor([1]), "bboxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]])}
    report = crit(feats, targets)
    assert report["box"].num_pos.item() == 4
    assert report["bg"].value.item() == 0.0 and report["bg"].num_elements.item() == 0
    report["bg"].value.backward()
    assert torch.equal(feats[0].grad, torch.zeros_like(feats[0].grad))


def test_background_penalty_is_the_hand_computed_mean_when_every_anchor_is_background():
    crit = _one_level()
    cls_logits = [[0.0, -2.0], [1.0, 3.0], [-1.0, -4.0], [2.0, 0.5]]  # per anchor, 2 classes
    feats = torch.zeros(1, 4 * 4 + 2, 2, 2)
    feats[0, 16:].copy_(torch.tensor(cls_logits).T.reshape(2, 2, 2))
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0), "bboxes": torch.zeros(0, 4)}
    report = crit([feats.requires_grad_(True)], empty)
    sig = [1 / (1 + math.exp(-max(row))) for row in cls_logits]
    assert report["bg"].value.item() == pytest.approx(1.5 * sum(sig) / 4, rel=1e-6)
    assert report["bg"].normalizer.item() == 4.0 and report["bg"].normalizer_name == "mean"

    focal = _one_level(kind="focal")
    report = focal([feats], empty)
    by_hand = sum(
        (1 / (1 + math.exp(-x))) ** 2 * math.log1p(math.exp(x)) for row in cls_logits for x in row
    )  # sum_c p^2 * -log(1 - p), averaged over the 4 anchors
    assert report["bg"].value.item() == pytest.approx(1.5 * by_hand / 4, rel=1e-6)


def test_ignored_anchors_leave_cls_and_bg_but_positives_are_never_ignored():
    # The 4 all-background anchors of the test above, anchors 1 and 2 ignored: cls is the BCE against 0,
    # softplus(x), summed over the 2 kept anchors' classes (target_sum floors at 1); bg is their mean.
    crit = _one_level()
    cls_logits = [[0.0, -2.0], [1.0, 3.0], [-1.0, -4.0], [2.0, 0.5]]
    feats = torch.zeros(1, 4 * 4 + 2, 2, 2)
    feats[0, 16:].copy_(torch.tensor(cls_logits).T.reshape(2, 2, 2))
    feats.requires_grad_(True)
    empty = {"batch_idx": torch.zeros(0), "cls": torch.zeros(0), "bboxes": torch.zeros(0, 4)}
    ignore = torch.tensor([[False, True, True, False]])
    report = crit([feats], empty, ignore=ignore)
    kept = [cls_logits[0], cls_logits[3]]
    softplus = sum(math.log1p(math.exp(x)) for row in kept for x in row)
    assert report["cls"].value.item() == pytest.approx(0.5 * softplus, rel=1e-6)
    assert report["cls"].num_elements.item() == 4
    sig = [1 / (1 + math.exp(-max(row))) for row in kept]
    assert report["bg"].value.item() == pytest.approx(1.5 * sum(sig) / 2, rel=1e-6)
    assert report["bg"].normalizer.item() == 2.0
    report.total.backward()
    grad = feats.grad[0, 16:].flatten(1)  # (2 classes, 4 anchors)
    assert torch.equal(grad[:, 1:3], torch.zeros(2, 2)) and (grad[:, [0, 3]] != 0).all()

    # All four anchors are positives of a whole-image GT (see above): ignoring every anchor changes nothing.
    whole = {"batch_idx": torch.tensor([0]), "cls": torch.tensor([1]), "bboxes": torch.tensor([[0.5, 0.5, 1.0, 1.0]])}
    plain, ignoring = crit([feats], whole), crit([feats], whole, ignore=torch.ones(1, 4, dtype=torch.bool))
    assert ignoring["cls"].value.item() == plain["cls"].value.item() and ignoring["cls"].num_elements.item() == 8
    with pytest.raises(ValueError, match=r"ignore must be a bool tensor of shape \(B, A\) = \(1, 4\)"):
        crit([feats], empty, ignore=torch.ones(1, 5, dtype=torch.bool))


def test_background_weight_follows_its_schedule():
    # The schedule lives in the weight policy; the criterion's base gain stays 1.5.
    crit = _one_level()
    policy = WeightPolicy(crit.weights, schedules={"bg": WarmupSchedule(max_value=2.0, burn_in=3, warmup=4)})
    seen = [policy.weights(epoch)["bg"] for epoch in (0, 2.9, 3, 5, 7, 12)]
    assert seen == pytest.approx([0.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    assert crit.weights["bg"] == 1.5 and policy.weights(5)["box"] == 7.5


def test_polygon_targets_are_the_assigned_gts_polygon_in_each_anchors_stride_units():
    # 128 px image, strides 8/16/32. Zero logits decode to boxes of 3 strides per side, so the 20 px
    # objects align best with stride-8 anchors and the 96 px ones with stride-32 anchors: positives
    # land on different levels. Objects do not overlap, so the GT of a positive is the one whose box
    # holds its anchor point — found here without the criterion's gt_index.
    strides, k, size = (8, 16, 32), 5, 128
    crit = DenseCriterion(2, strides, 4, num_vertices=k, polygon_loss="l1")
    boxes_px = torch.tensor([[8.0, 8.0, 28.0, 28.0], [20.0, 24.0, 116.0, 120.0], [0.0, 0.0, 18.0, 20.0]])
    images = torch.tensor([0, 1, 1])
    polys_px = []
    for i, (x1, y1, x2, y2) in enumerate(boxes_px.tolist()):
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        n = 3 + i  # 3, 4, 5 vertices: distinct polygons, different padding
        ang = [2 * math.pi * j / n + 0.3 * i for j in range(n)]
        pts = [[cx + 0.5 * w * math.cos(a), cy + 0.5 * h * math.sin(a)] for a in ang] + [[0.0, 0.0]] * (k - n)
        polys_px.append(pts)
    polys_px = torch.tensor(polys_px)
    xywh = torch.cat(((boxes_px[:, :2] + boxes_px[:, 2:]) / 2, boxes_px[:, 2:] - boxes_px[:, :2]), 1)
    targets = {
        "batch_idx": images,
        "cls": torch.tensor([0, 1, 0]),
        "bboxes": xywh / size,
        "polygons": polys_px / size,
        "polygon_counts": torch.tensor([3, 4, 5]),
    }
    feats = [torch.zeros(2, crit.num_channels, size // s, size // s) for s in strides]
    t = crit.assign(feats, targets)
    assert t.fg.sum() > 0
    levels = set(t.strides.tolist())
    assert {8.0, 32.0} <= levels, levels
    for p in range(int(t.fg.sum())):
        stride = t.strides[p].item()
        point_px = t.points[p] * stride
        inside = [
            j
            for j in range(3)
            if images[j] == t.image[p] and bool(((point_px > boxes_px[j, :2]) & (point_px < boxes_px[j, 2:])).all())
        ]
        assert len(inside) == 1
        j = inside[0]
        n = 3 + j
        torch.testing.assert_close(t.polygons[p, :n], polys_px[j, :n] / stride, rtol=0, atol=1e-5)
        assert t.polygon_valid[p].tolist() == [True] * n + [False] * (k - n)
        torch.testing.assert_close(t.boxes[p], boxes_px[j] / stride, rtol=0, atol=1e-5)


def test_bad_inputs_name_the_argument():
    crit = DenseCriterion(C, STRIDES, R)
    good = random_feats(1, crit.num_channels, 64, STRIDES)
    targets = random_targets(1, C, 1)
    with pytest.raises(ValueError, match=r"feats\[1\]"):
        crit([good[0], torch.zeros(1, crit.num_channels + 1, 4, 4)], targets)
    with pytest.raises(ValueError, match="feats must be a list of 2"):
        crit(good[:1], targets)
    with pytest.raises(ValueError, match="bboxes"):
        crit(good, {"batch_idx": targets["batch_idx"], "cls": targets["cls"]})
    with pytest.raises(ValueError, match=r"targets\['bboxes'\]"):
        crit(good, {**targets, "bboxes": torch.zeros(1, 5)})
    with pytest.raises(ValueError, match="polygons"):
        DenseCriterion(C, STRIDES, R, num_vertices=4)(random_feats(1, 4 * R + C + 8, 64, STRIDES), targets)
    with pytest.raises(ValueError, match="unknown terms"):
        DenseCriterion(C, STRIDES, R, weights={"polygon": 1.0})
    with pytest.raises(ValueError, match="valid names"):
        DenseCriterion(C, STRIDES, R, normalizers={"cls": "avg"})


def test_options_change_what_they_name():
    feats = random_feats(2, 4 * R + C, 64, STRIDES, seed=5)
    targets = random_targets(2, C, 2, seed=5)
    base = DenseCriterion(C, STRIDES, R)(feats, targets)
    mean = DenseCriterion(C, STRIDES, R, normalizers={"cls": "mean"})(feats, targets)
    # same raw sum, different D: mean divides by every anchor-class element
    assert mean["cls"].raw_sum.item() == pytest.approx(base["cls"].raw_sum.item())
    assert mean["cls"].normalizer.item() == base["cls"].num_elements.item()
    assert mean["box"].value.item() == pytest.approx(base["box"].value.item())
    weighted = DenseCriterion(C, STRIDES, R, class_weights=[1.0, 0.0, 0.0])(feats, targets)
    assert weighted["cls"].raw_sum.item() < base["cls"].raw_sum.item()
    l1_box = DenseCriterion(C, STRIDES, 1)(random_feats(2, 4 + C, 64, STRIDES, seed=5), targets)
    assert l1_box["dfl"].value.item() > 0  # reg_max=1: plain L1 on ltrb
