"""MaxIoUAssigner on hand-built IoU matrices: thresholds, low-quality matches, padding, no GT."""

from __future__ import annotations

import pytest
import torch

from detloss.assign.max_iou import MaxIoUAssigner
from detloss.ops.boxes import box_iou_matrix


def test_thresholds_give_positive_ignored_and_negative():
    # anchors x GTs; no low-quality matches, to see the thresholds alone
    iou = torch.tensor(
        [
            [0.80, 0.10],  # >= 0.7 -> GT 0
            [0.70, 0.00],  # exactly pos_iou -> GT 0
            [0.20, 0.75],  # -> GT 1
            [0.50, 0.60],  # in [0.3, 0.7) -> ignored
            [0.30, 0.00],  # exactly neg_iou -> ignored
            [0.29, 0.10],  # < 0.3 -> negative
        ]
    )
    r = MaxIoUAssigner(0.7, 0.3, allow_low_quality=False).assign_iou(iou, gt_labels=torch.tensor([4, 7]))
    assert r.gt_index.tolist() == [0, 0, 1, -2, -2, -1]
    assert r.labels.tolist() == [4, 4, 7, -1, -1, -1]
    torch.testing.assert_close(r.max_iou, torch.tensor([0.8, 0.7, 0.75, 0.6, 0.3, 0.29]))
    assert r.pos.tolist() == [True, True, True, False, False, False]
    assert r.neg.tolist() == [False, False, False, False, False, True]


def test_low_quality_matches_claim_all_ties_of_each_gt_best():
    iou = torch.tensor(
        [
            [0.40, 0.00, 0.10],  # best of GT 0 (0.4 < pos_iou, >= min_pos_iou) -> GT 0
            [0.40, 0.05, 0.00],  # tie for GT 0's best -> GT 0 as well
            [0.35, 0.00, 0.00],  # not GT 0's best -> ignored
            [0.00, 0.25, 0.00],  # GT 1's best is 0.25 < min_pos_iou -> stays negative
            [0.00, 0.00, 0.00],  # negative
        ]
    )
    assigner = MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3)
    assert assigner.assign_iou(iou).gt_index.tolist() == [0, 0, -2, -1, -1]
    no_lq = MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3, allow_low_quality=False)
    assert no_lq.assign_iou(iou).gt_index.tolist() == [-2, -2, -2, -1, -1]


def test_low_quality_match_overrides_and_last_gt_wins():
    # anchor 0 is positive for GT 0 by threshold, but it is GT 1's best box: mmdet's loop over GTs
    # gives it to GT 1 (the last GT it is best for); anchor 1 is the best of GT 0 and GT 2 -> GT 2.
    iou = torch.tensor(
        [
            [0.90, 0.50, 0.00],
            [0.95, 0.00, 0.60],
            [0.10, 0.10, 0.10],
        ]
    )
    r = MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.3).assign_iou(iou)
    assert r.gt_index.tolist() == [1, 2, -1]
    torch.testing.assert_close(r.max_iou, torch.tensor([0.9, 0.95, 0.1]))  # max IoU is not changed


def test_gt_overlapping_nothing_gets_no_low_quality_match_even_with_min_pos_iou_zero():
    iou = torch.tensor([[0.8, 0.0], [0.1, 0.0]])
    r = MaxIoUAssigner(0.7, 0.3, min_pos_iou=0.0).assign_iou(iou)
    assert r.gt_index.tolist() == [0, -1]


def test_no_gt_makes_everything_negative():
    r = MaxIoUAssigner().assign_iou(torch.zeros(3, 0), gt_labels=torch.zeros(0, dtype=torch.long))
    assert r.gt_index.tolist() == [-1, -1, -1]
    assert r.labels.tolist() == [-1, -1, -1]
    assert r.max_iou.tolist() == [0.0, 0.0, 0.0]
    # batched, one image without GT (all its slots are padding)
    iou = torch.tensor([[[0.9], [0.1]], [[0.9], [0.1]]])
    valid = torch.tensor([[[True]], [[False]]])
    r = MaxIoUAssigner().assign_iou(iou, valid)
    assert r.gt_index.tolist() == [[0, -1], [-1, -1]]
    assert r.max_iou[1].tolist() == [0.0, 0.0]


def test_padding_slots_never_win():
    iou = torch.tensor([[[0.5, 0.9], [0.35, 0.0]]])  # slot 1 is padding with a large IoU
    r = MaxIoUAssigner().assign_iou(iou, torch.tensor([[[True, False]]]))
    assert r.gt_index.tolist() == [[0, -2]]  # anchor 0 is GT 0's best (low quality), anchor 1 ignored
    torch.testing.assert_close(r.max_iou, torch.tensor([[0.5, 0.35]]))


def test_nan_iou_counts_as_zero():
    r = MaxIoUAssigner().assign_iou(torch.tensor([[float("nan"), 0.8], [0.1, float("nan")]]))
    assert r.gt_index.tolist() == [1, -1]


def _boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=g) * 20], 1)


@pytest.mark.parametrize("max_pairs", [2**24, 1], ids=["batched", "per_image"])
def test_call_shared_anchors_and_flat_proposals_match_per_image_matrices(max_pairs):
    assigner = MaxIoUAssigner(0.5, 0.4, min_pos_iou=0.2, max_pairs=max_pairs)
    anchors = _boxes(30, 0)
    gts = [_boxes(3, 1), torch.zeros(0, 4), _boxes(5, 2)]
    labels = [torch.tensor([1, 2, 0]), torch.zeros(0, dtype=torch.long), torch.tensor([3, 3, 1, 0, 2])]
    shared = assigner(anchors, gts, labels)
    assert shared.gt_index.shape == (3, 30)
    for i, (g, lab) in enumerate(zip(gts, labels, strict=True)):
        ref = assigner.assign_iou(box_iou_matrix(anchors, g), gt_labels=lab)
        assert torch.equal(shared.gt_index[i], ref.gt_index)
        assert torch.equal(shared.labels[i], ref.labels)
        torch.testing.assert_close(shared.max_iou[i], ref.max_iou)
    # the same anchors as flat proposals of each image
    rois = anchors.repeat(3, 1)
    roi_image = torch.arange(3).repeat_interleave(30)
    flat = assigner(rois, gts, labels, box_image=roi_image)
    assert torch.equal(flat.gt_index, shared.gt_index.reshape(-1))
    assert torch.equal(flat.labels, shared.labels.reshape(-1))
    # proposals in a shuffled image order
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(0))
    shuffled = assigner(rois[perm], gts, labels, box_image=roi_image[perm])
    assert torch.equal(shuffled.gt_index, flat.gt_index[perm])
    assert not shared.pos[1].any() and shared.pos[0].any() and shared.pos[2].any()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="neg_iou"):
        MaxIoUAssigner(0.3, 0.7)
    with pytest.raises(ValueError, match="boxes"):
        MaxIoUAssigner()(torch.zeros(3, 5), [torch.zeros(0, 4)])
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]"):
        MaxIoUAssigner()(torch.zeros(3, 4), [torch.zeros(2, 3)])
