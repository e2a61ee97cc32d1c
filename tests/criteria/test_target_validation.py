"""Bad targets raise ValueError naming the user's argument, the offending index and the expected range;
they are never repaired (turned into "no object", truncated to an integer, clamped). The checks read the
device once per forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from detloss import DenseCriterion
from detloss.assign.task_aligned import TaskAlignedAssigner
from detloss.criteria.multigrid import MultigridCriterion
from detloss.criteria.roi import ROICriterion
from detloss.criteria.rpn import RPNCriterion
from detloss.criteria.target_checks import check_gt_boxes, check_roi_targets
from detloss.criteria.targets import pad_targets
from detloss.criteria.two_stage import TwoStageCriterion, TwoStageOutputs
from detloss.data.synthetic import random_feats, random_targets

C, R, K = 3, 4, 6
STRIDES = (8, 16)
NAN, INF = math.nan, math.inf

# Two images: image 0 holds rows 0 and 1, image 1 row 2 (normalized cx, cy, w, h).
DENSE = {
    "batch_idx": torch.tensor([0, 0, 1]),
    "cls": torch.tensor([0, 2, 1]),
    "bboxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2], [0.5, 0.5, 0.4, 0.4]]),
}


def _dense(targets: dict, num_vertices: int = 0, **kw) -> None:
    crit = DenseCriterion(C, STRIDES, R, num_vertices=num_vertices, **kw)
    crit(random_feats(2, crit.num_channels, 64, STRIDES), targets)


def _with(key: str, row: int, value) -> dict:
    t = {k: v.clone() for k, v in DENSE.items()}
    t[key] = t[key].to(torch.float32) if isinstance(value, float) and not t[key].is_floating_point() else t[key]
    t[key][row] = torch.as_tensor(value, dtype=t[key].dtype)
    return t


def test_valid_targets_pass():
    _dense(DENSE)  # the fixture itself is valid; each case below breaks one entry of it
    _dense({**DENSE, "batch_idx": DENSE["batch_idx"].float(), "cls": DENSE["cls"].float()[:, None]})


# -- DenseCriterion: boxes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box, why",
    [
        ([0.6, 0.6, NAN, 0.2], "NaN"),
        ([0.6, INF, 0.3, 0.2], "Inf"),
        ([0.6, 0.6, -0.3, 0.2], "negative width"),
        ([0.6, 0.6, 0.3, -0.01], "negative height"),
    ],
)
def test_dense_bad_box_raises_instead_of_becoming_background(box, why):
    with pytest.raises(ValueError, match=r"targets\['bboxes'\]\[1\]") as err:
        _dense(_with("bboxes", 1, box))
    assert "w >= 0 and h >= 0" in str(err.value) and "finite" in str(err.value), why


# -- DenseCriterion: classes and image indices -----------------------------------------------------------


@pytest.mark.parametrize("value", [3.7, 3, -1, NAN])
def test_dense_bad_class_raises_instead_of_being_truncated(value):
    with pytest.raises(ValueError, match=r"targets\['cls'\]\[2\]") as err:
        _dense(_with("cls", 2, value))
    msg = str(err.value)
    assert "integer in [0, 3)" in msg and "gt_labels" not in msg


def test_dense_bad_class_in_the_ultralytics_n_by_1_layout():
    t = {**DENSE, "cls": DENSE["cls"].float()[:, None].clone()}
    t["cls"][0, 0] = 0.5
    with pytest.raises(ValueError, match=r"targets\['cls'\]\[0\] is 0\.5.*\[0, 3\)"):
        _dense(t)


@pytest.mark.parametrize("value", [0.9, -1, 2, NAN])
def test_dense_bad_batch_idx_raises_instead_of_crashing_or_being_truncated(value):
    with pytest.raises(ValueError, match=r"targets\['batch_idx'\]\[0\]") as err:
        _dense(_with("batch_idx", 0, value))
    assert "integer in [0, 2)" in str(err.value)


def test_dense_reports_the_first_of_several_bad_entries_and_their_count():
    t = _with("cls", 1, 7)
    t["cls"][2] = 9
    with pytest.raises(ValueError, match=r"targets\['cls'\]\[1\] is 7; expected an integer in \[0, 3\) \(2 of 3"):
        _dense(t)


# -- DenseCriterion: polygons ----------------------------------------------------------------------------


def _poly_targets() -> dict:
    square = torch.tensor([[0.5, 0.4], [0.6, 0.5], [0.5, 0.6], [0.4, 0.5]])
    angle = torch.arange(K) * (2 * math.pi / K)
    polygons = torch.zeros(3, K, 2)
    polygons[:2, :4] = square
    polygons[2] = 0.5 + 0.1 * torch.stack((angle.cos(), angle.sin()), -1)  # every vertex valid: count K
    return {**DENSE, "polygons": polygons, "polygon_counts": torch.tensor([4, 4, K])}


def test_valid_polygon_targets_pass():
    _dense(_poly_targets(), num_vertices=K)


@pytest.mark.parametrize("count", [12, -3, 3.5, K + 1])
def test_dense_bad_polygon_count_raises(count):
    t = _poly_targets()
    t["polygon_counts"] = t["polygon_counts"].to(torch.float32 if isinstance(count, float) else torch.long)
    t["polygon_counts"][1] = count
    with pytest.raises(ValueError, match=r"targets\['polygon_counts'\]\[1\]") as err:
        _dense(t, num_vertices=K)
    assert f"integer in [0, {K}]" in str(err.value)


def test_dense_polygon_valid_must_be_a_bool_mask():
    t = _poly_targets()
    del t["polygon_counts"]
    t["polygon_valid"] = torch.ones(3, K)
    t["polygon_valid"][2, 5] = 0.5  # .to(bool) would make it a valid vertex
    with pytest.raises(ValueError, match=r"targets\['polygon_valid'\]\[2, 5\] is 0\.5; expected 0 or 1"):
        _dense(t, num_vertices=K)


def test_dense_non_finite_valid_vertex_raises_but_padding_is_free():
    t = _poly_targets()
    t["polygons"][:2, 4:] = NAN  # padding past the counts of rows 0 and 1 is never read
    _dense(t, num_vertices=K)
    t["polygons"][0, 3, 1] = INF
    with pytest.raises(ValueError, match=r"targets\['polygons'\]\[0, 3\] is \[0\.4, inf\]; expected finite"):
        _dense(t, num_vertices=K)


# -- DenseCriterion: level sizes -------------------------------------------------------------------------


def test_dense_level_sizes_must_match_the_strides():
    crit = DenseCriterion(C, STRIDES, R)
    same = [torch.zeros(2, crit.num_channels, 8, 8), torch.zeros(2, crit.num_channels, 8, 8)]
    with pytest.raises(ValueError, match=r"feats\[1\] has 8x8 cells.*strides\[1\] = 16.*64x64.*4x4"):
        crit(same, DENSE)
    swapped = DenseCriterion(C, (16, 8), R)  # level 1 would need 8x8 cells, level 0 has them
    with pytest.raises(ValueError, match=r"feats\[1\] has 4x4 cells.*strides\[1\] = 8"):
        swapped(random_feats(2, crit.num_channels, 64, STRIDES), DENSE)
    sized = DenseCriterion(C, STRIDES, R, image_size=(96, 64))
    with pytest.raises(ValueError, match=r"feats\[0\] has 8x8 cells.*strides\[0\] = 8.*96x64.*12x8"):
        sized(random_feats(2, crit.num_channels, 64, STRIDES), DENSE)


def test_dense_level_sizes_rounded_either_way_pass():
    # a 100 px image: stride-2 convs with padding give ceil (13, 7), without padding floor (12, 6)
    for sizes in (((13, 13), (7, 7)), ((12, 12), (6, 6))):
        crit = DenseCriterion(C, STRIDES, R, image_size=(100, 100))
        crit([torch.zeros(2, crit.num_channels, h, w) for h, w in sizes], DENSE)


# -- RPN / ROI / two-stage -------------------------------------------------------------------------------

ANCHORS = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [20, 20, 30, 30]])


def _rpn(gt_boxes) -> None:
    RPNCriterion(sample_num=8)(torch.zeros(2, 4), torch.zeros(2, 4, 4), ANCHORS, gt_boxes)


@pytest.mark.parametrize("box", [[0.0, NAN, 10, 10], [0.0, 0, INF, 10], [10.0, 0, 0, 10], [0.0, 10, 10, 9]])
def test_rpn_bad_gt_box_raises_instead_of_being_ignored(box):
    good = torch.tensor([[1.0, 0, 11, 10], [20, 20, 30, 31]])
    _rpn([torch.zeros(0, 4), good])
    with pytest.raises(ValueError, match=r"gt_boxes\[1\]\[1\] is .*x1 <= x2 and y1 <= y2"):
        _rpn([torch.zeros(0, 4), torch.cat((good[:1], torch.tensor([box])))])


ROI_TARGETS = [
    {
        "boxes": torch.tensor([[0.0, 0, 10, 10]]),
        "labels": torch.tensor([1]),
        "polygons": torch.tensor([[[0.0, 0], [10, 0], [0, 10], [0, 0]]]),
        "polygon_counts": torch.tensor([3]),
    },
    {
        "boxes": torch.tensor([[0.0, 0, 8, 8], [2.0, 2, 6, 6]]),
        "labels": torch.tensor([0, 1]),
        "polygons": torch.tensor([[[0.0, 0], [8, 0], [8, 8], [0, 8]], [[2.0, 2], [6, 2], [6, 6], [2, 6]]]),
        "polygon_counts": torch.tensor([4, 4]),
    },
]
ROIS = torch.tensor([[0.0, 0, 10, 12], [20, 20, 30, 30], [0, 0, 8, 8], [4, 4, 12, 12]])
ROI_IMAGE = torch.tensor([0, 0, 1, 1])


def _roi(targets=ROI_TARGETS, roi_image=ROI_IMAGE) -> None:
    crit = ROICriterion(2, mask_size=2, sample_num=8)
    crit(torch.zeros(4, 3), torch.zeros(4, 2, 4), torch.zeros(4, 2, 2, 2), ROIS, roi_image, targets)


def _roi_with(image: int, key: str, row, value) -> list[dict]:
    targets = [{k: v.clone() for k, v in t.items()} for t in ROI_TARGETS]
    t = targets[image]
    if isinstance(value, float) and not t[key].is_floating_point():
        t[key] = t[key].float()
    t[key][row] = torch.as_tensor(value, dtype=t[key].dtype)
    return targets


def test_roi_valid_targets_pass():
    _roi()


@pytest.mark.parametrize("box", [[2.0, 2, NAN, 6], [6.0, 2, 2, 6], [2.0, -INF, 6, 6]])
def test_roi_bad_gt_box_raises(box):
    with pytest.raises(ValueError, match=r"targets\[1\]\['boxes'\]\[1\] is .*x1 <= x2 and y1 <= y2"):
        _roi(_roi_with(1, "boxes", 1, box))


@pytest.mark.parametrize("label", [2, -1, 0.5])
def test_roi_bad_label_raises_instead_of_crashing(label):
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\]\[1\] is .*integer in \[0, 2\)"):
        _roi(_roi_with(1, "labels", 1, label))


@pytest.mark.parametrize("image", [2, -1])
def test_roi_image_out_of_range_raises_instead_of_crashing(image):
    roi_image = ROI_IMAGE.clone()
    roi_image[3] = image
    with pytest.raises(ValueError, match=r"roi_image\[3\] is -?\d; expected an integer in \[0, 2\)"):
        _roi(roi_image=roi_image)


@pytest.mark.parametrize("count", [5, -1])
def test_roi_bad_polygon_count_raises(count):
    with pytest.raises(
        ValueError, match=r"targets\[1\]\['polygon_counts'\]\[0\] is -?\d; expected an integer in \[0, 4\]"
    ):
        _roi(_roi_with(1, "polygon_counts", 0, count))


def test_two_stage_passes_the_part_criteria_errors_through():
    crit = TwoStageCriterion(RPNCriterion(sample_num=8), ROICriterion(2, mask_size=2, sample_num=8))
    bad = _roi_with(0, "labels", 0, 5)
    outputs = TwoStageOutputs(
        objectness=torch.zeros(2, 4), rpn_deltas=torch.zeros(2, 4, 4), anchors=ANCHORS, cls_logits=torch.zeros(4, 3),
        box_deltas=torch.zeros(4, 2, 4), rois=ROIS, roi_image=ROI_IMAGE, mask_logits=torch.zeros(4, 2, 2, 2),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]\[0\] is 5"):
        crit(outputs, bad)


# -- Multigrid -------------------------------------------------------------------------------------------


def _grid_targets(labels: torch.Tensor) -> tuple[dict, dict]:
    obj = torch.zeros(1, 2, 2, dtype=torch.bool)
    obj[0, 1, 0] = True
    pred = {"loc": torch.zeros(1, 2, 2, 4), "obj": torch.zeros(1, 2, 2), "cls": torch.zeros(1, 2, 2, 2)}
    tgt = {"loc": torch.zeros(1, 2, 2, 4), "object_mask": obj, "ignore_mask": torch.zeros_like(obj), "labels": labels}
    return pred, tgt


@pytest.mark.parametrize("cls_loss", ["bce", "ce"])
@pytest.mark.parametrize("label", [2, -1])
def test_multigrid_bad_class_on_an_object_cell_raises_instead_of_crashing(cls_loss, label):
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    labels[0, 1, 0] = label
    with pytest.raises(ValueError, match=r"targets\['labels'\]\[0, 1, 0\] is -?\d; expected an integer in \[0, 2\)"):
        MultigridCriterion(2, cls_loss=cls_loss).cell_loss(*_grid_targets(labels))


def test_multigrid_labels_off_object_cells_are_not_read():
    labels = torch.full((1, 2, 2), 99)
    labels[0, 1, 0] = 1
    report = MultigridCriterion(2, cls_loss="ce").cell_loss(*_grid_targets(labels))
    assert report["cls"].value.item() == pytest.approx(math.log(2))  # uniform logits over 2 classes


def test_multigrid_masks_must_be_bool_masks():
    pred, tgt = _grid_targets(torch.zeros(1, 2, 2, dtype=torch.long))
    ignore = torch.zeros(1, 2, 2)
    ignore[0, 0, 1] = 0.3  # .to(bool) would make the cell ignored
    with pytest.raises(ValueError, match=r"targets\['ignore_mask'\]\[0, 0, 1\] is 0\.3; expected 0 or 1"):
        MultigridCriterion(2).cell_loss(pred, {**tgt, "ignore_mask": ignore})


# -- one host sync -------------------------------------------------------------------------------------------

HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy"}


class _HostReads(TorchFunctionMode):
    """Counts explicit device-to-host reads (each one a sync on an accelerator)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in HOST_READS
        return func(*args, **(kwargs or {}))


