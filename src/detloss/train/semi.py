"""Teacher-student (semi-supervised) training of the dense detector (a mean-teacher loop), every knob named.

Until ``semi.burn_in`` epochs (or ``semi.burn_in_steps`` steps) the student trains on the labelled images
alone. Then the teacher is copied from the student (:class:`~detloss.semi.teacher.EMATeacher`) and each
step adds an unlabelled batch:

1. the teacher sees the weak view (the flip the labelled images get) and its detections go through NMS and
   then ``semi.filters`` in order (:mod:`detloss.semi.filters`): the pseudo-labels. With
   ``semi.teacher_tta`` its class (and objectness) scores are averaged over the eight flips and quarter
   turns of the weak view (:mod:`detloss.semi.tta`), for the filters, the ignore band and ``u_soft`` alike.
   With ``semi.teacher_zoom`` its detections on the weak view upscaled join the 1x ones before the filters
   (small objects it misclassifies at 1x). ``semi.oracle`` (a diagnostic) replaces the pseudo-labels by the
   images' hidden labels: the loop's ceiling;
2. the student sees the strong view: the geometric one of ``semi.geometric``
   (:mod:`detloss.semi.views`: flips, quarter turns, a scale-crop; off by default), which moves the
   pseudo-boxes, their polygons, the ignore band and the teacher's dense scores with the image, then
   :func:`~detloss.semi.augment.strong_photometric`. It
   is trained towards the pseudo-labels by a second :class:`DenseCriterion` whose terms are reported as
   ``u_box``, ``u_cls``, ``u_dfl`` (weight ``loss.weights`` x the ramped ``semi.unsup_weight``) and the
   background penalty ``u_bg`` (its own ``lambda_bg`` schedule: zero during burn-in, then warm-up); both
   rules live in one :class:`~detloss.weighting.policy.WeightPolicy` whose gains go to each call.
   Anchors that no pseudo-box claims but the teacher scores at least ``semi.ignore_score`` are left out
   of ``u_cls`` and ``u_bg`` (neither positive nor negative): a young teacher keeps few of its boxes,
   and training the objects it dropped as background teaches the student, then the teacher through the
   EMA, to miss them, until no pseudo-box is left (a collapse of the pseudo-labels; measured in the README).
   An unlabelled image without pseudo-boxes is otherwise all background: its anchors get the ``cls``
   zero target and the ``bg`` penalty, and every normalizer is floored, so the terms stay finite.
   With ``semi.soft`` the student's class logits also regress the teacher's sigmoid scores on the
   teacher's ``topk`` anchors per image (0 on the others, ignored anchors left out), ``u_soft``
   (:mod:`detloss.semi.soft`, its own named normalizer), ramped like the other unlabelled terms.
   With ``loss.objectness`` (and ``obj`` in ``semi.unsup_terms``), ``u_obj`` trains the student's
   objectness towards 1 on the anchors assigned to the pseudo-boxes, whatever their class (the teacher's
   boxes are well placed where its classes are not), and 0 on every other anchor outside the ignore band:
   report 004's alternative to the background penalty. The teacher's scores (the filters' and the
   ignore band's) are then class x objectness, as in evaluation. With ``poly`` or ``corner`` in
   ``semi.unsup_terms``, ``u_poly`` / ``u_corner`` train the student's polygon head towards the convex
   hulls of the teacher's predicted vertices (:mod:`detloss.semi.polygons`), whatever their class;
3. after the optimizer step the teacher is updated as an EMA of the student.

Logged per step: the filter statistics (``pseudo/kept_per_image``, per class, scores, adaptive thresholds),
the unlabelled images left without any pseudo-box (``pseudo/empty_images``), the fraction of their
anchors ignored (``pseudo/ignored_anchors``),
the pseudo-labels' precision/recall against the hidden labels of the unlabelled images
(``pseudo/precision``, ``pseudo/recall``; class-agnostic: ``pseudo/box_precision``, ``pseudo/box_recall``)
``semi/unsup_weight`` and ``semi/teacher_decay`` (the EMA decay of the next teacher update, its ramp
included); per epoch the pseudo-labels' precision/recall over the epoch, the teacher's decay and, at
evaluation, the student's metrics as ``val/student/*`` beside the teacher's ``val/*``.

Under ``torchrun`` each rank takes its slice of every global unlabelled batch, as for the labelled one;
the strong view of an image depends only on its position in the global batch, the adaptive thresholds
see every rank's candidates and the normalizers are reduced across ranks, so a step equals one process
on the whole batch. Per-step pseudo-label statistics are rank 0's slice; per-epoch ones, all ranks'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detloss.core.distributed import check_divisible, global_sums
from detloss.core.report import LossReport
from detloss.criteria.dense import DenseCriterion
from detloss.data.collate import collate
from detloss.evaluate.tta import merge_views
from detloss.ops.head_layout import HeadLayout
from detloss.semi.augment import strong_photometric
from detloss.semi.filters import build_filters, teacher_pseudo_labels
from detloss.semi.polygons import hull_pseudo_polygons
from detloss.semi.quality import pseudo_label_quality
from detloss.semi.soft import DenseSoftClassTerm
from detloss.semi.teacher import EMATeacher
from detloss.semi.tta import downscale_detections, ensemble_class_scores, upscale
from detloss.semi.views import GeometricView, draw_view
from detloss.train.checkpoint import load_part, read_resume
from detloss.train.config import TrainConfig
from detloss.train.data import load_sample
from detloss.train.evaluation import evaluate
from detloss.train.tasks.base import StepOutputs
from detloss.train.tasks.dense import background_schedule
from detloss.train.trainer import Trainer
from detloss.weighting.policy import WeightPolicy

__all__ = ["SemiTrainer", "detections_to_targets"]

UNSUP_PREFIX = "u_"


def detections_to_targets(dets: list[dict[str, Tensor]], image_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Per-image ``boxes (N, 4)`` xyxy px and ``labels (N,)`` as the flat collated targets of
    :func:`detloss.data.collate.collate` (``batch_idx``, ``cls``, normalized ``cx, cy, w, h`` ``bboxes``);
    with ``polygons (N, K, 2)`` px and ``polygon_counts (N,)`` in every dict, also normalized ``polygons``
    and ``polygon_counts``."""
    h, w = image_hw
    device = dets[0]["boxes"].device if dets else torch.device("cpu")
    boxes = torch.cat([d["boxes"].float().reshape(-1, 4) for d in dets]) if dets else torch.zeros(0, 4)
    counts = torch.tensor([d["boxes"].shape[0] for d in dets], device=device, dtype=torch.long)
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
    cxcywh = torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1) / scale
    out = {
        "batch_idx": torch.repeat_interleave(torch.arange(len(dets), device=device), counts),
        "cls": torch.cat([d["labels"].long().reshape(-1) for d in dets]) if dets else torch.zeros(0, dtype=torch.long),
        "bboxes": cxcywh,
    }
    if dets and all("polygons" in d and "polygon_counts" in d for d in dets):
        out["polygons"] = torch.cat([d["polygons"].float() for d in dets]) / scale[:2]
        out["polygon_counts"] = torch.cat([d["polygon_counts"].long().reshape(-1) for d in dets])
    return out


