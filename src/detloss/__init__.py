"""detloss: object-detection losses with explicit normalization."""

from detloss.criteria import (
    BackgroundPenalty,
    DenseCriterion,
    MultigridCriterion,
    ROICriterion,
    RPNCriterion,
    Targets,
    TwoStageCriterion,
    TwoStageOutputs,
)
from detloss.core.normalize import NORMALIZERS, Normalizer
from detloss.core.report import LossReport, TermRecord, make_term
from detloss.functional.term import Term
from detloss.weighting.policy import WeightPolicy
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
    "Targets",
    "Term",
    "TermRecord",
    "TwoStageCriterion",
    "TwoStageOutputs",
    "WarmupSchedule",
    "WeightPolicy",
    "make_term",
]
