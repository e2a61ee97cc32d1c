"""Operations losses, assigners and metrics share: box IoU (pairwise and the aligned IoU family), NMS,
DFL decoding, the dense head layout, exact polygon geometry and hulls, ROI Align, box coders."""

from detloss.ops.boxes import box_ciou, box_diou, box_giou, box_iou, box_iou_matrix, box_overlap
from detloss.ops.dfl import dfl_decode, dfl_entropy
from detloss.ops.head_layout import HeadLayout
from detloss.ops.nms import batched_nms, nms
from detloss.ops.polygon import (
    has_zero_area,
    next_valid_index,
    polygon_area,
    polygon_giou,
    polygon_iou,
    prev_valid_index,
    signed_polygon_area,
    vertex_mask,
)

__all__ = [
    "HeadLayout",
    "batched_nms",
    "box_ciou",
    "box_diou",
    "box_giou",
    "box_iou",
    "box_iou_matrix",
    "box_overlap",
    "dfl_decode",
    "dfl_entropy",
    "has_zero_area",
    "next_valid_index",
    "nms",
    "polygon_area",
    "polygon_giou",
    "polygon_iou",
    "prev_valid_index",
    "signed_polygon_area",
    "vertex_mask",
]
