"""Exact geometry: convex polygon area, clipping, IoU and GIoU (for metrics and comparison)."""

from detloss.geometry.polygon import (
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
