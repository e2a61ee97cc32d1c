"""Grid ("multigrid") detector loss: location, objectness and class per cell.

Each cell of a ``H x W`` grid predicts a box encoding ``loc``, an objectness logit ``obj`` and class
logits ``cls``; the criterion encodes the GT boxes into cells (:func:`detloss.assign.grid.grid_targets`):
*object* cells (responsible for an object), *ignore* cells (neither positive nor negative, e.g. near an
object) and the rest (negative).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from detloss.assign.grid import grid_targets
from detloss.core.checks import check_tensor
from detloss.criteria.target_checks import check_grid_targets
from detloss.criteria.targets import Targets
from detloss.criteria.terms import TermCriterion, config_options
from detloss.functional.classification import bce_with_logits, softmax_cross_entropy
from detloss.functional.regression import l1, mse, smooth_l1
from detloss.core.normalize import denominators
from detloss.core.report import LossReport

__all__ = ["DEFAULT_NORMALIZERS", "DEFAULT_WEIGHTS", "PER_BATCH_NORMALIZERS", "MultigridCriterion"]

TERMS = ("loc", "obj", "cls")
DEFAULT_WEIGHTS = {"loc": 1.0, "obj": 1.0, "cls": 1.0}
#: Per-image sums: train and validation losses comparable (class docstring).
DEFAULT_NORMALIZERS = {"loc": "batch_size", "obj": "batch_size", "cls": "batch_size"}
#: The common per-batch cell counts (``num_samples`` = active cells): each batch rescaled by its own count.
PER_BATCH_NORMALIZERS = {"loc": "num_pos", "obj": "num_samples", "cls": "num_pos"}
LOC_LOSSES = {"mse": mse, "l1": l1, "smooth_l1": smooth_l1}
CLS_LOSSES = ("bce", "ce")


class MultigridCriterion(TermCriterion):
    """Per-cell loss of a grid detector, returning a :class:`LossReport` (``loc``, ``obj``, ``cls``).

    With ``object`` = ``object_mask`` and ``active = object | ~ignore_mask`` (an object cell is
    positive even if it is also marked ignore):

    * ``loc``: squared error (``loc_loss="mse"``; or ``"l1"``, ``"smooth_l1"``) of the 4 location
      values on object cells, summed over the 4 — one element per object cell.
    * ``obj``: BCE of the objectness logit on active cells: target 1 on object cells, 0 on the other
      active cells; the positive part weighted by ``obj_pos_weight``. Ignored cells get no loss.
    * ``cls``: on object cells, BCE against the one-hot label summed over the ``C`` classes
      (``cls_loss="bce"``) or softmax cross-entropy (``"ce"``) — one element per object cell.

    Each choice of divisor is a named normalizer (``D``, summed over DDP ranks):

    ==================  =================================================  ==============================
    name                ``D``                                              use
    ==================  =================================================  ==============================
    ``num_pos``         object cells in the batch                          common for ``loc`` and ``cls``
    ``num_samples``     active cells (object + non-ignored negative)       common for ``obj`` ("anchor")
    ``batch_size``      images ``B``                                       the default (recommended)
    ``fixed:k``         the constant ``k``                                 a fixed scale
    ``density``         ``B + P / (H W) = B (1 + P / (B H W))``            between the two
    ==================  =================================================  ==============================

    **Which choice makes train and validation losses comparable.** A normalizer that is a constant
    per image — ``batch_size`` (or ``fixed:k`` with ``k`` proportional to the batch size, i.e. equal
    train and validation batch sizes) — makes every term a *per-image sum*: an image contributes
    ``(its own loss sum) / B`` however many objects the other images of its batch hold, the epoch
    mean does not depend on how the images are grouped into batches, and a validation set of other
    object density is measured on the same scale. ``num_pos`` and ``num_samples`` rescale each batch
    by its own count: an image's contribution (and its gradient) shrinks when its neighbours gain
    objects, a batch with one object weighs that object like a batch of a hundred, and the same
    predictions on the same images give a different loss when batched differently (training shuffles,
    validation does not): train and validation losses are not comparable. ``density`` is in between:
    its ``D`` grows with the object count, but only by ``P / (H W) <= B`` on top of ``B``, so it moves
    far less than ``num_pos``. (A loss *multiplied* by ``1 + density`` is the same idea; this
    normalizer divides by it, as every ``D`` does.) See ``tests/criteria/test_multigrid.py`` for the
    measured illustration; :data:`PER_BATCH_NORMALIZERS` are the per-batch counts.

    Counts provided: ``num_pos`` (= ``target_sum``, object cells), ``num_samples`` (active cells),
    ``batch_size``, ``images_with_fg``, ``num_cells`` (``H x W``) and each term's ``num_elements``.

    Args:
        num_classes: ``C``.
        stride: pixels per cell (the GT boxes are encoded into cells of this size).
        weights, normalizers: per term (:data:`DEFAULT_WEIGHTS`, :data:`DEFAULT_NORMALIZERS`).
        loc_loss: ``"mse"``, ``"l1"`` or ``"smooth_l1"`` (with ``beta``).
        cls_loss: ``"ce"`` or ``"bce"``.
        obj_pos_weight: weight of the positive part of the objectness BCE.
        ignore_iou: cells whose re-centred GT overlaps it above this IoU are ignored
            (:func:`~detloss.assign.grid.grid_targets`).
        image_size: ``(h, w)`` pixels that normalized dict targets are scaled by; default: the grid size
            times ``stride``.

    Example:
        >>> crit = MultigridCriterion(2, stride=16, cls_loss="bce")
        >>> pred = {"loc": torch.zeros(1, 2, 2, 4), "obj": torch.zeros(1, 2, 2), "cls": torch.zeros(1, 2, 2, 2)}
        >>> t = Targets.from_per_image([{"boxes": torch.tensor([[4.0, 4.0, 12.0, 20.0]]), "labels": torch.tensor([0])}])
        >>> crit.encode(t, (2, 2))["loc"][0, 0, 0]   # centre (8, 12) in cell (0, 0), size 8 x 16
        tensor([ 0.5000,  0.7500, -0.6931,  0.0000])
        >>> report = crit(pred, t)
        >>> [round(float(report[k].value), 4) for k in report]   # 0.5² + 0.75² + log(2)², 4 log 2, 2 log 2
        [1.293, 2.7726, 1.3863]
    """

    def __init__(
        self,
        num_classes: int,
        stride: int = 16,
        *,
        weights: Mapping[str, float] | None = None,
        normalizers: Mapping[str, str] | None = None,
        loc_loss: str = "mse",
        beta: float = 1.0,
        cls_loss: str = "ce",
        obj_pos_weight: float = 1.0,
        ignore_iou: float = 0.5,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if loc_loss not in LOC_LOSSES:
            raise ValueError(f"loc_loss must be one of {tuple(LOC_LOSSES)}, got {loc_loss!r}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        if stride <= 0:
            raise ValueError(f"stride must be > 0, got {stride}")
        self.num_classes = int(num_classes)
        self.stride = int(stride)
        self.ignore_iou = float(ignore_iou)
        self.image_size = image_size
        self.setup_terms(TERMS, DEFAULT_WEIGHTS, DEFAULT_NORMALIZERS, weights, normalizers)
        self.loc_loss = loc_loss
        self.beta = float(beta)
        self.cls_loss = cls_loss
        self.obj_pos_weight = float(obj_pos_weight)

    @classmethod
    def from_config(cls, cfg: object, num_classes: int, stride: int = 16, **overrides: object) -> MultigridCriterion:
        """From a config section whose fields are this class's options (the harness's ``grid`` section; a
        pydantic model, a dataclass or a dict); ``overrides`` replace fields."""
        return cls(num_classes, stride, **(config_options(cfg) | overrides))

    def forward(
        self,
        pred: Mapping[str, Tensor],
        targets: Targets | Mapping[str, Tensor],
        *,
        weights: Mapping[str, float] | None = None,
    ) -> LossReport:
        """Loss of one batch.

        Args:
            pred: ``loc (B, H, W, 4)``, ``obj (B, H, W)`` logits, ``cls (B, H, W, C)`` logits.
            targets: a :class:`~detloss.criteria.targets.Targets`, or the YOLO-layout dict (``batch_idx``,
                ``cls``, normalized ``cxcywh`` ``bboxes``; scaled by ``image_size``), encoded into cells by
                :meth:`encode`.
            weights: this call's gains, term -> gain, overriding the base :attr:`weights`.
        """
        b, h, w = self._check_pred(pred)
        cells = self.encode(targets, (h, w), batch_size=b, device=pred["obj"].device)
        return self.cell_loss(pred, cells, weights=weights)

    def encode(
        self,
        targets: Targets | Mapping[str, Tensor],
        grid_hw: tuple[int, int],
        *,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """The cell targets of ``targets`` on a ``grid_hw`` grid (:func:`~detloss.assign.grid.grid_targets`
        with this criterion's ``stride`` and ``ignore_iou``), on ``device``; ``batch_size``: the images
        of the predictions (required for dict targets, checked for :class:`Targets`)."""
        if isinstance(targets, Targets):
            gt = targets.to(device or targets.boxes.device)
            gt = gt.validate(num_classes=self.num_classes, batch_size=batch_size)
        else:
            if isinstance(targets, Mapping) and "object_mask" in targets:
                raise ValueError(
                    "targets are already encoded into cells ('object_mask' ...): call cell_loss(pred, targets)"
                )
            if batch_size is None:
                raise ValueError("encode needs batch_size for dict targets (images without objects count too)")
            h, w = grid_hw
            hw = self.image_size or (h * self.stride, w * self.stride)
            gt = Targets.from_dict(targets, batch_size, hw, num_classes=self.num_classes, device=device)
        images = gt.per_image()
        boxes, labels = [g["boxes"] for g in images], [g["labels"] for g in images]
        return grid_targets(boxes, labels, grid_hw, self.stride, ignore_iou=self.ignore_iou)

    def _check_pred(self, pred: Mapping[str, Tensor]) -> tuple[int, int, int]:
        """``(B, H, W)`` of valid predictions; ``ValueError`` naming the bad key otherwise."""
        if not isinstance(pred, Mapping):
            raise ValueError(f"pred must be a dict with 'loc', 'obj', 'cls', got {type(pred).__name__}")
        for key in TERMS:
            if key not in pred:
                raise ValueError(
                    f"pred must contain 'loc' (B, H, W, 4), 'obj' (B, H, W), 'cls' (B, H, W, C); missing {key!r}"
                )
        loc, obj, cls = pred["loc"], pred["obj"], pred["cls"]
        check_tensor("pred['obj']", obj, ("B", "H", "W"), floating=True)
        b, h, w = obj.shape
        check_tensor("pred['loc']", loc, (b, h, w, 4), floating=True)
        check_tensor("pred['cls']", cls, (b, h, w, self.num_classes), floating=True)
        return b, h, w

    def cell_loss(
        self, pred: Mapping[str, Tensor], targets: Mapping[str, Tensor], *, weights: Mapping[str, float] | None = None
    ) -> LossReport:
        """Loss of one batch against targets already encoded into cells.

        Args:
            pred: as :meth:`forward`.
            targets: ``loc (B, H, W, 4)``, ``object_mask (B, H, W)`` bool, ``ignore_mask (B, H, W)`` bool,
                ``labels (B, H, W)`` int in ``[0, C)`` (read and checked on object cells only); masks
                that are not 0/1 and labels out of range raise ``ValueError`` naming the cell.
            weights: this call's gains, term -> gain, overriding the base :attr:`weights`.
        """
        gains = self.call_weights(weights)
        b, h, w = self._check_pred(pred)
        for key in ("loc", "object_mask", "ignore_mask", "labels"):
            if key not in targets:
                raise ValueError(
                    "targets must contain 'loc' (B, H, W, 4), 'object_mask', 'ignore_mask' and 'labels' (B, H, W); "
                    f"missing {key!r}"
                )
        loc, obj, cls = pred["loc"], pred["obj"], pred["cls"]
        check_tensor("targets['loc']", targets["loc"], (b, h, w, 4), floating=True)
        for key in ("object_mask", "ignore_mask", "labels"):
            check_tensor(f"targets[{key!r}]", targets[key], (b, h, w))
        device = obj.device
        check_grid_targets(targets, self.num_classes, device)
        fg = targets["object_mask"].to(device, torch.bool)
        active = fg | ~targets["ignore_mask"].to(device, torch.bool)
        num_pos, num_active = fg.sum(), active.sum()
        shared = {
            "num_pos": num_pos,
            "target_sum": num_pos,
            "num_samples": num_active,
            "batch_size": float(b),
            "images_with_fg": fg.flatten(1).any(1).sum(),
            "num_cells": float(h * w),
        }
        counts = {
            "*": shared,
            "loc": {"num_elements": num_pos},
            "obj": {"num_elements": num_active},
            "cls": {"num_elements": num_pos},
        }
        denom = denominators(self.normalizers, counts, device=device)

        loc_fn = LOC_LOSSES[self.loc_loss]
        loc_args = {"beta": self.beta} if self.loc_loss == "smooth_l1" else {}
        loc_el = loc_fn(loc[fg], targets["loc"].to(device)[fg].to(loc.dtype), **loc_args).sum(-1)
        obj_el = bce_with_logits(obj[active], fg[active].to(obj.dtype), pos_weight=self.obj_pos_weight)
        labels = targets["labels"].to(device).long()[fg]
        if self.cls_loss == "bce":
            onehot = F.one_hot(labels, self.num_classes).to(cls.dtype)
            cls_el = bce_with_logits(cls[fg], onehot).sum(-1)
        else:
            cls_el = softmax_cross_entropy(cls[fg], labels)
        terms = {
            "loc": self._term("loc", loc_el, denom, gains=gains, num_pos=num_pos, anchor=loc),
            "obj": self._term("obj", obj_el, denom, gains=gains, num_pos=num_pos, anchor=obj),
            "cls": self._term("cls", cls_el, denom, gains=gains, num_pos=num_pos, anchor=cls),
        }
        return LossReport(terms)