def test_the_counter_sees_host_reads():
    with _HostReads() as reads:
        x = torch.ones(3)
        bool(x.any()), int(x.sum()), x.tolist()
    assert reads.count == 3


def test_padding_and_checking_dense_targets_reads_the_device_once():
    targets = random_targets(4, C, [3, 0, 5, 1], num_vertices=K, seed=1)
    with _HostReads() as reads:
        padded = pad_targets(targets, 4, (64, 64), torch.device("cpu"), num_classes=C)
    assert reads.count == 1  # the padded size and every check flag in one read
    assert padded.mask.sum(1).tolist() == [3, 0, 5, 1]


def test_rpn_roi_and_multigrid_checks_read_the_device_once():
    gt = [torch.tensor([[1.0, 0, 11, 10]]), torch.tensor([[20.0, 20, 30, 31]])]
    with _HostReads() as reads:
        check_gt_boxes(gt, torch.device("cpu"))
    assert reads.count == 1
    with _HostReads() as reads:
        check_roi_targets(ROI_IMAGE, ROI_TARGETS, 2, with_mask=True)
    assert reads.count == 1
    with _HostReads() as reads:  # the whole loss of encoded cells: the criterion reads nothing else
        MultigridCriterion(2).cell_loss(*_grid_targets(torch.zeros(1, 2, 2, dtype=torch.long)))
    assert reads.count == 1


def test_task_aligned_assigner_checks_labels_of_real_slots_in_its_one_read():
    assigner = TaskAlignedAssigner(2)
    scores, boxes = torch.full((1, 4, 2), 0.5), torch.tensor([[[0.0, 0, 8, 8]] * 4])
    points = torch.tensor([[4.0, 4], [12, 4], [4, 12], [12, 12]])
    gt_boxes = torch.tensor([[[0.0, 0, 8, 8], [0, 0, 0, 0]]])
    mask = torch.tensor([[True, False]])
    with _HostReads() as reads:  # label 7 sits in a padding slot: never read
        result = assigner(scores, boxes, points, torch.tensor([[1, 7]]), gt_boxes, mask)
    assert reads.count == 1 and result.fg_mask[0].tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match=r"gt_labels must lie in \[0, 2\)"):
        assigner(scores, boxes, points, torch.tensor([[2, 0]]), gt_boxes, mask)
