"""Small detectors for the training harness."""

from detloss.models.tiny_yolo import TinyDetector

__all__ = ["TinyDetector"]
