"""TaskAlignedAssigner: an anchor claimed by GTs of equal IoU goes to the lowest real GT slot, on both paths.

One 4 x 4 level at stride 8 (a 32 x 32 image): anchor ``i = 4 * row + col`` sits at ``(4 + 8 col, 4 + 8 row)``
and predicts its own 8 x 8 cell. Duplicate GT boxes have identical candidates, alignments and IoUs, so every
one of their positives is claimed by each duplicate and only the tie rule decides its label.
"""

from __future__ import annotations

import math

import pytest
import torch

from detloss.assign.task_aligned import BACKGROUND_LABEL, TaskAlignedAssigner

POINTS = torch.tensor([[4.0 + 8 * c, 4.0 + 8 * r] for r in range(4) for c in range(4)])
CELLS = torch.cat([POINTS - 4, POINTS + 4], -1)
A, C = 16, 3
TOP_LEFT = [0.0, 0.0, 16.0, 16.0]  # holds the centres (4, 4), (12, 4), (4, 12), (12, 12): anchors 0, 1, 4, 5
# Each of those cells is a quarter of the GT: IoU 64 / 256 = 1/4; its centre is 4 px off the GT's in x and
# in y, rho^2 = 32, in an enclosing box of diagonal^2 16^2 + 16^2 = 512; equal aspect ratios, v = 0:
# CIoU = 1/4 - 32/512 = 3/16. All four have the same alignment t = sqrt(0.5) * (3/16)^6, so each soft target
# is 3/16 * t / (t + 1e-9) (the assigner's eps; t is only 3.1e-5, so the eps shows at the 3e-5 level).
T = math.sqrt(0.5) * (3 / 16) ** 6
SCORE = 3 / 16 * T / (T + 1e-9)
POSITIVES = [0, 1, 4, 5]


def assign(gt_boxes, labels, mask, path):
    b = len(gt_boxes)
    assigner = TaskAlignedAssigner(C, max_pairs=1 if path == "chunked" else None)
    return assigner(
        torch.full((b, A, C), 0.5),
        CELLS.expand(b, A, 4),
        POINTS,
        torch.tensor(labels),
        torch.tensor(gt_boxes),
        torch.tensor(mask),
        path=path,
    )


@pytest.mark.parametrize("path", ["dense", "chunked"])
def test_duplicate_gts_give_their_positives_to_the_lowest_slot(path):
    far = [16.0, 16.0, 32.0, 32.0]  # another object, anchors 10, 11, 14, 15
    r = assign(
        [
            [TOP_LEFT, TOP_LEFT, far],  # image 0: duplicates in slots 0 (class 0) and 1 (class 1)
            [far, TOP_LEFT, TOP_LEFT],  # image 1: duplicates in slots 1 (class 2) and 2 (class 1)
            [TOP_LEFT, TOP_LEFT, TOP_LEFT],  # image 2: slot 0 is padding; duplicates in slots 1 (class 1), 2 (0)
        ],
        [[0, 1, 2], [0, 2, 1], [2, 1, 0]],
        [[True, True, True], [True, True, True], [False, True, True]],
        path,
    )
    for image, (slot, cls) in enumerate([(0, 0), (1, 2), (1, 1)]):
        assert r.gt_index[image, POSITIVES].tolist() == [slot] * 4, image
        assert r.labels[image, POSITIVES].tolist() == [cls] * 4, image
        assert r.score[image, POSITIVES].tolist() == pytest.approx([SCORE] * 4, rel=1e-5), image
        expected = torch.zeros(4, C)
        expected[:, cls] = r.score[image, POSITIVES]
        assert torch.equal(r.scores[image, POSITIVES], expected), image
    # the other object keeps its own anchors
    assert r.labels[0, [10, 11, 14, 15]].tolist() == [2] * 4
    assert r.labels[1, [10, 11, 14, 15]].tolist() == [0] * 4
    assert r.fg_mask.sum(1).tolist() == [8, 8, 4]
    assert r.labels[2, 10].item() == BACKGROUND_LABEL
