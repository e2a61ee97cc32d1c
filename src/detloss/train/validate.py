"""``detloss val RUN_DIR [eval.key=value ...]``: a finished run's checkpoint evaluated again on its validation
set, e.g. with test-time augmentation (``eval.tta=d4``) or another NMS threshold, without retraining."""

from __future__ import annotations

from pathlib import Path

import torch

from detloss.train.checkpoint import read_checkpoint
from detloss.train.config import load_config
from detloss.train.data import build_datasets
from detloss.train.distributed import resolve_device
from detloss.train.evaluation import evaluate
from detloss.train.tasks import build_task

__all__ = ["load_run", "validate_run"]

#: What an override may change: the evaluation, not the model or the data it was trained on.
_ALLOWED = ("eval.", "device=", "threads=")


def load_run(run: str | Path, overrides: list[str] | tuple[str, ...] = (), checkpoint: str = "last.pt") -> tuple:
    """``(config, task, validation set, class count)`` of a finished run: its config with ``overrides``, and
    the task's model holding ``RUN/checkpoint``'s EMA weights when saved (what training evaluates), in eval mode."""
    run = Path(run)
    cfg = load_config(run / "config.yaml", overrides)
    _, val, num_classes = build_datasets(cfg.data, cfg.loss.num_vertices)
    task = build_task(cfg, num_classes)
    state = read_checkpoint(run / checkpoint)
    task.model.load_state_dict(state["ema"]["module"] if state.get("ema") else state["model"])
    task.model.eval()
    return cfg, task, val, num_classes


def validate_run(
    run: str | Path, overrides: list[str] | tuple[str, ...] = (), checkpoint: str = "last.pt", errors: bool = False
) -> dict:
    """Metrics of ``RUN/checkpoint`` (:func:`load_run`) on the run's validation set, with the run's config and
    ``overrides`` (``eval.*``, ``device``, ``threads``); ``errors``: also the error kinds (``evaluate``)."""
    for item in overrides:
        if not item.startswith(_ALLOWED):
            raise ValueError(f"detloss val changes only eval.*, device and threads, got {item!r}")
    cfg, task, val, num_classes = load_run(run, overrides, checkpoint)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    return evaluate(task, task.model.to(device), val, cfg, num_classes, device, errors=errors)
