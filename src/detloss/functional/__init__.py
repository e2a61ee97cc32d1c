"""Pure element losses: each returns per-element values; reductions happen in :mod:`detloss.reduce`."""

from detloss.functional.classification import (
    bce_with_logits,
    quality_focal,
    sigmoid_focal,
    softmax_cross_entropy,
    varifocal,
)
from detloss.functional.dfl import dfl_decode, distribution_focal
from detloss.functional.iou import box_ciou, box_diou, box_giou, box_iou, iou_loss
from detloss.functional.regression import l1, mse, smooth_l1

__all__ = [
    "bce_with_logits",
    "box_ciou",
    "box_diou",
    "box_giou",
    "box_iou",
    "dfl_decode",
    "distribution_focal",
    "iou_loss",
    "l1",
    "mse",
    "quality_focal",
    "sigmoid_focal",
    "smooth_l1",
    "softmax_cross_entropy",
    "varifocal",
]
