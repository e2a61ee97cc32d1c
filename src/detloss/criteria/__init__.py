"""Criteria: a detector's outputs and a batch's :class:`Targets` -> a :class:`~detloss.core.report.LossReport`
of named, normalized, weighted terms. Every criterion takes keyword-only ``weights=`` (term -> gain) and
``normalizers=`` (term -> normalizer name), per-call ``forward(..., weights=...)``, and ``from_config``."""

from detloss.criteria.dense import BackgroundPenalty, DenseCriterion, DenseTargets
from detloss.criteria.multigrid import PER_BATCH_NORMALIZERS, MultigridCriterion
from detloss.criteria.roi import ROICriterion, ROITargets, bitmap_mask_targets, polygon_mask_targets
from detloss.criteria.rpn import RPNCriterion, RPNTargets
from detloss.criteria.sampled import SampledCriterion
from detloss.criteria.targets import PaddedTargets, Targets, pad_targets
from detloss.criteria.terms import TermCriterion
from detloss.criteria.two_stage import TwoStageCriterion, TwoStageOutputs

__all__ = [
    "PER_BATCH_NORMALIZERS",
    "BackgroundPenalty",
    "DenseCriterion",
    "DenseTargets",
    "MultigridCriterion",
    "PaddedTargets",
    "ROICriterion",
    "ROITargets",
    "RPNCriterion",
    "RPNTargets",
    "SampledCriterion",
    "Targets",
    "TermCriterion",
    "TwoStageCriterion",
    "TwoStageOutputs",
    "bitmap_mask_targets",
    "pad_targets",
    "polygon_mask_targets",
]
