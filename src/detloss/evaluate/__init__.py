"""Evaluation: decoding dense head outputs, NMS, and COCO-style AP for boxes and convex polygons."""

from detloss.evaluate.coco import box_map, polygon_map
from detloss.evaluate.decode import decode_dense
from detloss.ops.nms import batched_nms, nms

__all__ = ["batched_nms", "box_map", "decode_dense", "nms", "polygon_map"]
