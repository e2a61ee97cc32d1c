"""Semi-supervised training: teacher pseudo-labels, their filters, and their quality against ground truth."""

from detloss.semi.filters import (
    FILTER_KINDS,
    AdaptiveClassThreshold,
    DetectionFilter,
    EntropyFilter,
    PseudoLabelFilter,
    ScoreThreshold,
    build_filters,
    teacher_pseudo_labels,
)
from detloss.semi.quality import pseudo_label_quality

__all__ = [
    "FILTER_KINDS",
    "AdaptiveClassThreshold",
    "DetectionFilter",
    "EntropyFilter",
    "PseudoLabelFilter",
    "ScoreThreshold",
    "build_filters",
    "pseudo_label_quality",
    "teacher_pseudo_labels",
]
