"""The run configuration: a pydantic model loaded from YAML, every loss and optimizer knob a field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from detloss.normalize import Normalizer


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    """Where images come from. ``shapes`` is generated on the fly from ``seed`` (no download)."""

    kind: Literal["shapes", "yolo", "coco"] = "shapes"
    image_size: int = 256
    train_images: int = 2000
    val_images: int = 200
    max_objects: int = 4
    seed: int = 0
    root: str | None = None  # yolo: dataset root; coco: image directory
    train_annotations: str | None = None  # coco only
    val_annotations: str | None = None  # coco only
    hflip: float = 0.5
    num_classes: int | None = None  # inferred from the data when left out


class BackgroundConfig(_Strict):
    """Report 004's background penalty and its ``lambda_bg`` schedule (epochs)."""

    kind: Literal["max", "focal"] = "max"
    max_value: float = 1.0
    burn_in: float = 0.0
    warmup: float = 0.0
    mode: Literal["linear", "step"] = "linear"
    gamma: float = 2.0
    logit_clamp: float | None = None


class LossConfig(_Strict):
    """Every option of :class:`detloss.DenseCriterion`."""

    preset: Literal["ultralytics"] | None = None
    reg_max: int = 8
    weights: dict[str, float] = Field(default_factory=dict)
    normalizers: dict[str, str] = Field(default_factory=dict)
    cls_loss: Literal["bce", "focal", "varifocal", "quality_focal"] = "bce"
    cls_loss_args: dict[str, float] = Field(default_factory=dict)
    class_weights: list[float] | None = None
    box_loss: Literal["iou", "giou", "diou", "ciou"] = "ciou"
    topk: int = 10
    alpha: float = 0.5
    beta: float = 6.0
    num_vertices: int = 8  # 0: no polygon branch
    polygon_loss: Literal["mgiou", "mgiou+", "l1", "l2"] = "mgiou"
    convexity_weight: float = 0.1
    background: BackgroundConfig | None = None

    @field_validator("normalizers")
    @classmethod
    def _known_normalizers(cls, value: dict[str, str]) -> dict[str, str]:
        for spec in value.values():
            Normalizer(spec)  # raises with the list of valid names
        return value


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 2e-3
    polygon_lr: float | None = None  # report 001: a separate learning rate for the polygon head
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    schedule: Literal["cosine", "constant"] = "cosine"
    final_lr_fraction: float = 0.05
    grad_clip: float | None = 10.0
    amp: bool = True  # used where the device supports it (CUDA)
    ema_decay: float | None = 0.999


class ModelConfig(_Strict):
    width: int = 24


class EvalConfig(_Strict):
    every_epochs: int = 2
    conf: float = 0.25  # precision / recall / detections-per-image threshold
    nms_iou: float = 0.6
    max_det: int = 100
    plots: bool = True


class BalanceConfig(_Strict):
    """Automatic term weighting (:mod:`detloss.diagnose.balancers`): each balanced term's weight is its
    ``loss.weights`` value times a multiplier the balancer sets every step (logged as ``<term>/weight``)."""

    kind: Literal["fixed", "uncertainty", "gradnorm", "ema_norm"] = "fixed"
    terms: list[str] | None = None  # the balanced terms; None: all of the criterion's
    targets: dict[str, float] = Field(default_factory=dict)  # gradnorm, ema_norm: gradient-norm ratios (default 1)
    every_steps: int | None = Field(None, ge=1)  # gradnorm, ema_norm: measure every N steps (None: 1 / 10)
    alpha: float = Field(1.5, ge=0)  # gradnorm: restoring force toward equal training rates
    lr: float = Field(0.025, gt=0)  # gradnorm: step on log(multiplier) per update
    ema: float = Field(0.9, ge=0, lt=1)  # ema_norm: EMA decay of the measured norms
    rate: float = Field(0.5, gt=0, le=1)  # ema_norm: fraction of the log-gap to the target closed per update
    max_step: float = Field(2.0, gt=1)  # ema_norm: largest factor a multiplier changes by per update
    weight_bounds: tuple[float, float] = (0.01, 100.0)  # gradnorm, ema_norm: multiplier clamp
    log_var_bounds: tuple[float, float] = (-4.0, 4.0)  # uncertainty: (lo, hi) of each log-variance s
    log_var_lr: float | None = None  # uncertainty: learning rate of the log-variances (None: optim.lr)


class DoctorConfig(_Strict):
    """The loss doctor during training (:mod:`detloss.diagnose.doctor`): gradient accounting on the head
    outputs every ``every_steps`` steps (main rank) into ``doctor.csv``, and the findings' thresholds."""

    every_steps: int | None = Field(None, ge=1)  # None: no accounting while training
    dominance: float = Field(0.9, gt=0, lt=1)  # GRAD_DOMINANCE: share above which one term dominates
    target_ratio: float = Field(1.0, gt=0)  # GRAD_DOMINANCE: the ratio the recommended weights aim at
    dead: float = Field(0.5, ge=0, lt=1)  # DEAD_GRADIENT: dead fraction threshold
    skew_ratio: float = Field(10.0, gt=1)  # NORMALIZER_SKEW: max/min (and train/val) ratio
    plateau_window: int = Field(100, ge=2)  # PLATEAU: steps in the fitted window
    plateau_tolerance: float = Field(0.05, ge=0)  # PLATEAU: relative decrease that counts as learning


class TrainConfig(_Strict):
    """A whole run; ``detloss train --config run.yaml key.sub=value`` builds one."""

    out_dir: str = "runs/shapes"
    epochs: int = 8
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    max_steps: int | None = None  # stop early (tests, smoke runs)
    threads: int | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    doctor: DoctorConfig | None = None


def _set(tree: dict, dotted: str, raw: str) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read YAML (``None``: the built-in defaults) and apply ``key.sub=value`` overrides (YAML values)."""
    tree: dict = {}
    if path is not None:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        _set(tree, key, value)
    return TrainConfig.model_validate(tree)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (defaults filled in) as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(config.model_dump(mode="json"), f, sort_keys=False)
