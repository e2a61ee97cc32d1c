"""The trainer a config asks for: plain, or semi-supervised when ``config.semi`` is set. Its own module
because :class:`~detloss.train.semi.SemiTrainer` extends :class:`~detloss.train.trainer.Trainer`: choosing
between them inside ``trainer.py`` would make the two modules import each other."""

from __future__ import annotations

from pathlib import Path

from detloss.train.config import TrainConfig
from detloss.train.semi import SemiTrainer
from detloss.train.trainer import Trainer

__all__ = ["build_trainer"]


def build_trainer(
    config: TrainConfig, resume: str | Path | None = None, allow_changes: tuple[str, ...] = ()
) -> Trainer:
    """:class:`Trainer`, or :class:`~detloss.train.semi.SemiTrainer` when ``config.semi`` is set."""
    if config.semi is not None:
        return SemiTrainer(config, resume=resume, allow_changes=allow_changes)
    return Trainer(config, resume=resume, allow_changes=allow_changes)
