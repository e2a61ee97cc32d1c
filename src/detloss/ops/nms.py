"""Greedy non-maximum suppression of ``xyxy`` boxes, plain and class-aware, in pure PyTorch.

Semantics are torchvision's ``nms`` / ``batched_nms``: boxes are visited in decreasing score order
(ties: the lower index first, a stable sort), a box is kept unless a kept box overlaps it with
``IoU > iou_threshold`` (strictly greater), and the result lists the kept indices in decreasing score
order. IoU is :func:`~detloss.ops.boxes.box_iou_matrix` (areas ``(x2 - x1) * (y2 - y1)``, no ``+1``).

The suppression runs block by block over the score-sorted boxes: each block's IoU rows against every
later box are computed at once (a ``(block, N)`` boolean matrix, never ``(N, N)``), the greedy choice
inside the block is resolved on the few overlapping pairs, and the block's kept boxes then suppress
all later boxes in one ``any``. Memory is ``O(block * N)``; the Python work is proportional to the
number of overlapping pairs among still-alive boxes of a block.
"""

from __future__ import annotations

import torch

from detloss.core.checks import check_same, check_tensor
from detloss.ops.boxes import box_iou_matrix

__all__ = ["batched_nms", "nms"]

_BLOCK = 512


def _check(boxes: object, scores: object) -> None:
    check_tensor("boxes", boxes, ("N", 4), floating=True)
    check_tensor("scores", scores, ("N",))
    assert isinstance(boxes, torch.Tensor) and isinstance(scores, torch.Tensor)
    check_same("boxes", boxes, "scores", scores, dims=(0,))


@torch.no_grad()
def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices ``(K,)`` int64 of the kept boxes, sorted by decreasing score.

    Args:
        boxes: ``(N, 4)`` ``xyxy`` boxes (any unit).
        scores: ``(N,)`` scores.
        iou_threshold: a box is discarded when it overlaps a kept, higher-scored box with
            ``IoU > iou_threshold``.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
        >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        tensor([0, 2])
    """
    _check(boxes, scores)
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    b = b if b.dtype == torch.float64 else b.float()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = torch.zeros(n, dtype=torch.bool, device=b.device)
    kept: list[torch.Tensor] = []
    for start in range(0, n, _BLOCK):
        end = min(start + _BLOCK, n)
        rows = (~suppressed[start:end]).nonzero().squeeze(1) + start  # alive boxes of this block
        if rows.numel() == 0:
            continue
        later = (~suppressed[end:]).nonzero().squeeze(1) + end  # alive boxes after it
        cols = torch.cat([rows, later])
        over = box_iou_matrix(b[rows], b[cols], area[rows], area[cols]) > iou_threshold  # (r, r + later)
        r = rows.numel()
        alive = [True] * r
        # Row-major pairs (i < j): alive[i] is final when its first pair comes up, since only pairs
        # (k, i) with k < i can change it and they come earlier.
        for i, j in over[:, :r].triu(1).nonzero().tolist():
            if alive[i]:
                alive[j] = False
        keep_rows = torch.tensor(alive, dtype=torch.bool, device=b.device)
        kept.append(order[rows[keep_rows]])
        if later.numel():
            suppressed[later[over[keep_rows, r:].any(0)]] = True
    return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=boxes.device)


@torch.no_grad()
def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS: boxes of different ``labels`` never suppress each other.

    Uses the coordinate-offset trick: each class is translated by ``label * (span + 1)``, with ``span``
    the extent of all coordinates, so classes occupy disjoint regions and one :func:`nms` call does
    them all. The translation is done in float64 so that the IoU of same-class pairs is unchanged to
    float32 precision.

    Args:
        boxes: ``(N, 4)`` ``xyxy``.
        scores: ``(N,)``.
        labels: ``(N,)`` integer classes.
        iou_threshold: as in :func:`nms`.

    Returns:
        ``(K,)`` int64 kept indices, sorted by decreasing score.

    Example:
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        >>> batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
        tensor([0, 1])
    """
    _check(boxes, scores)
    check_tensor("labels", labels, ("N",))
    check_same("boxes", boxes, "labels", labels, dims=(0,))
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor of shape (N,), got dtype {labels.dtype}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.double()
    lo, hi = b.min(), b.max()
    offsets = (labels - labels.min()).double() * (hi - lo + 1.0)
    return nms(b + offsets[:, None], scores, iou_threshold)
