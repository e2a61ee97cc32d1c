"""Operations losses, assigners and metrics share: exact polygon geometry and hulls, NMS, ROI Align, box coders, the dense head layout."""

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
    "has_zero_area",
    "next_valid_index",
    "polygon_area",
    "polygon_giou",
    "polygon_iou",
    "prev_valid_index",
    "signed_polygon_area",
    "vertex_mask",
]
