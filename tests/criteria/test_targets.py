"""One Targets type for every criterion: its conversions by hand, one batch fed to the dense, two-stage and
grid criteria (equal to their dict / per-image paths and to hand values), per-call weights, from_config."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.assign.grid import grid_targets
from detloss.criteria import (
    DenseCriterion,
    MultigridCriterion,
    ROICriterion,
    RPNCriterion,
    Targets,
    TwoStageCriterion,
    TwoStageOutputs,
)
from detloss.data.synthetic import random_feats

HW = (64, 64)
# Two images; image 1 holds both objects, image 0 none. Normalized cxcywh -> pixel xyxy by hand:
# (0.5, 0.5, 0.25, 0.5) -> cx 32, cy 32, w 16, h 32 -> (24, 16, 40, 48);
# (0.25, 0.75, 0.25, 0.25) -> cx 16, cy 48, w 16, h 16 -> (8, 40, 24, 56).
YOLO = {
    "batch_idx": torch.tensor([1.0, 1.0]),
    "cls": torch.tensor([[2.0], [0.0]]),
    "bboxes": torch.tensor([[0.5, 0.5, 0.25, 0.5], [0.25, 0.75, 0.25, 0.25]]),
}
PIXELS = torch.tensor([[24.0, 16, 40, 48], [8, 40, 24, 56]])
PER_IMAGE = [
    {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    {"boxes": PIXELS, "labels": torch.tensor([2, 0])},
]


def test_from_dict_converts_to_pixels_and_back_by_hand():
    t = Targets.from_dict(YOLO, 2, HW)
    assert torch.equal(t.boxes, PIXELS) and t.cls.tolist() == [2, 0] and t.batch_idx.tolist() == [1, 1]
    assert t.batch_size == 2 and t.image_hw == HW
    torch.testing.assert_close(t.cxcywh_normalized(), YOLO["bboxes"])
    images = t.per_image()
    assert images[0]["boxes"].shape == (0, 4) and torch.equal(images[1]["boxes"], PIXELS)
    padded = t.padded()  # M = 2 slots, image 0 empty
    assert padded.mask.tolist() == [[False, False], [True, True]] and padded.labels.tolist() == [[0, 0], [2, 0]]
    assert torch.equal(padded.boxes[1], PIXELS) and torch.equal(padded.boxes[0], torch.zeros(2, 4))


def test_from_per_image_and_from_dict_agree_and_keep_object_order():
    a, b = Targets.from_dict(YOLO, 2, HW), Targets.from_per_image(PER_IMAGE, HW)
    for field in ("batch_idx", "cls", "boxes"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    # objects of image 0 after image 1's in the flat layout still land in their own image, in order
    mixed = Targets(torch.tensor([1, 0, 1]), torch.tensor([4, 5, 6]), torch.zeros(3, 4), 2)
    assert mixed.padded().labels.tolist() == [[5, 0], [4, 6]]
    assert [x["labels"].tolist() for x in mixed.per_image()] == [[5], [4, 6]]


def test_polygons_from_counts_or_per_image_give_the_same_valid_vertices():
    poly = torch.tensor([[[0.1, 0.1], [0.2, 0.1], [0.2, 0.2], [0.0, 0.0]]])
    t = Targets.from_dict({**YOLO, "batch_idx": torch.tensor([0]), "cls": torch.tensor([1]),
                           "bboxes": YOLO["bboxes"][:1], "polygons": poly, "polygon_counts": torch.tensor([3])},
                          1, HW)  # fmt: skip
    assert t.polygon_valid.tolist() == [[True, True, True, False]] and t.polygon_counts.tolist() == [3]
    torch.testing.assert_close(t.polygons[0, :3], torch.tensor([[6.4, 6.4], [12.8, 6.4], [12.8, 12.8]]))
    back = Targets.from_per_image(t.per_image(), HW)
    assert torch.equal(back.polygon_valid, t.polygon_valid) and torch.equal(back.polygons, t.polygons)


def test_bad_values_raise_naming_the_argument():
    with pytest.raises(ValueError, match=r"targets\['cls'\]\[1\] is 7; expected an integer in \[0, 3\)"):
        Targets.from_dict({**YOLO, "cls": torch.tensor([1, 7])}, 2, HW, num_classes=3)
    with pytest.raises(ValueError, match=r"images\[1\]\['boxes'\]\[0\] is \[24, 50, 40, 48\]"):
        inverted = {"boxes": torch.tensor([[24.0, 50, 40, 48]]), "labels": torch.tensor([0])}  # y1 > y2
        Targets.from_per_image([PER_IMAGE[0], inverted])
    t = Targets.from_dict(YOLO, 2, HW)
    with pytest.raises(ValueError, match=r"targets.cls\[0\] is 2; expected an integer in \[0, 2\)"):
        t.validate(num_classes=2)
    with pytest.raises(ValueError, match="targets.batch_size is 2 but the predictions hold 3 images"):
        t.validate(batch_size=3)
    with pytest.raises(ValueError, match="targets.polygons"):
        Targets(t.batch_idx, t.cls, t.boxes, 2, polygons=torch.zeros(2, 3, 2))


def test_one_batch_of_targets_trains_the_dense_two_stage_and_grid_criteria():
    t = Targets.from_dict(YOLO, 2, HW)

    # dense: the Targets give exactly the dict path's report (its numbers are checked by hand elsewhere)
    dense = DenseCriterion(3, (8, 16), 4)
    feats = random_feats(2, dense.num_channels, 64, (8, 16), seed=3)
    from_targets, from_dict = dense(feats, t), dense(feats, YOLO)
    for term in ("box", "cls", "dfl"):
        assert torch.equal(from_targets[term].value, from_dict[term].value), term
    assert from_targets["box"].num_pos.item() > 0

    # two-stage: zero logits give hand values (BCE log 2 per sampled anchor, CE log 4 per sampled ROI)
    anchors = torch.tensor([[x, y, x + 16.0, y + 32.0] for y in (0.0, 16.0, 32.0) for x in (0.0, 8.0, 24.0)])
    rois = torch.cat([PIXELS, torch.tensor([[0.0, 0, 10, 10]])])
    outputs = TwoStageOutputs(
        objectness=torch.zeros(2, 9), rpn_deltas=torch.zeros(2, 9, 4), anchors=anchors,
        cls_logits=torch.zeros(3, 4), box_deltas=torch.zeros(3, 3, 4), rois=rois,
        roi_image=torch.tensor([1, 1, 0]), mask_logits=None,
    )  # fmt: skip
    two = TwoStageCriterion(RPNCriterion(sample_num=8), ROICriterion(3, with_mask=False, sample_num=8))
    report = two(outputs, t)
    assert report["rpn_obj"].value.item() == pytest.approx(math.log(2), rel=1e-6)
    assert report["roi_cls"].value.item() == pytest.approx(math.log(4), rel=1e-6)
    # the ROIs are the GT boxes: 2 positives, deltas 0, so roi_box = 0; labels read from the Targets
    assert report["roi_box"].num_pos.item() == 2 and report["roi_box"].value.item() == 0.0
    by_list = two(outputs, PER_IMAGE)
    assert all(torch.equal(report[k].value, by_list[k].value) for k in report)

    # grid: the criterion encodes its cells; box 0's centre (32, 32) -> cell (2, 2), loc (0, 0, log 1, log 2)
    grid = MultigridCriterion(3, stride=16)
    cells = grid.encode(t, (4, 4), batch_size=2)
    torch.testing.assert_close(cells["loc"][1, 2, 2], torch.tensor([0.0, 0.0, 0.0, math.log(2)]))
    assert cells["object_mask"].sum().item() == 2 and cells["labels"][1, 2, 2].item() == 2
    pred = {"loc": torch.zeros(2, 4, 4, 4), "obj": torch.zeros(2, 4, 4), "cls": torch.zeros(2, 4, 4, 3)}
    report = grid(pred, t)
    # loc: squared errors summed, per image (batch_size = 2): box 0 log(2)^2; box 1, a 16 px square centred
    # on (16, 48) -> cell (3, 1), encodes to (0, 0, 0, 0): so loc = log(2)^2 / 2
    assert report["loc"].value.item() == pytest.approx(math.log(2) ** 2 / 2, rel=1e-6)
    assert report["cls"].value.item() == pytest.approx(2 * math.log(3) / 2, rel=1e-6)  # CE over 3 zero logits
    by_hand = grid_targets([b["boxes"] for b in PER_IMAGE], [b["labels"] for b in PER_IMAGE], (4, 4), 16)
    assert all(torch.equal(cells[k], by_hand[k]) for k in cells)
    assert torch.equal(grid(pred, YOLO)["obj"].value, report["obj"].value)  # the dict path, image 64 = 4 x 16


def test_weights_per_call_override_the_base_gains_without_changing_them():
    t = Targets.from_dict(YOLO, 2, HW)
    dense = DenseCriterion(3, (8, 16), 4)
    feats = random_feats(2, dense.num_channels, 64, (8, 16), seed=3)
    base = dense(feats, t)
    doubled = dense(feats, t, weights={"cls": 1.0})  # base gain 0.5
    assert doubled["cls"].weight == 1.0 and base["cls"].weight == 0.5 and dense.weights["cls"] == 0.5
    torch.testing.assert_close(doubled["cls"].value, 2 * base["cls"].value)
    assert torch.equal(doubled["box"].value, base["box"].value)
    with pytest.raises(ValueError, match=r"weights has unknown terms \['bg'\]"):
        dense(feats, t, weights={"bg": 1.0})

    two = TwoStageCriterion(RPNCriterion(sample_num=8), ROICriterion(3, with_mask=False, sample_num=8))
    assert two.weights == {"rpn_obj": 1.0, "rpn_box": 1.0, "roi_cls": 1.0, "roi_box": 1.0}
    outputs = {
        "objectness": torch.zeros(2, 1), "rpn_deltas": torch.zeros(2, 1, 4), "anchors": PIXELS[:1],
        "cls_logits": torch.zeros(1, 4), "box_deltas": torch.zeros(1, 3, 4), "rois": PIXELS[:1],
        "roi_image": torch.tensor([1]),
    }  # fmt: skip
    r = two(outputs, t, weights={"roi_cls": 3.0})
    assert r["roi_cls"].value.item() == pytest.approx(3 * math.log(4), rel=1e-6) and r["roi_cls"].weight == 3.0
    assert two.roi.weights["cls"] == 1.0 and two.weights["roi_cls"] == 1.0  # nothing copied into the parts


def test_from_config_maps_a_config_section_onto_the_options():
    grid = MultigridCriterion.from_config({"loc_loss": "l1", "weights": {"obj": 2.0}, "ignore_iou": 0.7}, 3, 8)
    assert (grid.stride, grid.loc_loss, grid.ignore_iou, grid.weights["obj"]) == (8, "l1", 0.7, 2.0)
    assert {k: n.spec for k, n in grid.normalizers.items()} == dict.fromkeys(("loc", "obj", "cls"), "batch_size")
    dense = DenseCriterion.from_config(
        {"reg_max": 4, "background": {"kind": "focal", "gamma": 1.5, "max_value": 2.0, "warmup": 3.0}}, 3, (8,)
    )
    assert dense.reg_max == 4 and dense.background.kind == "focal" and dense.background.gamma == 1.5
    two = TwoStageCriterion.from_config({"rpn": {"pos_weight": 2.0}, "roi": {"with_mask": False}}, 3, seed=5)
    assert two.rpn.pos_weight == 2.0 and two.terms[-1] == "roi_box" and (two.rpn.seed, two.roi.seed) == (5, 6)
    with pytest.raises(TypeError, match="not_an_option"):
        RPNCriterion.from_config({"not_an_option": 1})
