"""Detector kinds the trainer runs (``model.kind``): each bundles a model, its criterion, the loss step
and the prediction decoder."""

from __future__ import annotations

from detloss.train.config import TrainConfig
from detloss.train.tasks.base import StepOutputs, Task

__all__ = ["StepOutputs", "Task", "build_task"]


def build_task(cfg: TrainConfig, num_classes: int) -> Task:
    """The :class:`Task` of ``cfg.model.kind``."""
    if cfg.model.kind == "dense":
        from detloss.train.tasks.dense import DenseTask

        return DenseTask(cfg, num_classes)
    if cfg.model.kind == "two_stage":
        from detloss.train.tasks.two_stage import TwoStageTask

        return TwoStageTask(cfg, num_classes)
    if cfg.model.kind == "grid":
        from detloss.train.tasks.grid import GridTask

        return GridTask(cfg, num_classes)
    raise ValueError(f"model.kind must be 'dense', 'two_stage' or 'grid', got {cfg.model.kind!r}")
