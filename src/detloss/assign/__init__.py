"""Target assignment: which prediction trains towards which ground truth (task-aligned, max-IoU with
random sampling, grid cells) and the anchor points they are placed on."""

from detloss.assign.anchors import make_anchors
from detloss.assign.grid import grid_targets
from detloss.assign.max_iou import MaxIoUAssigner, MaxIoUAssignment
from detloss.assign.sampler import RandomSampler, SampleResult, content_keys, hashed_keys, image_keys
from detloss.assign.task_aligned import BACKGROUND_LABEL, AssignResult, TaskAlignedAssigner

__all__ = [
    "BACKGROUND_LABEL",
    "AssignResult",
    "MaxIoUAssigner",
    "MaxIoUAssignment",
    "RandomSampler",
    "SampleResult",
    "TaskAlignedAssigner",
    "content_keys",
    "grid_targets",
    "hashed_keys",
    "image_keys",
    "make_anchors",
]
