"""detloss inside ultralytics YOLO training.

:class:`DetectionLoss` stands in for ultralytics' ``v8DetectionLoss``: the same call
``(preds, batch) -> (loss_vector * batch_size, {name: detached item})``, with stride, classes and
``reg_max`` read from the model's ``Detect`` head and the box/cls/dfl gains from ``model.args``, and
every :class:`~detloss.criteria.dense.DenseCriterion` option on top (named normalizers per term, the
background penalty, the class-loss kind, exact DDP normalization). ``preset="ultralytics"``
reproduces ``v8DetectionLoss`` itself.

:func:`attach` switches a ``DetectionModel``, a ``YOLO`` object or a running trainer over in one call::

    from ultralytics import YOLO
    from detloss.integrations.ultralytics import attach

    model = YOLO("yolov8n.yaml")
    attach(model, normalizers={"cls": "num_pos"}, doctor_every=50)
    model.train(data="data.yaml", epochs=100)   # doctor.csv and findings land in the run folder

ultralytics is imported only inside the functions that need it, so ``import detloss`` never needs it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detloss.core.atomic import atomic_write
from detloss.criteria.dense import DenseCriterion
from detloss.diagnose.doctor import Doctor, findings_table, shares_table
from detloss.weighting.policy import Schedule, WeightPolicy

#: ultralytics' own gains (``default.yaml``), used when ``model.args`` lacks one.
ULTRALYTICS_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}


def _arg(args: Any, key: str, default: float) -> float:
    """``model.args`` is a namespace during training and a plain dict on a loaded checkpoint."""
    if isinstance(args, Mapping):
        return float(args.get(key, default))
    return float(getattr(args, key, default))


def _detect_head(model: torch.nn.Module) -> torch.nn.Module:
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, torch.nn.Sequential) else None
    if head is None or not all(hasattr(head, a) for a in ("nc", "reg_max", "stride")):
        raise ValueError(
            f"model must be an ultralytics DetectionModel whose last layer is a Detect head (nc, reg_max, "
            f"stride); got {type(model).__name__}"
        )
    if getattr(head, "one2one_cv2", None) is not None:
        raise ValueError("model has an end-to-end (one-to-one) head; DetectionLoss replaces v8DetectionLoss only")
    if not torch.is_tensor(head.stride) or float(head.stride.min()) <= 0:
        raise ValueError("model's Detect head has no strides yet; build the model before attaching detloss")
    return head


def level_maps(preds: Mapping[str, Any]) -> list[Tensor]:
    """ultralytics' training outputs -> detloss's per-level head maps.

    ``preds["boxes"]`` ``(B, 4 * reg_max, A)`` and ``preds["scores"]`` ``(B, C, A)``, ``A`` the anchors of
    every level in order; ``preds["feats"]`` gives each level's ``(H_l, W_l)``. Returns
    ``[(B, 4 * reg_max + C, H_l, W_l)]`` (one concatenation; the rest are views).
    """
    head = torch.cat((preds["boxes"], preds["scores"]), 1)
    sizes = [tuple(f.shape[2:]) for f in preds["feats"]]
    if sum(h * w for h, w in sizes) != head.shape[2]:
        raise ValueError(f"preds['feats'] level sizes {sizes} do not add up to the {head.shape[2]} anchors of preds['boxes']")
    levels = head.split([h * w for h, w in sizes], dim=2)
    return [lvl.unflatten(2, hw) for lvl, hw in zip(levels, sizes, strict=True)]


class DetectionLoss:
    """A drop-in for ultralytics' ``v8DetectionLoss`` computed by detloss.

    Args:
        model: an ultralytics ``DetectionModel`` (de-parallelised), already built (strides known).
        preset: ``"ultralytics"`` for ``v8DetectionLoss``'s exact numbers, ``None`` for detloss defaults.
        weights: term gains overriding ``model.args.box/cls/dfl`` (e.g. ``{"cls": 1.0}``).
        normalizers: term -> normalizer name, e.g. ``{"cls": "num_pos"}``.
        schedules: term -> schedule of its gain by epoch (e.g. ``{"bg": WarmupSchedule(1.0, burn_in=5,
            warmup=10)}`` for the background penalty), through a :class:`~detloss.weighting.policy.WeightPolicy`;
            :attr:`epoch` is the epoch it reads (:func:`attach` sets it at each epoch start).
        doctor: an optional :class:`~detloss.diagnose.doctor.Doctor`; on the training calls it is due
            (its ``every_steps``), it measures each term's gradient w.r.t. the head outputs ``preds["boxes"]``
            and ``preds["scores"]`` inside this call, where the graph is alive.
        **options: any other :class:`DenseCriterion` keyword (``cls_loss``, ``background``, ``box_loss``, ...).

    Returns (on call): ``(loss, items)``: ``loss`` ``(T,)`` the term values times the batch size (what
    ultralytics' trainer sums and back-propagates) and ``items`` ``{"box_loss": ..., ...}`` detached,
    one per term (``bg_loss`` too when a background penalty is on).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        preset: str | None = None,
        weights: Mapping[str, float] | None = None,
        normalizers: Mapping[str, str] | None = None,
        schedules: Mapping[str, Schedule] | None = None,
        doctor: Doctor | None = None,
        **options: Any,
    ) -> None:
        head = _detect_head(model)
        args = getattr(model, "args", None) or {}
        gains = {k: _arg(args, k, v) for k, v in ULTRALYTICS_GAINS.items()}
        gains.update(weights or {})
        class_weights = getattr(model, "class_weights", None)
        if class_weights is not None:
            options.setdefault("class_weights", class_weights)
        self.criterion = DenseCriterion(
            int(head.nc),
            tuple(int(s) for s in head.stride.tolist()),
            int(head.reg_max),
            preset=preset,
            weights=gains,
            normalizers=normalizers,
            **options,
        ).to(next(model.parameters()).device)
        self.policy = WeightPolicy(self.criterion.weights, schedules=schedules) if schedules else None
        self.epoch = 0.0
        self.doctor = doctor
        self.steps = 0  # training calls so far: the doctor's step count
        self.last_report = None

    def __call__(self, preds: Any, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        preds = preds[1] if isinstance(preds, tuple) else preds  # eval mode returns (inference, train outputs)
        targets = {"batch_idx": batch["batch_idx"], "cls": batch["cls"].reshape(-1), "bboxes": batch["bboxes"]}
        gains = None if self.policy is None else self.policy.weights(self.epoch)
        report = self.criterion(level_maps(preds), targets, weights=gains)
        self.last_report = report
        if torch.is_grad_enabled() and preds["scores"].requires_grad:  # a training call, not validation
            if self.doctor is not None and self.doctor.due(self.steps):
                self.doctor.observe(self.steps, report, wrt=[preds["boxes"], preds["scores"]])
            self.steps += 1
        values = torch.stack([term.value for term in report.values()])
        items = {f"{name}_loss": v for name, v in zip(report, values.detach(), strict=True)}
        return values * preds["scores"].shape[0], items


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def write_doctor(doctor: Doctor, out_dir: str | Path) -> list:
    """Write ``doctor.csv`` (one row per measurement: each term's value, gradient norm and share) and
    ``findings.txt`` into ``out_dir``, atomically; return the findings."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = doctor.findings()
    rows = [m.row() for m in doctor.measurements]
    if rows:
        with atomic_write(out / "doctor.csv", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    with atomic_write(out / "findings.txt") as f:
        f.write((shares_table(doctor.measurements) + "\n\n" if rows else "") + findings_table(found) + "\n")
    return found


def attach(
    target: Any,
    *,
    preset: str | None = None,
    weights: Mapping[str, float] | None = None,
    normalizers: Mapping[str, str] | None = None,
    schedules: Mapping[str, Schedule] | None = None,
    doctor_every: int = 0,
    out_dir: str | Path | None = None,
    **options: Any,
) -> Any:
    """Switch ``target`` — a ``DetectionModel``, a ``YOLO`` object or a ``DetectionTrainer`` — to detloss.

    A model gets its ``criterion`` replaced now. A ``YOLO`` object or trainer gets callbacks: at the start
    of training both the trained model and its EMA (which ultralytics validates) get a
    :class:`DetectionLoss`; with ``doctor_every > 0`` the doctor measures each term's gradient share
    w.r.t. the head outputs every that many training steps and, at the end of training, writes
    ``doctor.csv`` and ``findings.txt`` into ``out_dir`` (default: the trainer's run folder).
    Returns the :class:`~detloss.diagnose.doctor.Doctor` (``None`` when ``doctor_every == 0``): its
    ``measurements`` and ``findings()`` are there to read after training too.
    """
    if doctor_every < 0:
        raise ValueError(f"doctor_every must be >= 0 (0 turns the doctor off), got {doctor_every}")
    doctor = Doctor(doctor_every) if doctor_every else None
    kwargs = dict(preset=preset, weights=weights, normalizers=normalizers, schedules=schedules, **options)
    if isinstance(target, torch.nn.Module) and not hasattr(target, "add_callback"):
        target.criterion = DetectionLoss(_unwrap(target), doctor=doctor, **kwargs)
        return doctor

    def on_train_start(trainer: Any) -> None:
        model = _unwrap(trainer.model)
        model.criterion = DetectionLoss(model, doctor=doctor, **kwargs)
        if getattr(trainer, "ema", None) is not None:
            trainer.ema.ema.criterion = DetectionLoss(trainer.ema.ema, **kwargs)

    def on_train_epoch_start(trainer: Any) -> None:  # the gains' schedules follow ultralytics' epoch
        for m in (_unwrap(trainer.model), getattr(getattr(trainer, "ema", None), "ema", None)):
            if isinstance(getattr(m, "criterion", None), DetectionLoss):
                m.criterion.epoch = float(trainer.epoch)

    def on_train_end(trainer: Any) -> None:
        if doctor is not None and int(os.environ.get("RANK", -1)) in (-1, 0):  # one writer under DDP
            found = write_doctor(doctor, out_dir if out_dir is not None else trainer.save_dir)
            print(f"detloss doctor: {len(doctor.measurements)} measurements, {len(found)} findings")

    if not hasattr(target, "add_callback"):
        raise ValueError(f"target must be a DetectionModel, a YOLO object or a trainer; got {type(target).__name__}")
    target.add_callback("on_train_start", on_train_start)
    target.add_callback("on_train_epoch_start", on_train_epoch_start)
    target.add_callback("on_train_end", on_train_end)
    return doctor
