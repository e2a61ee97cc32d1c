"""detloss: object-detection losses with explicit normalization."""

from detloss.criteria.dense import BackgroundPenalty, DenseCriterion
from detloss.criteria.multigrid import MultigridCriterion
from detloss.criteria.roi import ROICriterion
from detloss.criteria.rpn import RPNCriterion
from detloss.core.normalize import NORMALIZERS, Normalizer
from detloss.core.report import LossReport, TermRecord, make_term
from detloss.functional.term import Term
from detloss.weighting.schedule import WarmupSchedule

__version__ = "0.1.0"

__all__ = [
    "NORMALIZERS",
    "BackgroundPenalty",
    "DenseCriterion",
    "LossReport",
    "MultigridCriterion",
    "Normalizer",
    "ROICriterion",
    "RPNCriterion",
    "Term",
    "TermRecord",
    "WarmupSchedule",
    "make_term",
]
