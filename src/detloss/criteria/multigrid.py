"""Grid ("multigrid") detector loss of field report 003: location, objectness and class per cell.

Each cell of a ``H x W`` grid predicts a box encoding ``loc``, an objectness logit ``obj`` and class
logits ``cls``; targets mark *object* cells (responsible for an object), *ignore* cells (neither
positive nor negative, e.g. near an object) and the rest (negative).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from detloss.core.checks import check_tensor
from detloss.criteria.target_checks import check_grid_targets
from detloss.criteria.terms import TermCriterion
from detloss.functional.classification import bce_with_logits, softmax_cross_entropy
from detloss.functional.regression import l1, mse, smooth_l1
from detloss.core.normalize import denominators
from detloss.core.report import LossReport

__all__ = ["DEFAULT_NORMALIZERS", "DEFAULT_WEIGHTS", "MultigridCriterion"]

TERMS = ("loc", "obj", "cls")
DEFAULT_WEIGHTS = {"loc": 1.0, "obj": 1.0, "cls": 1.0}
#: Report 003's original choice: per-batch cell counts (``num_samples`` = active cells).
DEFAULT_NORMALIZERS = {"loc": "num_pos", "obj": "num_samples", "cls": "num_pos"}
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

    Every option of report 003 is a named normalizer (``D``, summed over DDP ranks):

    ==================  =================================================  ==============================
    name                ``D``                                              report 003
    ==================  =================================================  ==============================
    ``num_pos``         object cells in the batch                          current ``loc`` and ``cls``
    ``num_samples``     active cells (object + non-ignored negative)       current ``obj`` ("anchor")
    ``batch_size``      images ``B``                                       option 1 (recommended)
    ``fixed:k``         the constant ``k``                                 option 2
    ``density``         ``B + P / (H W) = B (1 + P / (B H W))``            option 3
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
    validation does not) — the incomparability of report 003. ``density`` is in between: its ``D``
    grows with the object count, but only by ``P / (H W) <= B`` on top of ``B``, so it moves far
    less than ``num_pos``. (Report 003's option 3 *multiplies* by ``1 + density``; this
    normalizer divides by it, as every ``D`` does.) See ``tests/criteria/test_multigrid.py`` for the
    measured illustration.

    Counts provided: ``num_pos`` (= ``target_sum``, object cells), ``num_samples`` (active cells),
    ``batch_size``, ``images_with_fg``, ``num_cells`` (``H x W``) and each term's ``num_elements``.

    Args:
        num_classes: ``C``.
        weights, normalizers: per term (:data:`DEFAULT_WEIGHTS`, :data:`DEFAULT_NORMALIZERS`).
        loc_loss: ``"mse"``, ``"l1"`` or ``"smooth_l1"`` (with ``beta``).
        cls_loss: ``"bce"`` or ``"ce"``.
        obj_pos_weight: weight of the positive part of the objectness BCE.

    Example:
        >>> crit = MultigridCriterion(2, normalizers={"loc": "batch_size", "obj": "batch_size", "cls": "batch_size"})
        >>> pred = {"loc": torch.zeros(1, 2, 2, 4), "obj": torch.zeros(1, 2, 2), "cls": torch.zeros(1, 2, 2, 2)}
        >>> obj = torch.tensor([[[True, False], [False, False]]])
        >>> tgt = {"loc": torch.ones(1, 2, 2, 4), "object_mask": obj, "ignore_mask": torch.zeros_like(obj),
        ...        "labels": torch.zeros(1, 2, 2, dtype=torch.long)}
        >>> report = crit(pred, tgt)
        >>> [round(float(report[k].value), 4) for k in report]   # 4, 4 log 2, 2 log 2
        [4.0, 2.7726, 1.3863]
    """

    def __init__(
        self,
        num_classes: int,
        weights: Mapping[str, float] | None = None,
        normalizers: Mapping[str, str] | None = None,
        *,
        loc_loss: str = "mse",
        beta: float = 1.0,
        cls_loss: str = "bce",
        obj_pos_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if loc_loss not in LOC_LOSSES:
            raise ValueError(f"loc_loss must be one of {tuple(LOC_LOSSES)}, got {loc_loss!r}")
        if cls_loss not in CLS_LOSSES:
            raise ValueError(f"cls_loss must be one of {CLS_LOSSES}, got {cls_loss!r}")
        self.num_classes = int(num_classes)
        self.setup_terms(TERMS, DEFAULT_WEIGHTS, DEFAULT_NORMALIZERS, weights, normalizers)
        self.loc_loss = loc_loss
        self.beta = float(beta)
        self.cls_loss = cls_loss
        self.obj_pos_weight = float(obj_pos_weight)

    def forward(self, pred: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> LossReport:
        """Loss of one batch.

        Args:
            pred: ``loc (B, H, W, 4)``, ``obj (B, H, W)`` logits, ``cls (B, H, W, C)`` logits.
            targets: ``loc (B, H, W, 4)``, ``object_mask (B, H, W)`` bool, ``ignore_mask (B, H, W)`` bool,
                ``labels (B, H, W)`` int in ``[0, C)`` (read and checked on object cells only); masks
                that are not 0/1 and labels out of range raise ``ValueError`` naming the cell.
        """
        for key in TERMS:
            if key not in pred:
                raise ValueError(
                    f"pred must contain 'loc' (B, H, W, 4), 'obj' (B, H, W), 'cls' (B, H, W, C); missing {key!r}"
                )
        for key in ("loc", "object_mask", "ignore_mask", "labels"):
            if key not in targets:
                raise ValueError(
                    "targets must contain 'loc' (B, H, W, 4), 'object_mask', 'ignore_mask' and 'labels' (B, H, W); "
                    f"missing {key!r}"
                )
        loc, obj, cls = pred["loc"], pred["obj"], pred["cls"]
        check_tensor("pred['obj']", obj, ("B", "H", "W"), floating=True)
        b, h, w = obj.shape
        check_tensor("pred['loc']", loc, (b, h, w, 4), floating=True)
        check_tensor("pred['cls']", cls, (b, h, w, self.num_classes), floating=True)
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
            "loc": self._term("loc", loc_el, denom, num_pos=num_pos, anchor=loc),
            "obj": self._term("obj", obj_el, denom, num_pos=num_pos, anchor=obj),
            "cls": self._term("cls", cls_el, denom, num_pos=num_pos, anchor=cls),
        }
        return LossReport(terms)
