"""RPN and ROI criteria as one: one report with prefixed terms (``rpn_obj``, ``roi_cls`` ...), one set of
base gains, named head outputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from torch import Tensor, nn

from detloss.core.normalize import build_normalizers
from detloss.core.report import LossReport
from detloss.criteria.roi import ROICriterion
from detloss.criteria.rpn import RPNCriterion
from detloss.criteria.targets import Targets

__all__ = ["TwoStageCriterion", "TwoStageOutputs"]


@dataclass(frozen=True)
class TwoStageOutputs:
    """What a two-stage detector's heads predicted for one batch of ``B`` images (``A`` anchors per image,
    ``R`` ROIs over the batch).

    Attributes:
        objectness: ``(B, A)`` RPN logits.
        rpn_deltas: ``(B, A, 4)`` RPN ``(dx, dy, dw, dh)``.
        anchors: ``(A, 4)`` pixel ``xyxy``, the same for every image.
        cls_logits: ``(R, C + 1)`` ROI class logits, background last.
        box_deltas: ``(R, C, 4)`` or ``(R, 1, 4)`` ROI box deltas.
        rois: ``(R, 4)`` pixel ``xyxy`` the ROI predictions were pooled from.
        roi_image: ``(R,)`` int image of each ROI.
        mask_logits: ``(R, C, S, S)`` or ``(R, 1, S, S)``, or ``None`` without a mask term.
    """

    objectness: Tensor
    rpn_deltas: Tensor
    anchors: Tensor
    cls_logits: Tensor
    box_deltas: Tensor
    rois: Tensor
    roi_image: Tensor
    mask_logits: Tensor | None = None


class TwoStageCriterion(nn.Module):
    """``rpn_obj``, ``rpn_box``, ``roi_cls``, ``roi_box`` [, ``roi_mask``] from an :class:`RPNCriterion` and an
    :class:`ROICriterion`.

    Args:
        rpn, roi: the two criteria (their own options, normalizers and base gains).
        weights: prefixed term -> gain (e.g. ``{"roi_cls": 2.0}``), replacing the parts' base gains.
        normalizers: prefixed term -> normalizer name, replacing the parts' normalizers.

    :attr:`weights` holds the base gains under the prefixed names; each call's gains are those overridden
    by ``forward(..., weights=...)`` and handed to the parts for that call only.

    Example:
        >>> crit = TwoStageCriterion(RPNCriterion(sample_num=4), ROICriterion(2, with_mask=False, sample_num=4),
        ...                          weights={"roi_cls": 2.0})
        >>> crit.terms, crit.weights["roi_cls"], crit.roi.weights["cls"]
        (['rpn_obj', 'rpn_box', 'roi_cls', 'roi_box'], 2.0, 1.0)
    """

    def __init__(
        self,
        rpn: RPNCriterion,
        roi: ROICriterion,
        *,
        weights: Mapping[str, float] | None = None,
        normalizers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.rpn, self.roi = rpn, roi
        self.parts = {"rpn": rpn, "roi": roi}
        self.terms = [f"{p}_{t}" for p, crit in self.parts.items() for t in crit.terms]
        for what, given in (("weights", weights or {}), ("normalizers", normalizers or {})):
            self._check_terms(what, given)
        self.weights = {f"{p}_{t}": w for p, crit in self.parts.items() for t, w in crit.weights.items()}
        self.weights |= dict(weights or {})
        for name, spec in (normalizers or {}).items():
            prefix, term = name.split("_", 1)
            self.parts[prefix].normalizers[term] = build_normalizers({term: spec})[term]

    @classmethod
    def from_config(cls, cfg: object, num_classes: int, *, seed: int = 0) -> TwoStageCriterion:
        """From a config with ``rpn`` and ``roi`` sections (attributes or keys) whose fields are the
        options of :class:`RPNCriterion` and :class:`ROICriterion`; the ROI sampler is seeded ``seed + 1``."""
        rpn_cfg, roi_cfg = (cfg[k] if isinstance(cfg, Mapping) else getattr(cfg, k) for k in ("rpn", "roi"))
        return cls(
            RPNCriterion.from_config(rpn_cfg, seed=seed), ROICriterion.from_config(roi_cfg, num_classes, seed=seed + 1)
        )

    def _check_terms(self, what: str, given: Mapping[str, object]) -> None:
        unknown = set(given) - set(self.terms)
        if unknown:
            raise ValueError(f"{what} has unknown terms {sorted(unknown)}; this criterion's terms are {self.terms}")

    def set_epoch(self, epoch: float) -> None:
        """Both samplers draw anew with ``floor(epoch)``."""
        self.rpn.set_epoch(epoch)
        self.roi.set_epoch(epoch)

    def forward(
        self,
        outputs: TwoStageOutputs | Mapping[str, Tensor | None],
        targets: Targets | Sequence[Mapping[str, Tensor]],
        image_ids: Tensor | Sequence[int] | None = None,
        *,
        weights: Mapping[str, float] | None = None,
    ) -> LossReport:
        """The five (four without masks) terms of one batch.

        Args:
            outputs: a :class:`TwoStageOutputs`, or a dict with its field names.
            targets: a :class:`~detloss.criteria.targets.Targets`, or per image ``{"boxes", "labels"}``
                [+ polygons or masks] in pixels (as :class:`ROICriterion` takes); the RPN reads the boxes.
            image_ids: optional ``(B,)`` global image ids for both samplers.
            weights: this call's gains, prefixed term -> gain, overriding the base :attr:`weights`.
        """
        if isinstance(outputs, Mapping):
            names = {f.name for f in fields(TwoStageOutputs)}
            unknown = set(outputs) - names
            if unknown:
                raise ValueError(f"outputs has unknown keys {sorted(unknown)}; expected {sorted(names)}")
            outputs = TwoStageOutputs(**outputs)
        if weights is not None:
            self._check_terms("weights", weights)
        gains = self.weights | dict(weights or {})
        if isinstance(targets, Targets):
            targets = targets.validate(num_classes=self.roi.num_classes).per_image()
        if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
            raise ValueError("targets must be a Targets or a list with one dict per image")
        gt_boxes = [t["boxes"] if isinstance(t, Mapping) and "boxes" in t else t for t in targets]
        o = outputs
        rpn = self.rpn(
            o.objectness, o.rpn_deltas, o.anchors, gt_boxes, image_ids, weights=self._part_gains("rpn", gains)
        )
        roi = self.roi(
            o.cls_logits, o.box_deltas, o.mask_logits, o.rois, o.roi_image, targets, image_ids,
            weights=self._part_gains("roi", gains),
        )  # fmt: skip
        terms = {f"rpn_{k}": v for k, v in rpn.items()} | {f"roi_{k}": v for k, v in roi.items()}
        return LossReport(terms)

    def _part_gains(self, prefix: str, gains: Mapping[str, float]) -> dict[str, float]:
        return {t: gains[f"{prefix}_{t}"] for t in self.parts[prefix].terms}
