"""detloss: object-detection losses with explicit normalization."""

from detloss.criteria.dense import BackgroundPenalty, DenseCriterion
from detloss.normalize import NORMALIZERS, Normalizer
from detloss.report import LossReport, Term, make_term
from detloss.schedule import WarmupSchedule

__version__ = "0.1.0"

__all__ = [
    "NORMALIZERS",
    "BackgroundPenalty",
    "DenseCriterion",
    "LossReport",
    "Normalizer",
    "Term",
    "WarmupSchedule",
    "make_term",
]
