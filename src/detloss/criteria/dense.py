"""YOLO-style dense one-stage criterion: task-aligned assignment, box/cls/DFL terms, optional
background penalty, objectness and polygon branch, every normalizer and weight a named option."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from detloss.assign.anchors import bbox2dist, dist2bbox, make_anchors
from detloss.assign.task_aligned import TaskAlignedAssigner, ultralytics_min_candidate_size
from detloss.ops.head_layout import HeadLayout, HeadOutputs, check_level_sizes
from detloss.criteria.targets import Targets
from detloss.criteria.terms import TermCriterion, config_options
from detloss.functional import classification as cls_losses
from detloss.functional.background import focal_background, max_score_penalty
from detloss.functional.dfl import distribution_focal
from detloss.functional.iou import iou_loss
from detloss.functional.polygon import mgiou_loss
from detloss.functional.polygon_corner import corner_loss
from detloss.functional.regression import l1, mse
from detloss.functional.sparse_bce import bce_with_sparse_targets
from detloss.core.normalize import denominators
from detloss.core.report import LossReport

CLS_LOSSES = {
    "bce": cls_losses.bce_with_logits,
    "focal": cls_losses.sigmoid_focal,
    "varifocal": cls_losses.varifocal,
    "quality_focal": cls_losses.quality_focal,
}
BOX_LOSSES = ("iou", "giou", "diou", "ciou")
POLYGON_LOSSES = ("mgiou", "mgiou+", "l1", "l2")
BACKGROUND_PENALTIES = ("max", "focal")
OBJECTNESS_TARGETS = ("hard", "score")

#: Defaults: YOLOv8's gains and its positive-mass normalizer for box, cls and dfl (so the gains
#: people have tuned keep their meaning), but no ``* batch_size`` on the total, and counts reduced
#: across ranks. ``bg`` is the mean over background anchors (``mean``): a per-anchor penalty whose
#: scale does not grow with the image size or the number of anchors. ``corner``: 7.5; 15 gave more polygon
#: AP on the default shapes run (benchmarks/polygon_options.py) but halved box AP50 on a short 128 px run.
#: ``obj`` is YOLOX's: BCE summed over every (non-ignored) anchor, divided by the positives (``num_pos``,
#: YOLOX's ``num_fg``), gain 1. A count, not ``target_sum``: the hard target puts 1 on each positive, so the
#: count is its target mass; with ``objectness_target="score"``, ``target_sum`` is the matching choice.
DEFAULT_WEIGHTS = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "poly": 7.5, "corner": 7.5, "bg": 1.0, "obj": 1.0}
DEFAULT_NORMALIZERS = {
    "box": "target_sum",
    "cls": "target_sum",
    "dfl": "target_sum",
    "poly": "target_sum",
    "corner": "target_sum",
    "bg": "mean",
    "obj": "num_pos",
}


@dataclass(frozen=True)
class BackgroundPenalty:
    """A penalty on anchors with no positive class (false-positive scores on background), as the ``bg`` term.

    Its gain ``lambda_bg`` is ``weights["bg"]``; a warm-up of it is a schedule of the ``bg`` term in a
    :class:`~detloss.weighting.policy.WeightPolicy`, outside the criterion.

    Attributes:
        kind: ``"max"`` (``max_c sigmoid``) or ``"focal"`` (focal loss against the zero target).
        gamma: focal exponent for ``kind="focal"``.
        logit_clamp: optional logit bound before the sigmoid (zero gradient beyond it).
    """

    kind: str = "max"
    gamma: float = 2.0
    logit_clamp: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in BACKGROUND_PENALTIES:
            raise ValueError(f"background penalty kind must be one of {BACKGROUND_PENALTIES}, got {self.kind!r}")


@dataclass(frozen=True)
class DenseTargets:
    """What the criterion trains towards; ``P`` = positive anchors, in ``nonzero(fg)`` order.

    Attributes:
        fg: ``(B, A)`` bool positives.
        labels: ``(P,)`` class of each positive.
        weight: ``(P,)`` soft target of each positive on its class: the classification target, and the
            weight of its box, dfl and poly elements. All other anchor-class targets are 0.
        points: ``(P, 2)`` anchor points in grid units of their own level.
        strides: ``(P,)`` stride of each positive's level.
        boxes: ``(P, 4)`` assigned GT boxes, ``xyxy`` in that stride's units.
        image, anchor: ``(P,)`` where each positive is (``fg[image, anchor]``).
        gt_index: ``(P,)`` slot of each positive's GT among its image's targets (in ``batch_idx`` order).
        polygons: ``(P, K, 2)`` assigned GT polygons in stride units, or ``None``.
        polygon_valid: ``(P, K)`` their valid vertices, or ``None``.
    """

    fg: Tensor
    labels: Tensor
    weight: Tensor
    points: Tensor
    strides: Tensor
    boxes: Tensor
    image: Tensor
    anchor: Tensor
    gt_index: Tensor
    polygons: Tensor | None = None
    polygon_valid: Tensor | None = None


class DenseCriterion(TermCriterion):
    """Loss of an anchor-free dense detector head (YOLOv8 layout), returning a :class:`LossReport`.

    Args:
        num_classes: C.
        strides: pixels per cell of each level.
        reg_max: DFL bins per side (``1``: the head predicts ``ltrb`` directly, trained by L1).
        preset: ``None`` or ``"ultralytics"`` (bit-compatible with ultralytics 8.x ``v8DetectionLoss``:
            its gains, ``topk=10, alpha=0.5, beta=6``, small GTs enlarged to the second stride for
            candidate selection, and ``total = (box + cls + dfl) * batch_size``). Explicit arguments
            still override the preset.
        weights: term gains, e.g. ``{"box": 7.5, "cls": 0.5, "dfl": 1.5}``; see :data:`DEFAULT_WEIGHTS`.
        normalizers: term -> normalizer name (any of :data:`detloss.core.normalize.NORMALIZERS`).
        cls_loss: ``"bce"``, ``"focal"``, ``"varifocal"`` or ``"quality_focal"``; ``cls_loss_args`` its kwargs.
        class_weights: optional ``(C,)`` per-class weights of the classification elements.
        box_loss: ``"ciou"``, ``"diou"``, ``"giou"`` or ``"iou"``.
        topk, alpha, beta, min_candidate_size: task-aligned assigner settings.
        background: a :class:`BackgroundPenalty` to add a ``bg`` term.
        num_vertices: K > 0 adds a polygon branch: ``2K`` channels after the class channels, vertex
            offsets from the anchor point in stride units, and a ``poly`` term.
        polygon_loss: ``"mgiou"``, ``"mgiou+"`` (with convexity regularizer), ``"l1"`` or ``"l2"``.
        polygon_corner: with a polygon branch, add a ``corner`` term
            (:func:`~detloss.functional.polygon_corner.corner_loss`: each target corner pulled to its
            nearest predicted vertex, each predicted vertex to the target's boundary), so the convex
            hull of the K predicted vertices can be a polygon with fewer corners; ``corner_beta`` its
            Huber knee (fraction of the object's box diagonal).
        objectness: add an objectness channel (``O = 1``, after the class channels) and an ``obj`` term:
            BCE of each anchor's objectness logit against "an object of any class is here", 1 (or the
            soft target, see ``objectness_target``) on the assigned positives, 0 on every other anchor,
            ignored anchors left out. Detections are then scored ``sigmoid(class) * sigmoid(obj)``
            (:func:`~detloss.evaluate.decode_dense`). The alternative to the background penalty: the
            "no object here" signal goes to a channel of its own instead of pushing every class down.
        objectness_target: ``"hard"`` (1 on each positive) or ``"score"`` (the assigner's IoU-aware soft
            target, the one ``cls`` uses).
        image_size: ``(h, w)`` in pixels; default: first level's size times its stride.

    Shapes:
        ``feats``: list of ``(B, 4R + C [+ O] [+ 2K], H_l, W_l)`` (``R = reg_max``, channels as in
        :class:`~detloss.ops.head_layout.HeadLayout`), ``H_l`` and ``W_l`` the image size
        divided by ``strides[l]``, rounded down or up.
        ``targets``: a :class:`~detloss.criteria.targets.Targets` (pixel boxes; with polygons for the
        polygon branch), or the YOLO-layout dict ``batch_idx (N,)``, ``cls (N,)``, ``bboxes (N, 4)``
        normalized ``cx, cy, w, h`` (with polygons also ``polygons (N, K, 2)`` normalized and
        ``polygon_valid (N, K)`` or ``polygon_counts (N,)``), converted by
        :meth:`Targets.from_dict <detloss.criteria.targets.Targets.from_dict>` with ``image_size``.
        Bad values raise ``ValueError`` naming the key and row.

    Example:
        >>> crit = DenseCriterion(num_classes=3, strides=(8, 16), reg_max=4)
        >>> feats = [torch.randn(2, crit.num_channels, 8, 8), torch.randn(2, crit.num_channels, 4, 4)]
        >>> t = {"batch_idx": torch.tensor([0]), "cls": torch.tensor([1]),
        ...      "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])}
        >>> report = crit(feats, t)
        >>> list(report)
        ['box', 'cls', 'dfl']
    """

    def __init__(
        self,
        num_classes: int,
        strides: Sequence[int] = (8, 16, 32),
        reg_max: int = 16,
        *,
        preset: str | None = None,
        weights: Mapping[str, float] | None = None,
        normalizers: Mapping[str, str] | None = None,
        cls_loss: str = "bce",
        cls_loss_args: Mapping[str, float] | None = None,
        class_weights: Sequence[float] | Tensor | None = None,
        box_loss: str = "ciou",
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        min_candidate_size: float | tuple[float, float] | None = None,
        background: BackgroundPenalty | None = None,
        num_vertices: int = 0,
        polygon_loss: str = "mgiou",
        convexity_weight: float = 0.1,
        polygon_corner: bool = False,
        corner_beta: float = 0.05,
        objectness: bool = False,
        objectness_target: str = "hard",
        image_size: tuple[int, int] | None = None,
        max_assign_pairs: int | None = None,
    ) -> None:
        super().__init__()
        if preset not in (None, "ultralytics"):
            raise ValueError(f"preset must be None or 'ultralytics', got {preset!r}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {tuple(CLS_LOSSES)}, got {cls_loss!r}")
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        if polygon_loss not in POLYGON_LOSSES:
            raise ValueError(f"polygon_loss must be one of {POLYGON_LOSSES}, got {polygon_loss!r}")
        if objectness_target not in OBJECTNESS_TARGETS:
            raise ValueError(f"objectness_target must be one of {OBJECTNESS_TARGETS}, got {objectness_target!r}")
        if not isinstance(objectness, bool):
            raise ValueError(f"objectness must be a bool, got {objectness!r}")
        if num_classes < 1 or reg_max < 1 or num_vertices < 0:
            raise ValueError("num_classes and reg_max must be >= 1 and num_vertices >= 0")
        if preset == "ultralytics" and min_candidate_size is None:
            min_candidate_size = ultralytics_min_candidate_size(strides)
        self.num_classes = num_classes
        self.strides = tuple(float(s) for s in strides)
        self.reg_max = reg_max
        self.preset = preset
        self.cls_loss = cls_loss
        self.cls_loss_args = dict(cls_loss_args or {})
        self.box_loss = box_loss
        self.background = background
        self.num_vertices = num_vertices
        self.objectness = objectness
        self.objectness_target = objectness_target
        self.layout = HeadLayout(reg_max, num_classes, num_vertices, objectness)
        self.polygon_loss = polygon_loss
        self.convexity_weight = convexity_weight
        if not corner_beta > 0:
            raise ValueError(f"corner_beta must be > 0, got {corner_beta!r}")
        self.polygon_corner = bool(polygon_corner and num_vertices)
        self.corner_beta = corner_beta
        self.image_size = image_size
        self.assigner = TaskAlignedAssigner(
            num_classes, topk=topk, alpha=alpha, beta=beta, min_candidate_size=min_candidate_size,
            max_pairs=max_assign_pairs,
        )  # fmt: skip

        terms = ["box", "cls", "dfl"] + (["poly"] if num_vertices else []) + (["corner"] if self.polygon_corner else [])
        terms += ["bg"] if background else []
        terms += ["obj"] if objectness else []
        self.setup_terms(terms, DEFAULT_WEIGHTS, DEFAULT_NORMALIZERS, weights, normalizers)
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if cw is not None and cw.shape != (num_classes,):
            raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(cw.shape)}")
        self.register_buffer("class_weights", cw)

    @property
    def num_channels(self) -> int:
        """Channels each level of ``feats`` must have."""
        return self.layout.num_channels

    @classmethod
    def from_config(cls, cfg: object, num_classes: int, strides: Sequence[int], **overrides: object) -> DenseCriterion:
        """From a config section whose fields are this class's options (e.g. the harness's ``loss``
        section; a pydantic model, a dataclass or a dict). Its ``background`` may be a dict of
        :class:`BackgroundPenalty` fields plus the ``lambda_bg`` schedule's (``max_value``, ``burn_in``,
        ``warmup``, ``mode``), which belong to the weight policy and are left out here. ``overrides``
        replace fields."""
        options = config_options(cfg) | overrides
        background = options.get("background")
        if isinstance(background, Mapping):
            schedule_keys = {"max_value", "burn_in", "warmup", "mode"}
            options["background"] = BackgroundPenalty(**{k: v for k, v in background.items() if k not in schedule_keys})
        return cls(num_classes, strides, **options)

    def forward(
        self,
        feats: Sequence[Tensor],
        targets: Targets | Mapping[str, Tensor],
        *,
        ignore: Tensor | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> LossReport:
        """The terms of ``feats`` against ``targets`` (class docstring).

        ``ignore``: optional ``(B, A)`` bool, anchors (in level-then-row-major order) that are neither
        positive nor negative: their class and objectness elements and ``bg`` penalty are left out (a
        positive anchor is never ignored). Semi-supervised training passes the anchors a teacher is unsure of.
        ``weights``: this call's gains, term -> gain, overriding the base :attr:`weights`.
        """
        gains = self.call_weights(weights)
        head = self._split(feats)
        t = self._assign(head, targets)
        fg = t.fg
        num_pos = fg.sum()
        ignore = self._check_ignore(ignore, head, fg)
        denom = denominators(self.normalizers, self._counts(t, head, ignore), device=fg.device)
        anchor = head.cls[0]  # any prediction tensor: keeps empty terms attached to the graph

        pos_logits = head.gather(head.box, t.image, t.anchor)  # (P, 4R)
        pos_ltrb = self.layout.decode_boxes(pos_logits)  # (P, 4) grid units
        terms = {}
        box_el = iou_loss(dist2bbox(pos_ltrb, t.points), t.boxes, kind=self.box_loss, preset=self.preset)
        terms["box"] = self._term("box", box_el, denom, gains=gains, weights=t.weight, num_pos=num_pos, anchor=anchor)
        cls_el = self._cls_elements(head, t, ignore)
        num_cls = (head.batch_size * head.num_anchors - _count(ignore)) * self.num_classes
        terms["cls"] = self._term(
            "cls", cls_el, denom, gains=gains, num_pos=num_pos, anchor=anchor, num_elements=num_cls
        )
        target_ltrb = bbox2dist(t.points, t.boxes)
        if self.reg_max > 1:
            dfl_el = distribution_focal(pos_logits.reshape(-1, self.reg_max), target_ltrb.reshape(-1)).view(-1, 4)
        else:
            dfl_el = l1(pos_ltrb, target_ltrb)
        terms["dfl"] = self._term(
            "dfl", dfl_el.mean(-1), denom, gains=gains, weights=t.weight, num_pos=num_pos, anchor=anchor
        )
        if self.num_vertices:
            offsets = self.layout.vertices(head.gather(head.poly, t.image, t.anchor).float())  # (P, K, 2)
            pred_poly = t.points[:, None, :] + offsets
            poly_el = self._polygon_elements(pred_poly, t.polygons, t.polygon_valid)
            terms["poly"] = self._term(
                "poly", poly_el, denom, gains=gains, weights=t.weight, num_pos=num_pos, anchor=head.poly[0]
            )
            if self.polygon_corner:
                corner_el = corner_loss(pred_poly, t.polygons, target_valid=t.polygon_valid, beta=self.corner_beta)
                terms["corner"] = self._term(
                    "corner", corner_el, denom, gains=gains, weights=t.weight, num_pos=num_pos, anchor=head.poly[0]
                )
        if self.background is not None:
            negative = ~fg if ignore is None else ~(fg | ignore)
            terms["bg"] = self._term(
                "bg", self._background_elements(head, negative), denom, gains=gains, num_pos=num_pos, anchor=anchor
            )
        if self.objectness:
            num_obj = head.batch_size * head.num_anchors - _count(ignore)
            terms["obj"] = self._term(
                "obj", self._objectness_elements(head, t, ignore), denom, gains=gains, num_pos=num_pos,
                anchor=head.obj[0], num_elements=num_obj,
            )  # fmt: skip
        return LossReport(terms, scale=head.batch_size if self.preset == "ultralytics" else 1)

    def assign(self, feats: Sequence[Tensor], targets: Targets | Mapping[str, Tensor]) -> DenseTargets:
        """The targets this criterion trains ``feats`` towards (for inspection, plots and tests)."""
        return self._assign(self._split(feats), targets)

    # -- pieces ---------------------------------------------------------------------------------

    def _split(self, feats: Sequence[Tensor]) -> HeadOutputs:
        return self.layout.split_levels(feats, self.strides)

    def _assign(self, head: HeadOutputs, targets: Targets | Mapping[str, Tensor]) -> DenseTargets:
        b, device = head.batch_size, head.cls[0].device
        points, strides = make_anchors(head.sizes, self.strides, device=device)
        grid = points / strides[:, None]  # anchor points in grid units (ultralytics' anchor_points)
        hw = self.image_size or (head.sizes[0][0] * self.strides[0], head.sizes[0][1] * self.strides[0])
        check_level_sizes(head.sizes, self.strides, hw)
        if isinstance(targets, Targets):
            gt = targets.to(device).validate(num_classes=self.num_classes, batch_size=b).padded()
        else:
            gt = Targets.from_dict(targets, b, hw, num_classes=self.num_classes, device=device).padded()
        if self.num_vertices and (gt.polygons is None or gt.polygons.shape[2] != self.num_vertices):
            raise ValueError(
                f"this criterion predicts {self.num_vertices} vertices: targets must contain "
                f"'polygons' of shape (N, {self.num_vertices}, 2)"
            )
        # The assigner sees detached predictions. Decoding every anchor is needed only here, so it runs
        # without autograd; the loss decodes the positives again, with gradient.
        with torch.no_grad():
            ltrb = torch.cat([self.layout.decode_boxes(x, dim=1) for x in head.box], 2).transpose(1, 2)  # (B, A, 4)
            pred_px = dist2bbox(ltrb, grid) * strides[:, None]
            logits = torch.cat(head.cls, 2).transpose(1, 2)  # (B, A, C) view of a detached copy
            # class scores alone, with objectness too: the alignment metric scores the target's class
            assigned = self.assigner(
                logits, pred_px, points, gt.labels, gt.boxes, gt.mask & _nonzero(gt.boxes), scores_are_logits=True
            )
        fg = assigned.fg_mask
        image, anchor = torch.nonzero(fg, as_tuple=True)
        pos_strides = strides[anchor]
        gt_index = assigned.gt_index[fg]
        polygons = polygon_valid = None
        if self.num_vertices:
            polygons = gt.polygons[image, gt_index] / pos_strides[:, None, None]
            polygon_valid = gt.polygon_valid[image, gt_index]
        return DenseTargets(
            fg=fg,
            labels=assigned.labels[fg],
            weight=assigned.score[fg],
            points=grid[anchor],
            strides=pos_strides,
            boxes=assigned.boxes[fg] / pos_strides[:, None],
            image=image,
            anchor=anchor,
            gt_index=gt_index,
            polygons=polygons,
            polygon_valid=polygon_valid,
        )

    def _check_ignore(self, ignore: Tensor | None, head: HeadOutputs, fg: Tensor) -> Tensor | None:
        """``ignore`` as a ``(B, A)`` bool on the head's device, positives removed."""
        if ignore is None:
            return None
        shape = (head.batch_size, head.num_anchors)
        if not isinstance(ignore, Tensor) or ignore.dtype != torch.bool or tuple(ignore.shape) != shape:
            got = tuple(ignore.shape) if isinstance(ignore, Tensor) else type(ignore).__name__
            raise ValueError(f"ignore must be a bool tensor of shape (B, A) = {shape}, got {got}")
        return ignore.to(fg.device) & ~fg

    def _counts(
        self, t: DenseTargets, head: HeadOutputs, ignore: Tensor | None
    ) -> dict[str, dict[str, Tensor | float]]:
        b, c, a = head.batch_size, self.num_classes, head.num_anchors
        num_pos = t.fg.sum()
        num_ignored = _count(ignore)
        shared = {
            "num_pos": num_pos,
            "target_sum": t.weight.sum(),
            "batch_size": float(b),
            "images_with_fg": t.fg.any(1).sum(),
            "num_cells": float(a),
        }
        counts: dict[str, dict[str, Tensor | float]] = {"*": shared, "cls": {"num_elements": (b * a - num_ignored) * c}}
        for term in ("box", "dfl", "poly", "corner"):
            counts[term] = {"num_elements": num_pos}
        counts["bg"] = {"num_elements": b * a - num_pos - num_ignored}
        counts["obj"] = {"num_elements": b * a - num_ignored}
        return counts

    def _cls_elements(self, head: HeadOutputs, t: DenseTargets, ignore: Tensor | None = None) -> list[Tensor]:
        """Per anchor-class losses against the soft targets: one ``(B, C, HW)`` piece per level,
        zero at ignored anchors.

        The target is zero except at each positive's class; plain BCE uses that directly
        (:func:`bce_with_sparse_targets`), the other losses get a dense target per level.
        """
        pieces = []
        cw = None if self.class_weights is None else self.class_weights.view(1, -1, 1)
        plain_bce = self.cls_loss == "bce" and not self.cls_loss_args
        keep = None if ignore is None else (~ignore).float().split([h * w for h, w in head.sizes], 1)
        for level, mask, local in head.levels(t.anchor):
            logits = head.cls[level]
            index = (t.image[mask], t.labels[mask], local)
            if plain_bce:
                el = bce_with_sparse_targets(logits, index, t.weight[mask])
            else:
                target = torch.zeros(logits.shape, device=logits.device)
                target[index] = t.weight[mask]
                el = CLS_LOSSES[self.cls_loss](logits, target, **self.cls_loss_args)
            if cw is not None:
                el = el * cw
            pieces.append(el if keep is None else el * keep[level][:, None, :])
        return pieces

    def _objectness_elements(self, head: HeadOutputs, t: DenseTargets, ignore: Tensor | None) -> list[Tensor]:
        """Per-anchor BCE of the objectness logits: one ``(B, 1, HW)`` piece per level, target 1 (``"hard"``)
        or the soft target (``"score"``) on the positives, 0 elsewhere, zero at ignored anchors."""
        pieces = []
        keep = None if ignore is None else (~ignore).float().split([h * w for h, w in head.sizes], 1)
        for level, mask, local in head.levels(t.anchor):
            target = t.weight[mask] if self.objectness_target == "score" else torch.ones_like(t.weight[mask])
            index = (t.image[mask], torch.zeros_like(local), local)
            el = bce_with_sparse_targets(head.obj[level], index, target)
            pieces.append(el if keep is None else el * keep[level][:, None, :])
        return pieces

    def _background_elements(self, head: HeadOutputs, negative: Tensor) -> Tensor:
        """Penalty per ``negative`` (``(B, A)`` bool) anchor; ``(N_bg,)``."""
        p = self.background
        if p.kind == "max":  # the max over classes first: no (N_bg, C) copy
            top = torch.cat([c.amax(1) for c in head.cls], 1)[negative]
            return max_score_penalty(top[:, None], logit_clamp=p.logit_clamp)
        logits = torch.cat(head.cls, 2).transpose(1, 2)[negative]
        return focal_background(logits, gamma=p.gamma, logit_clamp=p.logit_clamp)

    def _polygon_elements(self, pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """``(P, K, 2)`` predicted and target vertices in stride units -> ``(P,)``.

        MGIoU compares the extent of all K predicted vertices with the target's (its hull, in effect),
        so a triangle may be predicted by 8 points and decoded as their convex hull. L1/L2 pair vertex
        ``k`` with target vertex ``k`` and train only the target's valid vertices."""
        if self.polygon_loss in ("mgiou", "mgiou+"):
            convexity = self.convexity_weight if self.polygon_loss == "mgiou+" else 0.0
            return mgiou_loss(pred, target, target_valid=valid, convexity_weight=convexity)
        el = (l1 if self.polygon_loss == "l1" else mse)(pred, target).sum(-1)  # (P, K)
        v = valid.float()
        return (el * v).sum(-1) / v.sum(-1).clamp_min(1.0)  # valid vertices only; clamp: a vertex count


def _count(mask: Tensor | None) -> Tensor | int:
    return 0 if mask is None else mask.sum()


def _nonzero(boxes: Tensor) -> Tensor:
    """ultralytics counts a GT slot as real only if its xyxy sums to more than 0."""
    return boxes.sum(-1) > 0
