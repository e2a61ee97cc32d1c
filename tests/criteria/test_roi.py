"""ROICriterion: hand-computed cls/box/mask terms for every normalizer, mask targets, empty cases."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.criteria.roi import ROICriterion, bitmap_mask_targets, polygon_mask_targets
from detloss.data.shapes import rasterize_convex_polygons

C, S = 2, 2
# image 0: a triangle (box 0,0,10,10), class 1; image 1: an 8 px square, class 0; image 2: no GT
TARGETS = [
    {
        "boxes": torch.tensor([[0.0, 0, 10, 10]]),
        "labels": torch.tensor([1]),
        "polygons": torch.tensor([[[0.0, 0], [10, 0], [0, 10], [0, 0]]]),
        "polygon_counts": torch.tensor([3]),
    },
    {
        "boxes": torch.tensor([[0.0, 0, 8, 8]]),
        "labels": torch.tensor([0]),
        "polygons": torch.tensor([[[0.0, 0], [8, 0], [8, 8], [0, 8]]]),
        "polygon_counts": torch.tensor([4]),
    },
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "polygons": torch.zeros(0, 4, 2)},
]
ROIS = torch.tensor(
    [
        [0.0, 0, 10, 12],  # image 0, IoU 100/120 -> positive, class 1
        [20, 20, 30, 30],  # image 0, negative
        [0, 0, 11, 10],  # image 0, IoU 100/110 -> positive, class 1
        [0, 0, 8, 8],  # image 1, IoU 1 -> positive, class 0
        [4, 4, 12, 12],  # image 1, IoU 16/112 -> negative
        [0, 0, 5, 5],  # image 2 (no GT) -> negative
    ]
)
ROI_IMAGE = torch.tensor([0, 0, 0, 1, 1, 2])
CLS_TARGET = [1, 2, 1, 0, 2, 2]  # background = C = 2
POS = [0, 2, 3]
STDS = (0.1, 0.1, 0.2, 0.2)
# hand-derived: deltas (dx, dy, dw, dh) / stds and the S x S mask at the ROI's pixel centres
BOX_TARGET = {
    0: (0.0, (-1 / 12) / 0.1, 0.0, math.log(10 / 12) / 0.2),
    2: ((-0.5 / 11) / 0.1, 0.0, math.log(10 / 11) / 0.2, 0.0),
    3: (0.0, 0.0, 0.0, 0.0),
}
MASK_TARGET = {0: [[1, 0], [0, 0]], 2: [[1, 0], [0, 0]], 3: [[1, 1], [1, 1]]}
NUM_CELLS = 64  # sample_num: all ROIs are sampled
D = {  # (cls, box, mask); counts: 6 samples, 3 positives, 3 images, 2 with fg
    "sum": (1, 1, 1),
    "mean": (6, 3, 3),
    "num_pos": (3, 3, 3),
    "target_sum": (3, 3, 3),
    "num_samples": (6, 6, 6),
    "batch_size": (3, 3, 3),
    "images_with_fg": (2, 2, 2),
    "fixed:4": (4, 4, 4),
    "density": (3 + 3 / NUM_CELLS,) * 3,
    "ema_num_pos:0.5": (3, 3, 3),
}


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randn(6, C + 1, generator=g).requires_grad_()
    box = torch.randn(6, C, 4, generator=g).requires_grad_()
    mask = torch.randn(6, C, S, S, generator=g).requires_grad_()
    return cls, box, mask


def _hand_raw(cls, box, mask, fg_weight=1.0):
    cls_raw = 0.0
    for r, t in enumerate(CLS_TARGET):
        row = cls[r].tolist()
        ce = math.log(sum(math.exp(v) for v in row)) - row[t]
        cls_raw += ce * (fg_weight if t < C else 1.0)
    box_raw = mask_raw = 0.0
    for r in POS:
        label = CLS_TARGET[r]
        for p, t in zip(box[r, label].tolist(), BOX_TARGET[r], strict=True):
            d = abs(p - t)
            box_raw += 0.5 * d * d if d < 1 else d - 0.5
        bce = 0.0
        for i in range(S):
            for j in range(S):
                x, t = mask[r, label, i, j].item(), MASK_TARGET[r][i][j]
                bce += math.log1p(math.exp(x)) - t * x
        mask_raw += bce / (S * S)
    return cls_raw, box_raw, mask_raw


def _crit(**kw) -> ROICriterion:
    return ROICriterion(C, mask_size=S, sample_num=NUM_CELLS, **kw)


def test_assignment_sampling_and_targets_of_the_tiny_case():
    t = _crit().assign(ROIS, ROI_IMAGE, TARGETS)
    assert torch.nonzero(t.pos).squeeze(1).tolist() == POS
    assert t.sampled.all()
    assert t.labels.tolist() == CLS_TARGET
    masks = _crit().mask_targets(TARGETS, t, ROIS)
    assert masks.int().tolist() == [MASK_TARGET[r] for r in POS]


@pytest.mark.parametrize("name", list(D))
def test_each_term_equals_the_hand_computed_value_for_each_normalizer(name):
    crit = _crit(normalizers={"cls": name, "box": name, "mask": name}, weights={"cls": 2.0, "box": 3.0, "mask": 0.5})
    cls, box, mask = _inputs()
    report = crit(cls, box, mask, ROIS, ROI_IMAGE, TARGETS)
    cls_raw, box_raw, mask_raw = _hand_raw(cls, box, mask)
    d_cls, d_box, d_mask = D[name]
    torch.testing.assert_close(report["cls"].value, torch.tensor(2.0 * cls_raw / d_cls))
    torch.testing.assert_close(report["box"].value, torch.tensor(3.0 * box_raw / d_box))
    torch.testing.assert_close(report["mask"].value, torch.tensor(0.5 * mask_raw / d_mask))
    assert [float(report[k].num_elements) for k in report] == [6, 3, 3]
    assert report["mask"].normalizer_name == name


def test_defaults_and_foreground_weight_and_label_smoothing():
    cls, box, mask = _inputs(1)
    report = _crit(fg_weight=2.0)(cls, box, mask, ROIS, ROI_IMAGE, TARGETS)
    cls_raw, box_raw, mask_raw = _hand_raw(cls, box, mask, fg_weight=2.0)
    torch.testing.assert_close(report["cls"].value, torch.tensor(cls_raw / 6))  # num_samples, not weighted
    torch.testing.assert_close(report["box"].value, torch.tensor(box_raw / 3))
    torch.testing.assert_close(report["mask"].value, torch.tensor(mask_raw / 3))
    smooth = _crit(label_smoothing=0.1)(cls, box, mask, ROIS, ROI_IMAGE, TARGETS)
    logp = cls.log_softmax(-1)
    ref = -(0.9 * logp[torch.arange(6), torch.tensor(CLS_TARGET)] + 0.1 / (C + 1) * logp.sum(-1)).sum() / 6
    torch.testing.assert_close(smooth["cls"].value, ref)


def test_background_is_the_last_class_and_box_mask_use_the_gt_class_channel():
    cls, box, mask = _inputs(2)
    report = _crit()(cls, box, mask, ROIS, ROI_IMAGE, TARGETS)
    report.total.backward()
    for r, t in enumerate(CLS_TARGET):
        assert cls.grad[r, t] < 0 and (cls.grad[r, torch.arange(C + 1) != t] > 0).all()
    box_nz, mask_nz = (box.grad != 0).any(-1), (mask.grad != 0).flatten(2).any(-1)  # (R, C)
    expected = torch.zeros(6, C, dtype=torch.bool)
    for r in POS:
        expected[r, CLS_TARGET[r]] = True
    assert torch.equal(box_nz, expected) and torch.equal(mask_nz, expected)


def test_class_agnostic_heads_and_no_mask_term():
    cls, box, mask = _inputs(3)
    report = _crit()(cls, box[:, :1], mask[:, :1], ROIS, ROI_IMAGE, TARGETS)
    assert list(report) == ["cls", "box", "mask"] and torch.isfinite(report.total)
    crit = _crit(with_mask=False)
    assert list(crit(cls, box, None, ROIS, ROI_IMAGE, TARGETS)) == ["cls", "box"]
    with pytest.raises(ValueError, match="mask_logits"):
        crit(cls, box, mask, ROIS, ROI_IMAGE, TARGETS)


def test_sampling_respects_the_budget_per_image():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(100, 2, generator=g) * 20
    rois = torch.cat([xy, xy + 8 + torch.rand(100, 2, generator=g) * 4], 1).repeat(2, 1)  # same ROIs twice
    roi_image = torch.arange(2).repeat_interleave(100)
    targets = [{"boxes": torch.tensor([[5.0, 5, 18, 18], [10, 10, 22, 20]]), "labels": torch.tensor([0, 1])}] * 2
    crit = ROICriterion(C, sample_num=16, pos_fraction=0.25, with_mask=False)
    t = crit.assign(rois, roi_image, targets)
    for i in range(2):
        in_image = roi_image == i
        assert int((t.pos & in_image).sum()) == 4 and int((t.neg & in_image).sum()) == 12
    # the same image content samples the same ROIs in either position
    assert torch.equal(t.pos[:100], t.pos[100:]) and torch.equal(t.neg[:100], t.neg[100:])


def test_polygon_targets_equal_the_full_image_rasterization_and_bitmap_targets():
    g = torch.Generator().manual_seed(5)
    n, k, size = 6, 7, 40
    angles = torch.sort(torch.rand(n, k, generator=g) * 2 * math.pi, dim=1).values
    centre = 10 + torch.rand(n, 1, 2, generator=g) * 20
    radius = 4 + torch.rand(n, 1, 1, generator=g) * 10
    polygons = centre + radius * torch.stack([angles.cos(), angles.sin()], -1)
    counts = torch.tensor([7, 6, 5, 4, 3, 7])
    full = rasterize_convex_polygons(polygons, counts, size, size)
    whole = torch.tensor([[0.0, 0.0, size, size]]).expand(n, 4)
    assert torch.equal(polygon_mask_targets(polygons, counts, whole, size), full)
    # integer ROIs at one sample per pixel: bilinear sampling hits pixel centres exactly
    rois = torch.tensor(
        [[3.0, 5, 23, 25], [10, 0, 30, 20], [0, 8, 20, 28], [12, 12, 32, 32], [5, 5, 25, 25], [20, 20, 40, 40]]
    )
    from_poly = polygon_mask_targets(polygons, counts, rois, 20)
    from_bitmap = bitmap_mask_targets(full, torch.arange(n), rois, 20)
    assert torch.equal(from_poly, from_bitmap)
    assert from_poly.any() and not from_poly.all()


def test_bitmap_targets_interpolate_bilinearly_and_threshold_at_half():
    m = torch.zeros(1, 4, 4, dtype=torch.bool)
    m[0, :, :2] = True  # x < 2
    # sample points x = 1, 2, 3, 4: x = 2 lies halfway between a 1 and a 0 pixel centre -> 0.5 -> 1
    out = bitmap_mask_targets(m, torch.tensor([0]), torch.tensor([[0.5, 0.0, 4.5, 4.0]]), 4)
    assert out[0].int().tolist() == [[1, 1, 0, 0]] * 4
    # several ROIs of one GT and of several GTs at once
    m2 = torch.stack([m[0], ~m[0]])
    out = bitmap_mask_targets(m2, torch.tensor([1, 0, 1]), torch.tensor([[0.0, 0, 4, 4]] * 3), 2)
    assert out.int().tolist() == [[[0, 1], [0, 1]], [[1, 0], [1, 0]], [[0, 1], [0, 1]]]


def test_masks_from_bitmaps_in_the_criterion_agree_with_polygons():
    targets = [
        {
            "boxes": t["boxes"],
            "labels": t["labels"],
            "masks": rasterize_convex_polygons(t["polygons"], t["polygon_counts"], 16, 16),
        }
        for t in TARGETS[:2]
    ] + [{"boxes": TARGETS[2]["boxes"], "labels": TARGETS[2]["labels"]}]  # an image without GT needs no masks
    crit = ROICriterion(C, mask_size=4, sample_num=NUM_CELLS)
    t = crit.assign(ROIS, ROI_IMAGE, targets)
    from_bitmaps = crit.mask_targets(targets, t, ROIS)
    assert from_bitmaps.shape == (3, 4, 4)
    # ROI 3 is the 8 px square itself, sampled at 2 px steps: both constructions give all ones
    assert from_bitmaps[2].all() and crit.mask_targets(TARGETS, t, ROIS)[2].all()
    cls, box, _ = _inputs()
    report = crit(cls, box, torch.zeros(6, C, 4, 4, requires_grad=True), ROIS, ROI_IMAGE, targets)
    torch.testing.assert_close(report["mask"].value, torch.tensor(math.log(2.0)))  # zero logits: log 2 per pixel


@pytest.mark.parametrize("case", ["no_gt", "no_positive", "no_roi"])
def test_empty_cases_are_finite_with_the_same_keys_and_zero_box_mask_gradients(case):
    crit = _crit()
    rois, roi_image, targets = ROIS, ROI_IMAGE, TARGETS
    if case == "no_gt":
        targets = [TARGETS[2]] * 3
    elif case == "no_positive":
        rois = ROIS + 100.0
    else:
        rois, roi_image = ROIS[:0], ROI_IMAGE[:0]
    cls, box, mask = (x[: rois.shape[0]].detach().requires_grad_() for x in _inputs())
    report = crit(cls, box, mask, rois, roi_image, targets)
    assert list(report) == ["cls", "box", "mask"]
    assert all(torch.isfinite(report[k].value) for k in report)
    report.total.backward()
    assert torch.equal(box.grad, torch.zeros_like(box)) and torch.equal(mask.grad, torch.zeros_like(mask))
    assert float(report["box"].value.detach()) == 0.0 and float(report["mask"].value.detach()) == 0.0
    if case != "no_roi":
        assert (cls.grad != 0).any()


def test_bad_inputs_raise():
    crit = _crit()
    cls, box, mask = _inputs()
    with pytest.raises(ValueError, match="cls_logits"):
        crit(cls[:, :C], box, mask, ROIS, ROI_IMAGE, TARGETS)
    with pytest.raises(ValueError, match="box_deltas"):
        crit(cls, box[:, :, :3], mask, ROIS, ROI_IMAGE, TARGETS)
    with pytest.raises(ValueError, match="mask_logits"):
        crit(cls, box, mask[..., :1], ROIS, ROI_IMAGE, TARGETS)
    with pytest.raises(ValueError, match="roi_image"):
        crit(cls, box, mask, ROIS, ROI_IMAGE.float(), TARGETS)
    with pytest.raises(ValueError, match=r"targets\[0\]"):
        crit(cls, box, mask, ROIS, ROI_IMAGE, [{"boxes": TARGETS[0]["boxes"]}] + TARGETS[1:])
    no_masks = [{"boxes": t["boxes"], "labels": t["labels"]} for t in TARGETS]
    with pytest.raises(ValueError, match="polygons"):
        crit(cls, box, mask, ROIS, ROI_IMAGE, no_masks)
