"""Region proposal network loss: max-IoU assignment, per-image sampling, objectness and box terms.

Every denominator is a named normalizer, reduced across ranks and recorded in the report, so a
too-small or too-large divisor (a classic cause of a two-stage detector's detections collapsing to
zero) is visible and changeable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from detloss.core.checks import check_tensor
from detloss.ops.box_coder import decode_deltas, encode_deltas
from detloss.criteria.sampled import SampledCriterion
from detloss.criteria.target_checks import check_gt_boxes
from detloss.criteria.targets import Targets
from detloss.criteria.terms import config_options
from detloss.functional.classification import bce_with_logits
from detloss.functional.iou import iou_loss
from detloss.functional.regression import smooth_l1
from detloss.core.normalize import denominators
from detloss.core.report import LossReport

__all__ = ["DEFAULT_NORMALIZERS", "DEFAULT_WEIGHTS", "RPNCriterion", "RPNTargets"]

TERMS = ("obj", "box")
DEFAULT_WEIGHTS = {"obj": 1.0, "box": 1.0}
#: obj: sampled anchors (mmdet's ``avg_factor``). box: positives, where mmdet and detectron2 divide by
#: the sampled anchors as for obj (``num_samples``).
DEFAULT_NORMALIZERS = {"obj": "num_samples", "box": "num_pos"}
BOX_LOSSES = ("smooth_l1", "l1", "giou")


@dataclass(frozen=True)
class RPNTargets:
    """What :class:`RPNCriterion` trains towards. ``P`` = sampled positives, in ``nonzero(pos)`` order.

    Attributes:
        pos, neg: ``(B, A)`` bool sampled positive / negative anchors.
        gt_index: ``(B, A)`` assignment before sampling (GT index in its image, ``-1`` neg, ``-2`` ignored).
        max_iou: ``(B, A)`` best IoU of each anchor.
        image, anchor: ``(P,)`` where each sampled positive is.
        boxes: ``(P, 4)`` pixel ``xyxy`` GT box of each sampled positive.
    """

    pos: Tensor
    neg: Tensor
    gt_index: Tensor
    max_iou: Tensor
    image: Tensor
    anchor: Tensor
    boxes: Tensor

    @property
    def sampled(self) -> Tensor:
        return self.pos | self.neg


class RPNCriterion(SampledCriterion):
    """RPN loss over anchors shared by a batch of images, returning a :class:`LossReport` (``obj``, ``box``).

    Per image, anchors are assigned by :class:`MaxIoUAssigner` ``(pos_iou, neg_iou, min_pos_iou)`` and
    ``sample_num`` of them are sampled by :class:`RandomSampler` (at most ``pos_fraction`` positive).

    * ``obj``: BCE of the objectness logit of every sampled anchor against 1 (positive) or 0
      (negative), the positive term multiplied by ``pos_weight`` (mmdet's ``pos_weight`` of the RPN head).
    * ``box``: on sampled positives, smooth-L1 (``beta``) or L1 between the predicted deltas and the
      encoded GT (:func:`encode_deltas`, ``(dx, dy, dw, dh)`` with ``box_stds``), summed over the 4
      coordinates — one element per positive; or ``box_loss="giou"``: ``1 - GIoU`` of the decoded
      box (:func:`decode_deltas`) with its GT.

    Each term is ``weight * sum / D`` with ``D`` a named normalizer (:data:`DEFAULT_NORMALIZERS`:
    ``num_samples`` for ``obj``, mmdet's ``avg_factor``; ``num_pos`` for ``box``, where mmdet and detectron2
    use ``num_samples`` too). Counts provided:
    ``num_pos`` and ``target_sum`` (sampled positives), ``num_samples``, ``batch_size``,
    ``images_with_fg``, ``num_cells`` (anchors per image) and each term's ``num_elements``.

    **Sampling determinism**: as :class:`~detloss.criteria.sampled.SampledCriterion`, keys hashed from
    ``(seed, epoch, image key, anchor index)``. Without ``image_ids``, images with identical GT (e.g. all
    empty ones) share one sample pattern within an epoch.

    Args:
        weights: term gains, e.g. ``{"obj": 1.0, "box": 1.0}``.
        normalizers: term -> normalizer name (:data:`detloss.core.normalize.NORMALIZERS`).
        pos_weight: weight of the positive part of the objectness BCE.
        box_loss: ``"smooth_l1"``, ``"l1"`` or ``"giou"``.
        beta: smooth-L1 transition (mmdet's RPN: ``1/9``).
        box_stds: delta normalisation (RPN: ones).
        sample_num, pos_fraction, neg_pos_ub: sampler settings per image.
        pos_iou, neg_iou, min_pos_iou, allow_low_quality: assigner settings.
        seed: sampling seed.

    Example:
        >>> crit = RPNCriterion(sample_num=4)
        >>> anchors = torch.tensor([[0.0, 0.0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]])
        >>> report = crit(torch.zeros(1, 4), torch.zeros(1, 4, 4), anchors, [torch.tensor([[0.0, 0, 8, 9]])])
        >>> list(report), round(float(report["obj"].value), 4)
        (['obj', 'box'], 0.6931)
    """

    def __init__(
        self,
        *,
        weights: Mapping[str, float] | None = None,
        normalizers: Mapping[str, str] | None = None,
        pos_weight: float = 1.0,
        box_loss: str = "smooth_l1",
        beta: float = 1.0 / 9.0,
        box_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        sample_num: int = 256,
        pos_fraction: float = 0.5,
        neg_pos_ub: float = -1,
        pos_iou: float = 0.7,
        neg_iou: float = 0.3,
        min_pos_iou: float = 0.3,
        allow_low_quality: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss must be one of {BOX_LOSSES}, got {box_loss!r}")
        self.setup_sampling(
            beta=beta, box_stds=box_stds, sample_num=sample_num, pos_fraction=pos_fraction, neg_pos_ub=neg_pos_ub,
            pos_iou=pos_iou, neg_iou=neg_iou, min_pos_iou=min_pos_iou, allow_low_quality=allow_low_quality, seed=seed,
        )  # fmt: skip
        self.setup_terms(TERMS, DEFAULT_WEIGHTS, DEFAULT_NORMALIZERS, weights, normalizers)
        self.pos_weight = float(pos_weight)
        self.box_loss = box_loss

    @classmethod
    def from_config(cls, cfg: object, **overrides: object) -> RPNCriterion:
        """From a config section whose fields are this class's options (the harness's ``rpn`` section; a
        pydantic model, a dataclass or a dict); ``overrides`` (e.g. ``seed``) replace fields."""
        return cls(**(config_options(cfg) | overrides))

    def forward(
        self,
        objectness: Tensor,
        box_deltas: Tensor,
        anchors: Tensor,
        gt_boxes: Targets | Sequence[Tensor],
        image_ids: Sequence[int] | Tensor | None = None,
        *,
        weights: Mapping[str, float] | None = None,
    ) -> LossReport:
        """Loss of one batch.

        Args:
            objectness: ``(B, A)`` logits (all levels concatenated).
            box_deltas: ``(B, A, 4)`` predicted ``(dx, dy, dw, dh)``.
            anchors: ``(A, 4)`` pixel ``xyxy``, the same for every image.
            gt_boxes: a :class:`~detloss.criteria.targets.Targets` of the ``B`` images (its boxes are
                read), or per image ``(n_i, 4)`` pixel ``xyxy`` (``n_i`` may be 0); finite with
                ``x1 <= x2`` and ``y1 <= y2``, else ``ValueError`` naming ``gt_boxes[i][j]``.
            image_ids: optional ``(B,)`` global image ids for sampling (class docstring).
            weights: this call's gains, term -> gain, overriding the base :attr:`weights`.
        """
        gains = self.call_weights(weights)
        check_tensor("objectness", objectness, ("B", "A"), floating=True)
        b, a = objectness.shape
        check_tensor("box_deltas", box_deltas, (b, a, 4), floating=True)
        if isinstance(gt_boxes, Targets):
            gt_boxes = [g["boxes"] for g in gt_boxes.validate(batch_size=b).per_image()]
        if isinstance(gt_boxes, Tensor) or len(gt_boxes) != b:
            raise ValueError(f"gt_boxes must be a list of {b} tensors (n_i, 4), one per image")
        t = self.assign(anchors, gt_boxes, image_ids)
        sampled = t.sampled
        num_pos = t.pos.sum()
        num_samples = sampled.sum()
        shared = self.sampled_counts(num_pos, num_samples, b, t.pos.any(1).sum(), a)
        counts = {"*": shared, "obj": {"num_elements": num_samples}, "box": {"num_elements": num_pos}}
        denom = denominators(self.normalizers, counts, device=objectness.device)

        obj_el = bce_with_logits(objectness[sampled], t.pos[sampled].float(), pos_weight=self.pos_weight)
        pred = box_deltas[t.image, t.anchor]  # (P, 4)
        ref = anchors[t.anchor].to(pred.dtype)
        if self.box_loss == "giou":
            box_el = iou_loss(decode_deltas(ref, pred, stds=self.box_stds), t.boxes, kind="giou")
        else:
            target = encode_deltas(ref, t.boxes.to(ref.dtype), stds=self.box_stds)
            beta = self.beta if self.box_loss == "smooth_l1" else 0.0
            box_el = smooth_l1(pred, target, beta=beta).sum(-1)
        terms = {
            "obj": self._term("obj", obj_el, denom, gains=gains, num_pos=num_pos, anchor=objectness),
            "box": self._term("box", box_el, denom, gains=gains, num_pos=num_pos, anchor=box_deltas),
        }
        return LossReport(terms)

    @torch.no_grad()
    def assign(
        self, anchors: Tensor, gt_boxes: Sequence[Tensor], image_ids: Sequence[int] | Tensor | None = None
    ) -> RPNTargets:
        """Assignment and sampling of ``anchors`` ``(A, 4)`` for images with ``gt_boxes`` (for inspection and tests)."""
        check_tensor("anchors", anchors, ("A", 4), floating=True)
        if isinstance(gt_boxes, Tensor):
            raise ValueError("gt_boxes must be a list with one (n_i, 4) tensor per image")
        b, a, device = len(gt_boxes), anchors.shape[0], anchors.device
        check_gt_boxes(gt_boxes, device)
        gt = [g.to(device) for g in gt_boxes]
        assigned = self.assigner(anchors, gt)
        keys = self.sample_keys(gt, image_ids, torch.arange(a, device=device).expand(b, a))
        sample = self.sampler(assigned.gt_index, keys=keys)
        image, anchor = torch.nonzero(sample.pos, as_tuple=True)
        counts = torch.tensor([g.shape[0] for g in gt], device=device)
        offsets = counts.cumsum(0) - counts
        flat = torch.cat(gt).float() if b else anchors.new_zeros(0, 4)
        boxes = flat[offsets[image] + assigned.gt_index[image, anchor]]
        return RPNTargets(
            pos=sample.pos,
            neg=sample.neg,
            gt_index=assigned.gt_index,
            max_iou=assigned.max_iou,
            image=image,
            anchor=anchor,
            boxes=boxes,
        )
