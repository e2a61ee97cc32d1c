"""detloss inside torchvision's Faster / Mask R-CNN training.

:func:`attach` switches a built ``FasterRCNN`` or ``MaskRCNN`` (any ``GeneralizedRCNN`` with torchvision's
``RegionProposalNetwork`` and ``RoIHeads``) over to detloss losses in one call::

    from detloss.integrations.torchvision import attach

    model = torchvision.models.detection.maskrcnn_resnet50_fpn(num_classes=7)
    attach(model, normalizers={"rpn_box": "num_samples"}, rpn_pos_weight=1.0, roi_fg_weight=1.0)
    losses = model(images, targets)          # the same five keys as before
    sum(losses.values()).backward()
    print(model.detloss.last_report.table())  # rpn_obj, rpn_box, cls, box, mask: sums, normalizers, counts

The heads keep torchvision's own matching, box encoding, sampling (``fg_bg_sampler``,
``select_training_samples``) and mask targets (``project_masks_on_boxes``); only the reductions change.
Each term is ``weight * sum(elements) / D`` (:func:`detloss.core.report.make_term`), ``D`` a named
normalizer from counts summed over the DDP ranks (:func:`detloss.core.normalize.denominators`), so a
k-GPU step gives one process's gradient on the whole batch (torchvision averages per-rank means).

=========  ===================  ======================================  ===========  ==============
term       dict key             element                                 torchvision  detloss default
=========  ===================  ======================================  ===========  ==============
rpn_obj    loss_objectness      BCE per sampled anchor                  num_samples  num_samples
rpn_box    loss_rpn_box_reg     smooth-L1 (1/9) per positive, 4 summed  num_samples  num_pos
cls        loss_classifier      softmax CE per sampled ROI              num_samples  num_samples
box        loss_box_reg         smooth-L1 (1/9) per positive, 4 summed  num_samples  num_pos
mask       loss_mask            BCE pixel mean per positive ROI         num_pos      num_pos
=========  ===================  ======================================  ===========  ==============

torchvision is imported on first use (:func:`attach`, or reading ``DetlossRPN`` / ``DetlossRoIHeads``), so
this module imports, and its docs build, without it; ``import detloss`` never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from detloss.core.normalize import build_normalizers, denominators
from detloss.core.report import LossReport, make_term
from detloss.criteria import roi as roi_criterion
from detloss.criteria import rpn as rpn_criterion
from detloss.functional.classification import bce_with_logits, softmax_cross_entropy
from detloss.functional.regression import smooth_l1

__all__ = ["DEFAULT_NORMALIZERS", "KEYS", "PRESETS", "RCNNLoss", "attach"]  # and DetlossRPN, DetlossRoIHeads (lazy)

#: term -> torchvision's loss-dict key.
KEYS = {
    "rpn_obj": "loss_objectness",
    "rpn_box": "loss_rpn_box_reg",
    "cls": "loss_classifier",
    "box": "loss_box_reg",
    "mask": "loss_mask",
}
#: detloss's defaults, those of :class:`~detloss.criteria.rpn.RPNCriterion` and ``ROICriterion``.
DEFAULT_NORMALIZERS = {f"rpn_{t}": n for t, n in rpn_criterion.DEFAULT_NORMALIZERS.items()} | dict(
    roi_criterion.DEFAULT_NORMALIZERS
)
#: ``preset`` -> the normalizers it sets (weights stay 1): ``"torchvision"`` reproduces torchvision.
PRESETS = {
    None: DEFAULT_NORMALIZERS,
    "torchvision": {"rpn_obj": "num_samples", "rpn_box": "num_samples", "cls": "num_samples",
                    "box": "num_samples", "mask": "num_pos"},
}
BETA = 1.0 / 9.0  # torchvision's smooth-L1 transition, both stages


class RCNNLoss(nn.Module):
    """Term weights, normalizers and positive weights shared by the two heads; holds the last report.

    Attributes:
        terms: ``["rpn_obj", "rpn_box", "cls", "box"]`` (+ ``"mask"`` for a Mask R-CNN).
        weights: term -> gain. normalizers: ``ModuleDict`` term -> :class:`Normalizer` (EMA state in
        ``state_dict``). rpn_pos_weight, roi_fg_weight: floats.
        last_report: the :class:`LossReport` of the last training forward (all terms), for the doctor.
        last_parts: the two classification terms split by sample kind, ``rpn_obj_pos + rpn_obj_neg =
            rpn_obj`` and ``cls_fg + cls_bg = cls`` (same normalizer and weight), for the doctor: the
            positives' gradient can vanish while the whole term's gradient looks healthy.
        last_outputs: the head outputs the last report was computed from, attached to its graph (for
            :func:`detloss.diagnose.gradients.gradient_accounting`): ``objectness (B*A,)``,
            ``rpn_deltas (B*A, 4)``, ``class_logits (R, C)``, ``box_regression (R, 4 C)`` and
            ``mask_logits (P, C, S, S)``; ``last_samples``: bool masks ``rpn_pos``, ``rpn_neg`` ``(B*A,)``
            and ``roi_pos`` ``(R,)`` over them.
    """

    def __init__(self, terms, weights, normalizers, rpn_pos_weight: float, roi_fg_weight: float) -> None:
        super().__init__()
        self.terms = list(terms)
        self.weights = {t: float(weights[t]) for t in self.terms}
        self.normalizers = build_normalizers({t: normalizers[t] for t in self.terms})
        self.rpn_pos_weight = float(rpn_pos_weight)
        self.roi_fg_weight = float(roi_fg_weight)
        self._rpn_terms: dict = {}
        self._rpn_parts: dict = {}
        self.last_report: LossReport | None = None
        self.last_parts: LossReport | None = None
        self.last_outputs: dict[str, Tensor] = {}
        self.last_samples: dict[str, Tensor] = {}

    def term(self, name: str, elements: Tensor, denom: Mapping[str, Tensor], num_pos: Tensor, anchor: Tensor,
             weights: Tensor | None = None):
        return make_term(name, elements, denom[name], self.normalizers[name].spec, weights=weights,
                         weight=self.weights[name], num_pos=num_pos, anchor=anchor)

    def denominators(self, elements: Mapping[str, Tensor], counts: Mapping[str, Tensor | float], device):
        """``D`` of each term in ``elements`` (term -> its element count) from this rank's shared ``counts``,
        with one all-reduce under DDP."""
        per_term = {"*": counts} | {n: {"num_elements": c} for n, c in elements.items()}
        return denominators({n: self.normalizers[n] for n in elements}, per_term, device=device)

    def finish(self, terms: dict, parts: dict) -> None:
        self.last_report = LossReport(self._rpn_terms | terms)
        self.last_parts = LossReport(self._rpn_parts | parts)
        self._rpn_terms, self._rpn_parts = {}, {}


def _loss(module: nn.Module) -> RCNNLoss:
    loss = module.__dict__.get("_detloss")  # not a submodule: it lives once, on the model
    if loss is None:
        raise RuntimeError(f"{type(module).__name__} has no detloss state; use detloss.integrations.torchvision.attach")
    return loss


class _RPNLoss:
    """``DetlossRPN``: torchvision's RPN with ``compute_loss`` built from detloss terms ``rpn_obj`` and ``rpn_box``."""

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Same contract as torchvision's.

        Args:
            objectness: ``(B*A, 1)`` logits, images then anchors. pred_bbox_deltas: ``(B*A, 4)``.
            labels: per image ``(A,)`` float 1 / 0 / -1 (positive / negative / ignored).
            regression_targets: per image ``(A, 4)`` encoded deltas of the matched GT.

        Returns:
            ``(loss_objectness, loss_rpn_box_reg)`` 0-dim; the terms wait in the shared state for the ROI head.
        """
        state = _loss(self)
        pos_list, neg_list = self.fg_bg_sampler(labels)  # torchvision's own sample (same RNG draws)
        pos, neg = torch.cat(pos_list).bool(), torch.cat(neg_list).bool()
        sampled = pos | neg
        obj = objectness.flatten()
        target = torch.cat(labels)
        reg = torch.cat(regression_targets)
        num_pos, num_samples = pos.sum(), sampled.sum()
        per_image = torch.stack([p.bool().any() for p in pos_list]) if pos_list else pos.new_zeros(0)
        counts = {
            "num_pos": num_pos, "target_sum": num_pos, "num_samples": num_samples,
            "batch_size": float(len(labels)), "images_with_fg": per_image.sum(),
            "num_cells": float(labels[0].shape[0]) if labels else 0.0,
        }
        denom = state.denominators({"rpn_obj": num_samples, "rpn_box": num_pos}, counts, obj.device)
        obj_el = bce_with_logits(obj[sampled], target[sampled], pos_weight=state.rpn_pos_weight)
        box_el = smooth_l1(pred_bbox_deltas[pos], reg[pos], beta=BETA).sum(-1)
        state._rpn_terms = {
            "rpn_obj": state.term("rpn_obj", obj_el, denom, num_pos, obj),
            "rpn_box": state.term("rpn_box", box_el, denom, num_pos, pred_bbox_deltas),
        }
        is_pos = pos[sampled]
        state._rpn_parts = {
            "rpn_obj_pos": state.term("rpn_obj", obj_el[is_pos], denom, num_pos, obj),
            "rpn_obj_neg": state.term("rpn_obj", obj_el[~is_pos], denom, num_pos, obj),
        }
        state.last_outputs = {"objectness": obj, "rpn_deltas": pred_bbox_deltas}
        state.last_samples = {"rpn_pos": pos, "rpn_neg": neg}
        return state._rpn_terms["rpn_obj"].value, state._rpn_terms["rpn_box"].value


class _RoIHeadsLoss:
    """``DetlossRoIHeads``: torchvision's ``RoIHeads`` whose training forward computes ``cls``, ``box`` (and
    ``mask``) with detloss.

    Evaluation (``self.training`` false) is torchvision's own ``forward``.
    """

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if self.has_keypoint():
            raise ValueError("model has a keypoint head; detloss's torchvision adapter covers boxes and masks only")
        from torchvision.models.detection.roi_heads import project_masks_on_boxes

        state = _loss(self)
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        feats = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(feats)
        mask_logits = mask_targets = mask_labels = None
        if self.has_mask():
            pos_idx = [torch.where(lab > 0)[0] for lab in labels]
            mask_boxes = [p[i] for p, i in zip(proposals, pos_idx, strict=True)]
            mask_matched = [m[i] for m, i in zip(matched_idxs, pos_idx, strict=True)]
            mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes)))
            size = mask_logits.shape[-1]
            mask_targets = torch.cat([
                project_masks_on_boxes(t["masks"], b, m, size)
                for t, b, m in zip(targets, mask_boxes, mask_matched, strict=True)
            ])
            mask_labels = torch.cat([t["labels"][m] for t, m in zip(targets, mask_matched, strict=True)])
        terms, parts = self.detloss_terms(class_logits, box_regression, labels, regression_targets,
                                          mask_logits, mask_targets, mask_labels)
        state.finish(terms, parts)
        return [], {KEYS[name]: term.value for name, term in terms.items()}

    def detloss_terms(self, class_logits, box_regression, labels, regression_targets,
                      mask_logits=None, mask_targets=None, mask_labels=None) -> dict:
        """The ROI terms from torchvision's samples.

        Args:
            class_logits: ``(R, C)``, ``C`` classes with 0 = background. box_regression: ``(R, 4 C)``.
            labels: per image ``(R_i,)`` int64 sampled labels (0 = negative); ``R = sum R_i``.
            regression_targets: ``(R, 4)`` or per image ``(R_i, 4)``.
            mask_logits: ``(P, C, S, S)`` for the ``P`` positives in order, mask_targets ``(P, S, S)`` in
                ``[0, 1]``, mask_labels ``(P,)``; ``None`` without a mask head.

        Returns:
            ``({"cls": ..., "box": ...[, "mask": ...]}, {"cls_fg": ..., "cls_bg": ...})`` term records.
        """
        state = _loss(self)
        lab = torch.cat(labels)
        reg = torch.cat(regression_targets) if isinstance(regression_targets, (list, tuple)) else regression_targets
        pos = lab > 0
        num_pos = pos.sum()
        counts = {
            "num_pos": num_pos, "target_sum": num_pos, "num_samples": float(lab.numel()),
            "batch_size": float(len(labels)), "images_with_fg": sum((x > 0).any() for x in labels),
        }
        elements = {"cls": counts["num_samples"], "box": num_pos}  # mask: one element (a pixel mean) per positive
        denom = state.denominators(elements | ({"mask": num_pos} if mask_logits is not None else {}), counts,
                                   class_logits.device)
        cls_w = None if state.roi_fg_weight == 1.0 else torch.where(pos, state.roi_fg_weight, 1.0)
        cls_el = softmax_cross_entropy(class_logits, lab)
        pred = box_regression.reshape(lab.numel(), -1, 4)[pos, lab[pos]]
        box_el = smooth_l1(pred, reg[pos], beta=BETA).sum(-1)
        terms = {
            "cls": state.term("cls", cls_el, denom, num_pos, class_logits, weights=cls_w),
            "box": state.term("box", box_el, denom, num_pos, box_regression),
        }
        if mask_logits is not None:
            picked = mask_logits[torch.arange(mask_labels.numel(), device=mask_logits.device), mask_labels]
            mask_el = bce_with_logits(picked, mask_targets.to(picked.dtype)).mean((-2, -1))
            terms["mask"] = state.term("mask", mask_el, denom, num_pos, mask_logits)
        parts = {
            f"cls_{kind}": state.term("cls", cls_el[rows], denom, num_pos, class_logits,
                                      weights=None if cls_w is None else cls_w[rows])
            for kind, rows in (("fg", pos), ("bg", ~pos))
        }
        state.last_outputs = state.last_outputs | {"class_logits": class_logits, "box_regression": box_regression}
        if mask_logits is not None:
            state.last_outputs["mask_logits"] = mask_logits
        state.last_samples = state.last_samples | {"roi_pos": pos}
        return terms, parts


def _classes() -> tuple[type, type]:
    """``(DetlossRPN, DetlossRoIHeads)``, made on first use as subclasses of torchvision's heads; they are
    module attributes, so pickling and ``copy.deepcopy`` find them."""
    if "DetlossRPN" not in globals():
        from torchvision.models.detection.roi_heads import RoIHeads
        from torchvision.models.detection.rpn import RegionProposalNetwork

        for name, mixin, base in (("DetlossRPN", _RPNLoss, RegionProposalNetwork),
                                  ("DetlossRoIHeads", _RoIHeadsLoss, RoIHeads)):
            globals()[name] = type(name, (mixin, base), {"__module__": __name__, "__doc__": mixin.__doc__})
    return globals()["DetlossRPN"], globals()["DetlossRoIHeads"]


def __getattr__(name: str):
    if name in ("DetlossRPN", "DetlossRoIHeads"):
        return dict(zip(("DetlossRPN", "DetlossRoIHeads"), _classes(), strict=True))[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_names(arg: str, given: Mapping, terms: list[str]) -> None:
    unknown = sorted(set(given) - set(terms))
    if unknown:
        raise ValueError(f"{arg} has unknown terms {unknown}; this model's terms are {terms}")


def _positive(arg: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{arg} must be a finite number > 0, got {value!r}")
    return float(value)


def attach(
    model: nn.Module,
    *,
    preset: str | None = None,
    weights: Mapping[str, float] | None = None,
    normalizers: Mapping[str, str] | None = None,
    rpn_pos_weight: float = 1.0,
    roi_fg_weight: float = 1.0,
) -> RCNNLoss:
    """Switch a built torchvision ``FasterRCNN`` / ``MaskRCNN`` to detloss losses, in place.

    The RPN and ROI heads change class (:class:`DetlossRPN`, :class:`DetlossRoIHeads`), keeping their
    submodules, weights and settings; the returned :class:`RCNNLoss` is registered as ``model.detloss``
    (its normalizers' state is in ``model.state_dict()``) and holds ``last_report`` after each training
    forward. The loss dict keeps torchvision's keys (:data:`KEYS`).

    Args:
        model: a ``GeneralizedRCNN`` with torchvision's ``RegionProposalNetwork`` and ``RoIHeads``
            (no keypoint head); a DDP-wrapped model is unwrapped.
        preset: ``None`` (detloss's normalizers, :data:`DEFAULT_NORMALIZERS`) or ``"torchvision"``
            (torchvision's own numbers, :data:`PRESETS`).
        weights: term -> gain (default 1), terms ``rpn_obj, rpn_box, cls, box`` [, ``mask``].
        normalizers: term -> normalizer name (:data:`detloss.core.normalize.NORMALIZERS`), over the preset.
        rpn_pos_weight: weight of the positive part of the RPN objectness BCE (``RPNCriterion.pos_weight``).
        roi_fg_weight: weight of foreground ROIs' classification elements (``ROICriterion.fg_weight``).

    Raises:
        ValueError naming the argument: wrong model type, unknown preset, term or normalizer,
        non-positive or non-finite weights.
    """
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.roi_heads import RoIHeads
    from torchvision.models.detection.rpn import RegionProposalNetwork

    model = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    if not isinstance(model, GeneralizedRCNN) or not isinstance(getattr(model, "rpn", None), RegionProposalNetwork) \
            or not isinstance(getattr(model, "roi_heads", None), RoIHeads):
        raise ValueError(
            f"model must be a torchvision GeneralizedRCNN (FasterRCNN, MaskRCNN) with RegionProposalNetwork and "
            f"RoIHeads; got {type(model).__name__}"
        )
    rpn_cls, roi_cls = _classes()
    for name, part, base, ours in (("rpn", model.rpn, RegionProposalNetwork, rpn_cls),
                                   ("roi_heads", model.roi_heads, RoIHeads, roi_cls)):
        if type(part) not in (base, ours):  # a class swap would drop the subclass's own overrides
            raise ValueError(f"model.{name} is a {type(part).__name__}; attach replaces torchvision's own "
                             f"{base.__name__} only")
    if model.roi_heads.has_keypoint():
        raise ValueError("model has a keypoint head; attach covers Faster R-CNN and Mask R-CNN only")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    terms = ["rpn_obj", "rpn_box", "cls", "box"] + (["mask"] if model.roi_heads.has_mask() else [])
    weights, normalizers = dict(weights or {}), dict(normalizers or {})
    _check_names("weights", weights, terms)
    _check_names("normalizers", normalizers, terms)
    gains = {t: 1.0 for t in terms} | {t: _positive(f"weights[{t!r}]", w) for t, w in weights.items()}
    specs = {t: PRESETS[preset][t] for t in terms} | normalizers
    pos_weights = _positive("rpn_pos_weight", rpn_pos_weight), _positive("roi_fg_weight", roi_fg_weight)
    try:
        loss = RCNNLoss(terms, gains, specs, *pos_weights)
    except ValueError as err:
        raise ValueError(f"normalizers: {err}") from None
    model.detloss = loss
    model.rpn.__class__, model.roi_heads.__class__ = rpn_cls, roi_cls
    model.rpn.__dict__["_detloss"] = loss
    model.roi_heads.__dict__["_detloss"] = loss
    return loss
