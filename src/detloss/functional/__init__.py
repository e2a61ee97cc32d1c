"""Pure element losses: each returns per-element values; the one reduction is :func:`detloss.core.report.make_term`,
and :class:`Term` pairs an element loss with its normalizer and that reduction in one Module."""

from detloss.functional.background import focal_background, max_score_penalty
from detloss.functional.classification import (
    bce_with_logits,
    quality_focal,
    sigmoid_focal,
    softmax_cross_entropy,
    varifocal,
)
from detloss.functional.dfl import distribution_focal
from detloss.functional.iou import iou_loss
from detloss.functional.polygon import convexity_penalty, mgiou, mgiou_loss, sort_by_angle
from detloss.functional.regression import l1, mse, smooth_l1
from detloss.functional.sparse_bce import bce_with_sparse_targets
from detloss.functional.term import Term

__all__ = [
    "Term",
    "bce_with_logits",
    "bce_with_sparse_targets",
    "convexity_penalty",
    "focal_background",
    "max_score_penalty",
    "mgiou",
    "mgiou_loss",
    "sort_by_angle",
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
