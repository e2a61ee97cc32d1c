"""IoU-family losses ``1 - similarity`` of aligned (pred, target) box pairs; the similarities, their eps
conventions and ranges are in :mod:`detloss.ops.boxes`."""

from __future__ import annotations

import torch

from detloss.ops.boxes import IoUKind, Preset, box_overlap

__all__ = ["iou_loss"]


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    kind: IoUKind = "ciou",
    eps: float = 1e-7,
    min_iou: float | None = None,
    *,
    preset: Preset = None,
) -> torch.Tensor:
    """IoU-family loss ``1 - similarity`` of aligned (pred, target) box pairs.

    Args:
        pred: ``(..., 4)`` floating, pixel ``xyxy``.
        target: ``(..., 4)``, same shape as ``pred``.
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        eps: stabiliser (ultralytics conventions, see :mod:`detloss.ops.boxes`).
        min_iou: CIoU only: drop the aspect-ratio term where ``iou < min_iou``.
        preset: ``None``, or ``"ultralytics"``: GIoU with ultralytics' eps placement (the only kind that
            differs), bit-compatible but out of range for boxes of zero height.

    Returns:
        ``(...)`` float32: ``[0, 1]`` for iou, ``[0, 2]`` for giou and diou, ``[0, 2.5)`` for ciou (see the
        ranges in :mod:`detloss.ops.boxes`, and the GIoU caveat of ``preset="ultralytics"``).

    Example:
        >>> p = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> iou_loss(p, p + 2.0, kind="giou").round(decimals=4)
        tensor([1.7778])
    """
    return 1 - box_overlap(pred, target, kind, eps, min_iou, preset=preset, names=("pred", "target"))
