"""Pairwise box IoU (and COCO's form of it) against hand values and pycocotools; the aligned family by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from detloss.evaluate.coco import coco_box_iou
from detloss.ops.boxes import box_ciou, box_diou, box_giou, box_iou, box_iou_matrix, box_overlap


def test_box_iou_matrix_by_hand():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [10.0, 10.0, 11.0, 11.0], [0.0, 0.0, 2.0, 2.0]])
    # (0): inter 1, union 4 + 4 - 1 = 7; (1) disjoint; (2) identical. Row 1: areas 4 and 1 x 4 = 4
    # vs b0: inter x 1..3, y 1..1 -> 0; vs b2: inter 2 x 1 = 2, union 4 + 4 - 2 = 6
    expected = [[1 / 7, 0.0, 1.0], [0.0, 0.0, 2 / 6]]
    out = box_iou_matrix(a, b)
    assert out.shape == (2, 3)
    assert out.tolist() == [pytest.approx(r, rel=1e-6) for r in expected]
    # precomputed areas are used as given (here twice the true areas: 1 / (8 + 8 - 1))
    areas = 2 * torch.tensor([4.0, 4.0])
    assert box_iou_matrix(a[:1], b[:1], areas[:1], areas[:1]).item() == pytest.approx(1 / 15, rel=1e-6)


def test_box_iou_matrix_degenerate_pair_is_nan_and_gradient_flows():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert math.isnan(box_iou_matrix(point, point).item())
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(box_iou_matrix, (a, b))


def test_coco_box_iou_matches_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(40, 2, generator=g, dtype=torch.float64) * 50
    wh = torch.rand(40, 2, generator=g, dtype=torch.float64) * 30
    wh[::7] = 0.0  # zero-area boxes: 0, not nan, also against each other
    boxes = torch.cat([xy, wh], 1)
    dt, gt = boxes[:25], boxes[25:]
    ref = mask_utils.iou(dt.numpy(), gt.numpy(), np.zeros(len(gt), dtype=np.uint8))
    out = coco_box_iou(dt, gt)
    assert out.dtype == torch.float64 and not out.isnan().any()
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=0)
    assert coco_box_iou(boxes[:1] * 0, boxes[:1] * 0).item() == 0.0


def test_box_overlap_picks_the_kind_by_name():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    b = a + 2.0
    # disjoint unit squares 2 apart: IoU 0, GIoU 0 - (9 - 2) / 9, DIoU 0 - 8 / 18
    assert box_overlap(a, b, "iou").item() == pytest.approx(0.0, abs=1e-6)
    assert box_overlap(a, b, "giou").item() == pytest.approx(-7 / 9, rel=1e-5)
    assert box_overlap(a, b, "diou").item() == pytest.approx(-4 / 9, rel=1e-5)
    for kind, fn in (("iou", box_iou), ("giou", box_giou), ("diou", box_diou), ("ciou", box_ciou)):
        assert torch.equal(box_overlap(a, b + 0.5, kind), fn(a, b + 0.5))
    with pytest.raises(ValueError, match="kind must be one of"):
        box_overlap(a, b, "siou")
    with pytest.raises(ValueError, match="pred"):
        box_overlap(a[:, :3], b, names=("pred", "target"))
