"""The run configuration: a pydantic model loaded from YAML, every loss and optimizer knob a field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from detloss.core.atomic import atomic_write
from detloss.core.normalize import Normalizer


def _check_normalizers(value: dict[str, str]) -> dict[str, str]:
    for spec in value.values():
        Normalizer(spec)  # raises with the list of valid names
    return value


#: term -> normalizer name, checked against the names :mod:`detloss.core.normalize` knows.
Normalizers = Annotated[dict[str, str], AfterValidator(_check_normalizers)]

NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
LogVariance = Annotated[float, Field(ge=-20, le=20)]
UnitGain = Annotated[float, Field(ge=0, le=1)]


def _polygon_slots(k: int) -> int:
    if k in (1, 2):
        raise ValueError(f"must be 0 (no polygon branch) or >= 3 (a polygon has 3 vertices at least), got {k}")
    return k


def _power_of_two(stride: int) -> int:
    if stride & (stride - 1):
        raise ValueError(f"must be a power of 2 (each stride-2 stage halves the grid), got {stride}")
    return stride


def _ordered(bounds: tuple[float, float]) -> tuple[float, float]:
    if bounds[0] > bounds[1]:
        raise ValueError(f"must be (low, high) with low <= high, got {bounds}")
    return bounds


def _iou_bands(section):
    """Between ``neg_iou`` and ``pos_iou`` lies the ignore band, so it cannot be reversed."""
    if section.neg_iou > section.pos_iou:
        raise ValueError(f"neg_iou ({section.neg_iou}) must be <= pos_iou ({section.pos_iou})")
    return section


class _Strict(BaseModel):
    # allow_inf_nan=False: an lr of 1e400 parses as inf and would train NaN weights
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TileConfig(_Strict):
    """Large images without resizing them down (:mod:`detloss.data.tiling`): training on ``data.image_size``
    px tiles, validation on the grid tiles (or, with ``eval.tiled``, on the full images by tiled inference)."""

    overlap: int = Field(64, ge=0)  # px; at least the largest object, so tiled inference sees each whole
    min_visible: float = Field(0.5, gt=0, le=1)  # a cut object is kept when this fraction of its box is in the tile
    train: Literal["random", "grid"] = "random"  # random: seeded crops, as many per image as its grid has
    # objects below min_visible: dropped (background), or ignore regions (dense loss: neither positive nor background)
    cut: Literal["drop", "ignore"] = "drop"


class DataConfig(_Strict):
    """Where images come from. ``shapes`` is generated on the fly from ``seed`` (no download)."""

    kind: Literal["shapes", "yolo", "coco", "voc", "csv"] = "shapes"
    image_size: int = Field(256, ge=32)  # at least one cell on the coarsest (stride 32) level
    train_images: int = Field(2000, ge=1)
    val_images: int = Field(200, ge=1)
    max_objects: int = Field(4, ge=1)
    seed: int = Field(0, ge=0)
    root: str | None = None  # yolo: dataset root or a data.yaml; coco: image directory; voc: VOC root; csv: image root
    train_annotations: str | None = None  # coco: JSON; voc: loose XML folder or .xml file; csv: the CSV
    val_annotations: str | None = None  # as train_annotations
    yaml: str | None = None  # yolo: an ultralytics data.yaml (class names and count from it)
    train_split: str = "train"  # voc root: ImageSets/Main/<split>.txt; data.yaml: the key
    val_split: str = "val"
    names: list[str] | None = None  # voc / csv: class names in label order (fixes the ids); default: sorted found
    hflip: float = Field(0.5, ge=0, le=1)  # probability
    num_classes: int | None = Field(None, ge=1)  # inferred from the data when left out
    # train on this fraction of the training images (a seeded choice); with `semi`, the rest is unlabelled
    labelled_fraction: float = Field(1.0, gt=0, le=1)
    tile: TileConfig | None = None  # files, not shapes: tiles of data.image_size px instead of letterboxing
    # the fast pipeline (detloss.data.augment, detloss.data.cache); the defaults change nothing
    workers: int = Field(0, ge=0)  # DataLoader worker processes for training batches (0: in the main process)
    cache: Literal["ram", "disk"] | None = None  # decoded-image cache of the images read from files
    cache_dir: str | None = None  # the .npy folder of cache: disk
    vflip: float = Field(0.0, ge=0, le=1)  # probability
    rot90: float = Field(0.0, ge=0, le=1)  # probability of 1, 2 or 3 quarter turns (square images)
    scale_jitter: float = Field(0.0, ge=0, lt=1)  # scale uniform in [1 - a, 1 + a], then a random crop
    crop_min_visible: float = Field(0.25, ge=0, le=1)  # objects with less visible box area are dropped
    hsv: tuple[UnitGain, UnitGain, UnitGain] = (0.0, 0.0, 0.0)  # hue, saturation, value gains

    @model_validator(mode="after")
    def _tile_and_cache(self):
        if self.tile is not None and self.tile.overlap >= self.image_size:
            raise ValueError(f"data.tile.overlap ({self.tile.overlap}) must be < data.image_size ({self.image_size})")
        if self.cache == "disk" and not self.cache_dir:
            raise ValueError("data.cache_dir is required for data.cache='disk'")
        return self


class BackgroundConfig(_Strict):
    """The ``bg`` term's penalty (:class:`detloss.BackgroundPenalty` fields) and its ``lambda_bg`` schedule
    (epochs; the trainer's weight policy applies it)."""

    kind: Literal["max", "focal"] = "max"
    max_value: float = Field(1.0, ge=0)
    burn_in: float | None = Field(0.0, ge=0)  # None only under `semi`: the teacher's burn-in
    warmup: float = Field(0.0, ge=0)
    mode: Literal["linear", "step"] = "linear"
    gamma: float = Field(2.0, ge=0)
    logit_clamp: float | None = Field(None, gt=0)


class LossConfig(_Strict):
    """Every option of :class:`detloss.DenseCriterion`."""

    preset: Literal["ultralytics"] | None = None
    reg_max: int = Field(8, ge=1)
    weights: dict[str, NonNegative] = Field(default_factory=dict)
    normalizers: Normalizers = Field(default_factory=dict)
    cls_loss: Literal["bce", "focal", "varifocal", "quality_focal"] = "bce"
    cls_loss_args: dict[str, NonNegative] = Field(default_factory=dict)  # alpha, gamma, beta: all >= 0
    class_weights: list[NonNegative] | None = None
    box_loss: Literal["iou", "giou", "diou", "ciou"] = "ciou"
    topk: int = Field(10, ge=1)
    alpha: float = Field(0.5, ge=0)
    beta: float = Field(6.0, ge=0)
    num_vertices: Annotated[int, Field(ge=0), AfterValidator(_polygon_slots)] = 8  # 0: no polygon branch
    polygon_loss: Literal["mgiou", "mgiou+", "l1", "l2"] = "mgiou"
    convexity_weight: float = Field(0.1, ge=0)
    # the `corner` term (detloss.functional.polygon_corner): target corners -> nearest predicted vertex,
    # predicted vertices -> target boundary, so the hull of K vertices can be a triangle; its Huber knee
    # as a fraction of the object's box diagonal. On by default: polygon AP50 0.77 -> 0.9+ on the default run
    polygon_corner: bool = True
    corner_beta: float = Field(0.05, gt=0)
    background: BackgroundConfig | None = None
    # an objectness channel and the `obj` term (BCE: 1 on the positives, 0 elsewhere; detections scored
    # class x objectness); under `semi` also `u_obj` on the pseudo-boxes, the alternative to the bg penalty
    objectness: bool = False
    objectness_target: Literal["hard", "score"] = "hard"  # score: the assigner's soft target, as cls


class OptimConfig(_Strict):
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    polygon_lr: float | None = Field(None, gt=0)  # a separate learning rate for the polygon head
    momentum: float = Field(0.9, ge=0, lt=1)  # adamw: beta1
    weight_decay: float = Field(5e-4, ge=0)
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    final_lr_fraction: float = Field(0.05, ge=0, le=1)
    grad_clip: float | None = Field(10.0, gt=0)  # max gradient norm; None: no clipping
    amp: bool = True  # bf16 autocast on CUDA, where the device supports it
    # bf16 autocast on CPU: 0.67x the step time where the CPU has native bf16 (AVX512-BF16 / AMX), slower without
    cpu_amp: bool = False
    ema_decay: float | None = Field(0.999, gt=0, lt=1)  # None: no EMA
    # the decay's ramp, decay * (1 - exp(-step / ema_tau)): the steps over which the average lengthens
    ema_tau: float = Field(200.0, gt=0)


class ModelConfig(_Strict):
    """``kind`` picks the detector and its criterion: ``dense`` (:class:`TinyDetector`, ``loss``),
    ``two_stage`` (:class:`TinyTwoStage`, ``rpn`` + ``roi``) or ``grid`` (:class:`TinyGrid`, ``grid``)."""

    kind: Literal["dense", "two_stage", "grid"] = "dense"
    width: int = Field(24, ge=2)  # the stem's first conv has width // 2 channels
    p2: bool = False  # dense: a stride-4 level (strides 4, 8, 16, 32) for objects of ~10-40 px
    proposals_train: int = Field(256, ge=1)  # two_stage: RPN proposals kept per image in training (before GT)
    proposals_test: int = Field(100, ge=1)  # two_stage: ... in evaluation
    stride: Annotated[int, Field(ge=4), AfterValidator(_power_of_two)] = 16  # grid: pixels per cell


class RPNConfig(_Strict):
    """Every option of :class:`detloss.criteria.rpn.RPNCriterion` (terms ``obj``, ``box``; logged as
    ``rpn_obj``, ``rpn_box``). Defaults: normalizers ``num_samples`` / ``num_pos`` (mmdet and detectron2:
    ``num_samples`` for both)."""

    weights: dict[str, NonNegative] = Field(default_factory=dict)
    normalizers: Normalizers = Field(default_factory=dict)
    pos_weight: float = Field(1.0, gt=0)  # weight of the positive anchors' objectness BCE
    box_loss: Literal["smooth_l1", "l1", "giou"] = "smooth_l1"
    beta: float = Field(1.0 / 9.0, ge=0)
    sample_num: int = Field(256, ge=1)
    pos_fraction: float = Field(0.5, gt=0, le=1)
    pos_iou: float = Field(0.7, ge=0, le=1)
    neg_iou: float = Field(0.3, ge=0, le=1)
    min_pos_iou: float = Field(0.3, ge=0, le=1)
    allow_low_quality: bool = True

    @model_validator(mode="after")
    def _bands(self):
        return _iou_bands(self)


class ROIConfig(_Strict):
    """Every option of :class:`detloss.criteria.roi.ROICriterion` (terms ``cls``, ``box``, ``mask``; logged as
    ``roi_cls`` ...). Defaults: normalizers ``num_samples`` / ``num_pos`` / ``num_pos`` (mmdet and detectron2:
    ``num_samples`` for box)."""

    weights: dict[str, NonNegative] = Field(default_factory=dict)
    normalizers: Normalizers = Field(default_factory=dict)
    fg_weight: float = Field(1.0, gt=0)  # weight of the foreground ROIs' classification elements
    label_smoothing: float = Field(0.0, ge=0, le=1)
    with_mask: bool = True
    mask_size: int = Field(14, ge=2)
    beta: float = Field(1.0, ge=0)
    sample_num: int = Field(512, ge=1)
    pos_fraction: float = Field(0.25, gt=0, le=1)
    pos_iou: float = Field(0.5, ge=0, le=1)
    neg_iou: float = Field(0.5, ge=0, le=1)
    min_pos_iou: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _bands(self):
        return _iou_bands(self)


class GridConfig(_Strict):
    """Every option of :class:`detloss.criteria.multigrid.MultigridCriterion` (terms ``loc``, ``obj``,
    ``cls``; its defaults: ``batch_size`` normalizers, per-image sums, so train and validation losses are
    comparable). The grid's stride is ``model.stride``."""

    weights: dict[str, NonNegative] = Field(default_factory=dict)
    normalizers: Normalizers = Field(default_factory=dict)  # unset terms: the criterion's (batch_size)
    loc_loss: Literal["mse", "l1", "smooth_l1"] = "mse"
    cls_loss: Literal["bce", "ce"] = "ce"
    obj_pos_weight: float = Field(1.0, gt=0)
    ignore_iou: float = Field(0.5, ge=0, le=1)


class EvalConfig(_Strict):
    every_epochs: int = Field(2, ge=1)
    conf: float = Field(0.25, ge=0, le=1)  # precision / recall / detections-per-image threshold
    nms_iou: float = Field(0.6, gt=0, le=1)
    max_det: int = Field(100, ge=1)
    plots: bool = True
    tiled: bool = False  # needs data.tile: AP on the full validation images by tiled inference (max_det per image)
    # eval.tiled: the inference tile side (None: data.image_size); a larger tile than training's gives the
    # detector more context and fewer cut objects (NEON trees: +0.01-0.04 AP50, README)
    tile_size: int | None = Field(None, ge=32)
    # test-time augmentation (detloss.evaluate.tta): 4 flips or the 8 flips/transposes, merged by NMS + box voting
    tta: Literal["flips", "d4"] | None = None


class BalanceConfig(_Strict):
    """Automatic term weighting (:mod:`detloss.weighting.balancers`): each balanced term's weight is its
    ``loss.weights`` value times a multiplier the balancer sets every step (logged as ``<term>/weight``)."""

    kind: Literal["fixed", "uncertainty", "gradnorm", "ema_norm"] = "fixed"
    terms: list[str] | None = None  # the balanced terms; None: all of the criterion's
    targets: dict[str, Positive] = Field(default_factory=dict)  # gradnorm, ema_norm: gradient-norm ratios (default 1)
    every_steps: int | None = Field(None, ge=1)  # gradnorm, ema_norm: measure every N steps (None: 1 / 10)
    alpha: float = Field(1.5, ge=0)  # gradnorm: restoring force toward equal training rates
    lr: float = Field(0.025, gt=0)  # gradnorm: step on log(multiplier) per update
    ema: float = Field(0.9, ge=0, lt=1)  # ema_norm: EMA decay of the measured norms
    rate: float = Field(0.5, gt=0, le=1)  # ema_norm: fraction of the log-gap to the target closed per update
    max_step: float = Field(2.0, gt=1)  # ema_norm: largest factor a multiplier changes by per update
    # gradnorm, ema_norm: multiplier clamp
    weight_bounds: Annotated[tuple[Positive, Positive], AfterValidator(_ordered)] = (0.01, 100.0)
    # uncertainty: (lo, hi) of each log-variance s; |s| <= 20 keeps exp(-s) far from float32 overflow
    log_var_bounds: Annotated[tuple[LogVariance, LogVariance], AfterValidator(_ordered)] = (-4.0, 4.0)
    log_var_lr: float | None = Field(None, gt=0)  # uncertainty: learning rate of the log-variances (None: optim.lr)


class DoctorConfig(_Strict):
    """The loss doctor during training (:mod:`detloss.diagnose.doctor`): gradient accounting on the head
    outputs every ``every_steps`` steps (main rank) into ``doctor.csv``, and the findings' thresholds."""

    every_steps: int | None = Field(None, ge=1)  # None: no accounting while training
    dominance: float = Field(0.9, gt=0, lt=1)  # GRAD_DOMINANCE: share above which one term dominates
    target_ratio: float = Field(1.0, gt=0)  # GRAD_DOMINANCE, GRAD_STARVED: the ratio the recommended weights aim at
    starved_ratio: float = Field(100.0, gt=1)  # GRAD_STARVED: gradient-norm ratio of two terms that starves the weaker
    dead: float = Field(0.5, ge=0, lt=1)  # DEAD_GRADIENT: dead fraction threshold
    skew_ratio: float = Field(10.0, gt=1)  # NORMALIZER_SKEW: max/min (and train/val) ratio
    plateau_window: int = Field(100, ge=2)  # PLATEAU: steps in the fitted window
    plateau_tolerance: float = Field(0.05, ge=0)  # PLATEAU: relative decrease that counts as learning


def _default_filters() -> list[dict]:
    return [
        {"kind": "score", "threshold": 0.3},
        {"kind": "adaptive", "init": 0.5, "bounds": [0.3, 0.8], "momentum": 0.99},
        {"kind": "entropy", "max_entropy": 0.6},
    ]


class StrongAugConfig(_Strict):
    """The student's photometric strong augmentation of unlabelled images (geometry unchanged, so the
    teacher's pseudo-boxes apply as they are): brightness/contrast jitter, Gaussian noise, cut-out patches."""

    brightness: float = Field(0.3, ge=0)  # multiplicative factor in [1 - b, 1 + b]
    contrast: float = Field(0.3, ge=0)
    noise: float = Field(0.04, ge=0)  # std of additive Gaussian noise, image in [0, 1]
    cutout: int = Field(2, ge=0)  # patches per image
    cutout_size: float = Field(0.15, ge=0, le=1)  # patch side, fraction of the image side


class GeometricViewConfig(_Strict):
    """The student's geometric strong view of unlabelled images (:mod:`detloss.semi.views`), before the
    photometric one; the pseudo-boxes, polygons and the teacher's dense scores are moved exactly."""

    hflip: float = Field(0.0, ge=0, le=1)  # probabilities
    vflip: float = Field(0.0, ge=0, le=1)
    rot90: float = Field(0.0, ge=0, le=1)  # a quarter turn k in 1..3 (square images)
    scale_jitter: float = Field(0.0, ge=0, lt=1)  # scale in [1 - a, 1 + a] and a random window; not with `soft`
    min_visible: float = Field(0.25, ge=0, le=1)  # a cropped pseudo-box keeps at least this part, or is dropped


class SoftTargetConfig(_Strict):
    """Dense soft class targets on unlabelled images (:mod:`detloss.semi.soft`), the ``u_soft`` term: the
    student's class logits regress the teacher's sigmoid scores on its ``topk`` anchors per image, and 0
    on the others, with a quality focal loss."""

    weight: float = Field(1.0, ge=0)  # gain; ramped like the other unlabelled terms (semi.unsup_weight)
    topk: int = Field(10, ge=1)  # anchors per image the teacher ranks highest (best class score)
    beta: float = Field(2.0, ge=0)
    normalizer: str = "target_sum"  # target_sum: the teacher's score mass on the selected anchors


class SemiConfig(_Strict):
    """Teacher-student training (:mod:`detloss.train.semi`) on ``data.labelled_fraction`` of the training
    images with the rest unlabelled. Epochs count passes over the labelled images."""

    burn_in: float = Field(2.0, ge=0)  # epochs of supervised-only training before the teacher is copied
    burn_in_steps: int | None = Field(None, ge=0)  # the burn-in in optimizer steps instead (overrides burn_in)
    teacher_decay: float = Field(0.999, ge=0, lt=1)
    teacher_ramp: bool = True  # decay min(teacher_decay, 1 - 1 / (updates + 1)), Mean Teacher's ramp
    unsup_weight: float = Field(1.0, ge=0)
    unsup_warmup: float = Field(1.0, ge=0)  # epochs after burn_in over which the weight ramps from 0
    unlabelled_batch_size: int | None = Field(None, ge=1)  # None: batch_size
    candidate_conf: float = Field(0.05, ge=0, lt=1)  # teacher detections entering NMS and the filters
    # anchors the teacher scores >= this but no pseudo-box claims are neither positive nor negative in
    # u_cls and u_bg (None: every unclaimed anchor is background, which collapses a weak teacher)
    ignore_score: float | None = Field(0.05, gt=0, lt=1)
    nms_iou: float = Field(0.6, gt=0, le=1)
    max_pseudo: int = Field(50, ge=1)  # pseudo-boxes per image at most
    filters: list[dict] = Field(default_factory=_default_filters)  # applied in order, after NMS
    # the unlabelled terms trained (the others get gain 0); obj needs loss.objectness; poly and corner (the
    # teacher's polygons, their convex hulls, as targets) need a polygon branch, corner loss.polygon_corner
    unsup_terms: list[Literal["box", "cls", "dfl", "obj", "poly", "corner"]] = Field(
        default_factory=lambda: ["box", "cls", "dfl"]
    )
    # the unlabelled terms' normalizers (unset: loss.normalizers'). With target_sum, a batch whose images
    # all lack pseudo-boxes divides u_cls by the floor, 1: `detloss doctor` shows it as u_cls dominance.
    normalizers: Normalizers = Field(default_factory=dict)
    # the bg term on unlabelled images; its burn_in is counted from the start of training (None: = burn_in)
    background: BackgroundConfig | None = Field(
        default_factory=lambda: BackgroundConfig(kind="max", max_value=1.0, burn_in=None, warmup=2.0)
    )
    strong: StrongAugConfig = Field(default_factory=StrongAugConfig)
    quality_iou: float = Field(0.5, gt=0, le=1)  # pseudo-label precision/recall against the hidden labels
    geometric: GeometricViewConfig = Field(default_factory=GeometricViewConfig)  # off by default
    soft: SoftTargetConfig | None = None  # dense soft class targets (u_soft); None: off
    # the teacher's class (and objectness) scores averaged over the 8 flips / quarter turns of the weak view
    # (detloss.semi.tta): 8 teacher forwards per step; square images whose side is a multiple of the strides
    teacher_tta: bool = False
    # scales > 1 at which the teacher also sees the weak view, upscaled (detloss.semi.tta.upscale):
    # small objects it misclassifies at 1x it gets right larger; their detections, scaled back, join the
    # 1x ones before the filters (class-aware NMS with box voting). E.g. [1.5]; [] (default): 1x only
    teacher_zoom: list[Annotated[float, Field(gt=1)]] = Field(default_factory=list)
    # diagnostic: the unlabelled images' hidden labels (every box, its class, score 1) replace the teacher's
    # pseudo-labels (the ignore band and u_soft stay the teacher's): what the loop gains at precision and
    # recall 1, the ceiling of any teacher (benchmarks/semi.py, oracle runs). Boxes only: no poly / corner
    oracle: bool = False

    @model_validator(mode="after")
    def _check_combinations(self):
        if self.soft is not None and self.geometric.scale_jitter > 0:
            raise ValueError("semi.soft needs semi.geometric.scale_jitter=0 (a crop does not map the anchor grid)")
        if self.oracle and {"poly", "corner"} & set(self.unsup_terms):
            raise ValueError("semi.oracle gives boxes only: take poly and corner out of semi.unsup_terms")
        return self


class TrainConfig(_Strict):
    """A whole run; ``detloss train --config run.yaml key.sub=value`` builds one."""

    out_dir: str = "runs/shapes"
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)  # the global batch, split over the ranks under torchrun
    seed: int = Field(0, ge=0)
    device: str = "auto"
    log_every: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop early (tests, smoke runs)
    threads: int | None = Field(None, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    rpn: RPNConfig = Field(default_factory=RPNConfig)
    roi: ROIConfig = Field(default_factory=ROIConfig)
    grid: GridConfig = Field(default_factory=GridConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    doctor: DoctorConfig | None = None
    semi: SemiConfig | None = None

    @model_validator(mode="after")
    def _tiled_needs_tiles(self):
        if self.eval.tiled and (self.data.tile is None or self.data.kind == "shapes"):
            raise ValueError("eval.tiled needs data.tile and a data.kind that reads files (the tiles' size and overlap)")
        if self.eval.tile_size is not None:
            if not self.eval.tiled:
                raise ValueError("eval.tile_size needs eval.tiled: true (it is the tiled inference's tile side)")
            if self.eval.tile_size % 32 or self.eval.tile_size <= self.data.tile.overlap:
                raise ValueError(
                    f"eval.tile_size must be a multiple of 32 (the coarsest stride) and > data.tile.overlap "
                    f"({self.data.tile.overlap}), got {self.eval.tile_size}"
                )
        return self

    @model_validator(mode="after")
    def _terms_need_their_branches(self):
        if self.loss.objectness and self.model.kind != "dense":
            raise ValueError(f"loss.objectness needs model.kind='dense', got {self.model.kind!r}")
        if self.semi is not None and "obj" in self.semi.unsup_terms and not self.loss.objectness:
            raise ValueError("semi.unsup_terms has 'obj', which needs loss.objectness: true")
        terms = self.semi.unsup_terms if self.semi is not None else []
        if {"poly", "corner"} & set(terms) and self.loss.num_vertices == 0:
            raise ValueError("semi.unsup_terms has 'poly' or 'corner', which needs loss.num_vertices >= 3")
        if "corner" in terms and not self.loss.polygon_corner:
            raise ValueError("semi.unsup_terms has 'corner', which needs loss.polygon_corner: true")
        return self


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
    """Write the resolved config (defaults filled in) as YAML, atomically."""
    with atomic_write(path) as f:
        yaml.safe_dump(config.model_dump(mode="json"), f, sort_keys=False)
