"""Small detectors for the training harness."""

from detloss.models.grid import TinyGrid, decode_grid
from detloss.ops.roi_align import roi_align
from detloss.models.tiny_yolo import TinyDetector
from detloss.models.two_stage import TinyTwoStage

__all__ = ["TinyDetector", "TinyGrid", "TinyTwoStage", "decode_grid", "roi_align"]