class SemiTrainer(Trainer):
    """:class:`Trainer` with the teacher-student loop of :mod:`detloss.train.semi` (``config.semi``)."""

    def __init__(self, config: TrainConfig, resume=None, allow_changes: tuple[str, ...] = ()) -> None:
        if config.semi is None:
            raise ValueError("SemiTrainer needs a `semi` section in the config")
        if config.model.kind != "dense":
            raise ValueError(f"semi-supervised training needs model.kind='dense', got {config.model.kind!r}")
        if config.data.labelled_fraction >= 1:
            raise ValueError("semi-supervised training needs data.labelled_fraction < 1 (the rest is unlabelled)")
        self.semi = config.semi
        state, changes = read_resume(resume, config, allow_changes)  # before the parent writes anything
        super().__init__(config)
        if not self.unlabelled_set:
            raise ValueError("data.labelled_fraction leaves no unlabelled images")
        loss = config.loss.model_copy(update={"normalizers": config.loss.normalizers | self.semi.normalizers})
        if self.semi.burn_in_steps is not None:
            self.burn_in_steps = self.semi.burn_in_steps
        else:
            self.burn_in_steps = round(self.semi.burn_in * self.steps_per_epoch)
        self.burn_in_epochs = self.burn_in_steps / self.steps_per_epoch
        self.polygons = bool({"poly", "corner"} & set(self.semi.unsup_terms))
        overrides: dict = {} if self.polygons else {"num_vertices": 0}
        if self.semi.background is not None:  # else loss.background's penalty and schedule
            overrides["background"] = self.semi.background.model_dump()
            schedule = background_schedule(self.semi.background, default_burn_in=self.burn_in_epochs)
        else:
            schedule = background_schedule(loss.background)
        self.unsup = DenseCriterion.from_config(loss, self.num_classes, self.task.model.strides, **overrides)
        self.unsup = self.unsup.to(self.dist.device)
        # u_box, u_cls, u_dfl, u_obj: loss.weights x the ramp when in semi.unsup_terms, else 0; u_bg: its schedule
        ramp = UnsupRamp(self.semi.unsup_weight, self.burn_in_epochs, self.semi.unsup_warmup)
        ramped = [t for t in self.unsup.terms if t != "bg" and t in self.semi.unsup_terms]
        base = {t: (w if t == "bg" or t in ramped else 0.0) for t, w in self.unsup.weights.items()}
        self.unsup_policy = WeightPolicy(
            base, schedules={"bg": schedule} if schedule is not None else None, ramps=dict.fromkeys(ramped, ramp)
        )
        self.filters = build_filters(self.semi.filters, self.num_classes).to(self.dist.device)
        self.soft = None
        if self.semi.soft is not None:
            soft = self.semi.soft
            self.soft = DenseSoftClassTerm(soft.topk, soft.beta, soft.normalizer).to(self.dist.device)
        self.teacher: EMATeacher | None = None
        self.unlabelled_batch = self.semi.unlabelled_batch_size or config.batch_size
        check_divisible("semi.unlabelled_batch_size", self.unlabelled_batch, self.dist.world_size)
        self._step_stats: dict[str, float] = {}
        self._epoch_counts = {p + k: 0.0 for p in ("pseudo/", "pseudo/box_") for k in ("tp", "fp", "fn")}
        if state is not None:
            self.restore(state, resume, changes)

    # -- schedule -----------------------------------------------------------------------------

    def unsup_weight(self, epoch: float) -> float:
        """``semi.unsup_weight`` ramped linearly over ``unsup_warmup`` epochs after burn-in (0 before)."""
        return UnsupRamp(self.semi.unsup_weight, self.burn_in_epochs, self.semi.unsup_warmup).value(epoch)

    # -- the unlabelled stream --------------------------------------------------------------------

    def unlabelled_ids(self, step: int) -> list[int]:
        """Indices into the unlabelled set for ``step``: consecutive slices of seeded permutations."""
        n, b = len(self.unlabelled_set), self.unlabelled_batch
        start = (step - self.burn_in_steps) * b
        ids, orders = [], {}
        for pos in range(start, start + b):
            cycle, i = divmod(pos, n)
            if cycle not in orders:  # one permutation per pass over the unlabelled images
                g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + 7 * cycle + 1)
                orders[cycle] = torch.randperm(n, generator=g)
            ids.append(int(orders[cycle][i]))
        return ids

    def unlabelled_batch_at(self, step: int) -> tuple[Tensor, list[dict[str, Tensor]], list[int]]:
        """Weak views ``(B_u / ranks, 3, H, W)`` of this rank's slice of ``step``'s unlabelled images, their
        hidden labels and their positions in the global batch."""
        per_rank = self.unlabelled_batch // self.dist.world_size
        positions = list(range(self.dist.rank * per_rank, (self.dist.rank + 1) * per_rank))
        batch = self.unlabelled_ids(step)
        ids = [batch[p] for p in positions]
        epoch = step // self.steps_per_epoch
        samples = [load_sample(self.unlabelled_set, i, epoch, self.cfg.seed + 1, self.cfg.data.hflip) for i in ids]
        images, _ = collate(samples)
        hidden = [{"boxes": s["boxes"], "labels": s["labels"]} for s in samples]
        return images.to(self.dist.device), hidden, positions

    # -- one step -----------------------------------------------------------------------------

    def step_loss(self, images: Tensor, targets: dict[str, Tensor]) -> StepOutputs:
        if self.step < self.burn_in_steps:
            self._step_stats = {"semi/unsup_weight": 0.0}
            return super().step_loss(images, targets)
        if self.teacher is None:
            self.teacher = EMATeacher(self.model, self.semi.teacher_decay, self.semi.teacher_ramp)
        sup = super().step_loss(images, targets)
        weak, hidden, positions = self.unlabelled_batch_at(self.step)
        pseudo, ignore, scores = self.pseudo_labels(weak)
        if self.semi.oracle:  # the diagnostic ceiling: the hidden labels themselves
            pseudo = [{k: h[k].to(weak.device) for k in ("boxes", "labels")} for h in hidden]
            pseudo = [p | {"scores": torch.ones(len(p["labels"]), device=weak.device)} for p in pseudo]
        quality = self.pseudo_quality(pseudo, hidden)
        views = self.geometric_views(positions, tuple(weak.shape[-2:]))
        pseudo = [view.apply({"image": image, **p}) for view, image, p in zip(views, weak, pseudo, strict=True)]
        hw = tuple(weak.shape[-2:])
        ignore = None if ignore is None else self.move_anchors(ignore[..., None], views, hw, False)[..., 0]
        scores = None if scores is None else self.move_anchors(scores, views, hw, 0.0)
        strong = self.strong_views(torch.stack([p.pop("image") for p in pseudo]), positions)
        unsup = self.unsup_loss(strong, detections_to_targets(pseudo, tuple(strong.shape[-2:])), ignore, scores)
        epoch = self.step / self.steps_per_epoch
        self._step_stats = {
            "semi/teacher_decay": self._teacher_decay,
            **self.filters.stats(),
            "pseudo/empty_images": float(sum(p["boxes"].shape[0] == 0 for p in pseudo)),
            "pseudo/ignored_anchors": float(ignore.float().mean()) if ignore is not None else 0.0,
            **quality,
            "semi/unsup_weight": self.unsup_weight(epoch),
        }
        terms = dict(sup.report.items()) | {UNSUP_PREFIX + k: v for k, v in unsup.report.items()}
        report = LossReport(terms, scale=sup.report.scale)
        return StepOutputs(report, sup.wrt + unsup.wrt, None)

    def geometric_views(self, positions: list[int], image_hw: tuple[int, int]) -> list[GeometricView]:
        """Each image's geometric view (``semi.geometric``), drawn from (seed, step, its global position)."""
        views = []
        for position in positions:
            seed = ((self.cfg.seed * 1_000_003 + self.step) * 1_000_003 + position) * 2 + 1  # not the photometric one
            views.append(draw_view(torch.Generator().manual_seed(seed), image_hw, **self.semi.geometric.model_dump()))
        return views

    def move_anchors(
        self, values: Tensor, views: list[GeometricView], image_hw: tuple[int, int], fill: float | bool
    ) -> Tensor:
        """Per-anchor ``values (B, A, ...)`` of the weak views (``image_hw`` pixels) in the anchor order of
        ``views``, level by level (:meth:`GeometricView.apply_grid`)."""
        strides = self.task.model.strides
        h, w = image_hw
        if any(h % int(s) or w % int(s) for s in strides):
            raise ValueError(f"geometric views need an image size divisible by the strides {strides}, got {image_hw}")
        sizes = [(h // int(s), w // int(s)) for s in strides]
        out = []
        for level, part in enumerate(values.split([a * b for a, b in sizes], 1)):
            grid = part.unflatten(1, sizes[level]).movedim((1, 2), (-2, -1))  # (B, ..., H_l, W_l)
            moved = torch.stack([v.apply_grid(g, strides[level], fill) for v, g in zip(views, grid, strict=True)])
            out.append(moved.movedim((-2, -1), (1, 2)).flatten(1, 2))
        return torch.cat(out, 1)

    @property
    def _teacher_decay(self) -> float:
        return self.teacher.current_decay() if self.teacher is not None else float("nan")

    def strong_views(self, weak: Tensor, positions: list[int]) -> Tensor:
        """The photometric views of ``weak`` (after the geometric ones): each image's draws seeded by (seed,
        step, its global position)."""
        options = self.semi.strong.model_dump()
        views = []
        for image, position in zip(weak, positions, strict=True):
            gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.step) * 1_000_003 + position)
            views.append(strong_photometric(image[None], gen, **options))
        return torch.cat(views)

    @torch.no_grad()
    def pseudo_labels(self, weak: Tensor) -> tuple[list[dict[str, Tensor]], Tensor | None, Tensor | None]:
        """The teacher's detections on ``weak`` after NMS and the filters (``boxes``, ``scores``, ``labels``;
        with ``semi.teacher_tta`` the class and objectness scores averaged over the D4 views of ``weak``; with
        ``semi.teacher_zoom`` joined by the detections on ``weak`` upscaled, scaled back),
        the ``(B, A)`` anchors it is unsure of (score >= ``semi.ignore_score``, the best class's times the
        objectness with ``loss.objectness``; ``None`` when that is unset) and its ``(B, A, C)`` sigmoid class
        scores (``None`` without ``semi.soft``)."""
        teacher = self.teacher.module
        loss = self.cfg.loss
        ignore = None
        layout = HeadLayout(loss.reg_max, self.num_classes, loss.num_vertices, loss.objectness)
        feats = self.teacher_outputs(weak, layout)
        class_logits = layout.flatten(feats, "cls")  # (B, A, C)
        if self.semi.ignore_score is not None:
            score = class_logits.amax(-1).sigmoid()  # sigmoid is monotonic: of the best logit only
            if loss.objectness:
                score = score * layout.flatten(feats, "obj")[..., 0].sigmoid()
            ignore = score >= self.semi.ignore_score
        per_view = [self.candidates(feats)]
        for scale in self.semi.teacher_zoom:
            big, sx, sy = upscale(weak, scale, int(max(teacher.strides)))
            zoomed = self.candidates(self.teacher_outputs(big, layout))
            per_view.append([downscale_detections(d, sx, sy) for d in zoomed])
        candidates = per_view[0]
        if len(per_view) > 1:  # the flat anchor index is one view's grid's: meaningless once merged
            per_image = zip(*per_view, strict=True)
            views = [[{k: v for k, v in d.items() if k != "index"} for d in dets] for dets in per_image]
            candidates = [merge_views(dets, self.semi.nms_iou, self.semi.max_pseudo) for dets in views]
        kept = self.filters(candidates)
        if self.polygons:
            kept = hull_pseudo_polygons(kept)
        return kept, ignore, class_logits.sigmoid() if self.soft is not None else None

    def teacher_outputs(self, images: Tensor, layout: HeadLayout) -> list[Tensor]:
        """The teacher's float per-level outputs on ``images`` (with ``semi.teacher_tta``: class and objectness
        scores averaged over D4)."""
        teacher = self.teacher.module
        if self.semi.teacher_tta:
            return ensemble_class_scores(teacher, images, layout)
        return [f.float() for f in teacher(images)]

    def candidates(self, feats: list[Tensor]) -> list[dict[str, Tensor]]:
        """The teacher's detections from its outputs ``feats``, after NMS, before the filters."""
        loss = self.cfg.loss
        return teacher_pseudo_labels(
            feats,
            self.teacher.module.strides,
            self.num_classes,
            loss.reg_max,
            num_vertices=loss.num_vertices,
            conf=self.semi.candidate_conf,
            iou=self.semi.nms_iou,
            max_det=self.semi.max_pseudo,
            objectness=loss.objectness,
        )

    def pseudo_quality(self, pseudo: list[dict[str, Tensor]], hidden: list[dict[str, Tensor]]) -> dict[str, float]:
        """The pseudo-labels' precision/recall against the hidden labels, class-aware and class-agnostic
        (``pseudo/box_*``: right place, any class), added to the epoch's counts."""
        pseudo = [{k: v.cpu() for k, v in p.items()} for p in pseudo]
        row = {}
        for prefix, class_aware in (("pseudo/", True), ("pseudo/box_", False)):
            q = pseudo_label_quality(pseudo, hidden, iou=self.semi.quality_iou, class_aware=class_aware)
            for key in ("tp", "fp", "fn"):
                self._epoch_counts[prefix + key] += float(q[key])
            row |= {prefix + "precision": float(q["precision"]), prefix + "recall": float(q["recall"])}
        return row

    def unsup_loss(
        self,
        strong: Tensor,
        pseudo_targets: dict[str, Tensor],
        ignore: Tensor | None = None,
        teacher_scores: Tensor | None = None,
    ) -> StepOutputs:
        """The unlabelled terms of the student on ``strong`` against the pseudo-labels (the polygon terms
        only with ``poly`` or ``corner`` in ``semi.unsup_terms``);
        ``ignore`` ``(B, A)``: anchors left out of ``u_cls``, ``u_bg``, ``u_obj`` and ``u_soft``; ``teacher_scores``
        ``(B, A, C)`` in the strong view's anchor order: the targets of ``u_soft`` (with ``semi.soft``)."""
        epoch = self.step / self.steps_per_epoch
        weights = self.unsup_policy.weights(epoch)
        with self.autocast():
            feats = self.runner(strong)
        channels = self.unsup.num_channels
        feats = [f.float()[:, :channels] for f in feats]  # 4R | C | O, and 2K with the polygon terms
        report = self.unsup(feats, pseudo_targets, ignore=ignore, weights=weights)
        if self.soft is not None:
            gain = self.semi.soft.weight * UnsupRamp(1.0, self.burn_in_epochs, self.semi.unsup_warmup).value(epoch)
            logits = self.unsup.layout.flatten(feats, "cls")
            record = self.soft(logits, teacher_scores, ignore, weight=gain)
            report = LossReport(dict(report.items()) | {"soft": record}, scale=report.scale)
        return StepOutputs(report, feats, None)

    def measure(self, out: StepOutputs, targets: dict[str, Tensor]) -> None:
        if out.outputs is None:  # a combined step: no single head output for the dense dependency masks
            self.doctor.measure_outputs(self.step + 1, out.report, out.wrt)
        else:
            super().measure(out, targets)

    def after_step(self) -> None:
        if self.teacher is not None:
            self.teacher.update(self.model)

    # -- logs and evaluation -------------------------------------------------------------------

    def step_log(self) -> dict[str, float]:
        return {**super().step_log(), **self._step_stats}

    def epoch_log(self) -> dict[str, float]:
        counts = global_sums(self._epoch_counts, device=self.dist.device)  # every rank's images
        c = {k: float(v) for k, v in counts.items()}
        row = {}
        for prefix in ("pseudo/", "pseudo/box_"):
            tp, fp, fn = (c[prefix + k] for k in ("tp", "fp", "fn"))
            if tp + fp + fn > 0:
                row[prefix + "precision"] = tp / (tp + fp) if tp + fp else float("nan")
                row[prefix + "recall"] = tp / (tp + fn) if tp + fn else float("nan")
        if row:
            row["pseudo/kept"] = c["pseudo/tp"] + c["pseudo/fp"]
        if self.teacher is not None:  # the decay the next EMA update uses (the ramp's value at the end)
            row["semi/teacher_decay"] = self._teacher_decay
        self._epoch_counts = dict.fromkeys(c, 0.0)
        return row

    def evaluate(self) -> dict[str, float]:
        """The teacher's metrics (before burn-in ends: the EMA's or the student's) and the student's as
        ``student/*``."""
        device = self.dist.device
        metrics: dict[str, float] = {}
        if self.dist.is_main:
            if self.teacher is not None:
                evaluated = self.teacher.module
            else:
                evaluated = self.ema.module if self.ema is not None else self.model
            metrics = evaluate(self.task, evaluated, self.val_set, self.cfg, self.num_classes, device)
            student = evaluate(self.task, self.model, self.val_set, self.cfg, self.num_classes, device)
            metrics.update({f"student/{k}": v for k, v in student.items() if "/" not in k})
        self.dist.barrier()
        return metrics

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["teacher"] = self.teacher.state_dict() if self.teacher is not None else None
        state["filters"] = self.filters.state_dict()
        state["unsup"] = self.unsup.state_dict()
        return state

    def load_state(self, state: dict, path) -> None:
        super().load_state(state, path)
        if state.get("teacher") is not None:
            self.teacher = EMATeacher(self.model, self.semi.teacher_decay, self.semi.teacher_ramp)
            load_part(path, state, "teacher", self.teacher)
        load_part(path, state, "filters", self.filters)
        load_part(path, state, "unsup", self.unsup)


@dataclass(frozen=True)
class UnsupRamp:
    """The unlabelled terms' gain factor: ``weight`` ramped linearly over ``warmup`` epochs after ``burn_in``
    (0 before); a schedule of :class:`~detloss.weighting.policy.WeightPolicy`'s ``ramps``."""

    weight: float
    burn_in: float
    warmup: float

    def value(self, epoch: float) -> float:
        since = epoch - self.burn_in
        if since < 0:
            return 0.0
        if self.warmup == 0:
            return self.weight
        return self.weight * min(1.0, since / self.warmup)
