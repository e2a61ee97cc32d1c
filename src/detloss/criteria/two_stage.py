"""RPN and ROI criteria as one: one report with prefixed terms, one weights dict for balancers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from detloss.criteria.roi import ROICriterion
from detloss.criteria.rpn import RPNCriterion
from detloss.core.report import LossReport

__all__ = ["TwoStageCriterion"]


class TwoStageCriterion(nn.Module):
    """``rpn_obj``, ``rpn_box``, ``roi_cls``, ``roi_box`` [, ``roi_mask``] from an :class:`RPNCriterion` and an
    :class:`ROICriterion`.

    ``weights`` maps the prefixed names to gains and is what schedules and balancers change; it is
    copied into the two criteria before every forward, so the report records the weights used.
    Each part keeps its own normalizers (``criterion.rpn.normalizers``, ``criterion.roi.normalizers``).
    """

    def __init__(self, rpn: RPNCriterion, roi: ROICriterion) -> None:
        super().__init__()
        self.rpn, self.roi = rpn, roi
        self.parts = {"rpn": rpn, "roi": roi}
        self.terms = [f"{p}_{t}" for p, crit in self.parts.items() for t in crit.terms]
        self.weights = {f"{p}_{t}": w for p, crit in self.parts.items() for t, w in crit.weights.items()}

    def set_epoch(self, epoch: float) -> None:
        """Both samplers draw anew with ``floor(epoch)``."""
        self.rpn.set_epoch(epoch)
        self.roi.set_epoch(epoch)

    def forward(
        self,
        rpn_inputs: Sequence[Tensor | Sequence[Tensor]],
        roi_inputs: Sequence[Tensor | Sequence[Mapping[str, Tensor]] | None],
        image_ids: Tensor | Sequence[int] | None = None,
    ) -> LossReport:
        """``rpn_inputs``: the positional arguments of :meth:`RPNCriterion.forward` ``(objectness, box_deltas,
        anchors, gt_boxes)``; ``roi_inputs``: those of :meth:`ROICriterion.forward` ``(cls_logits, box_deltas,
        mask_logits, rois, roi_image, targets)``; ``image_ids`` goes to both."""
        for prefix, crit in self.parts.items():
            for t in crit.terms:
                crit.weights[t] = self.weights[f"{prefix}_{t}"]
        rpn = self.rpn(*rpn_inputs, image_ids=image_ids)
        roi = self.roi(*roi_inputs, image_ids=image_ids)
        terms = {f"rpn_{k}": v for k, v in rpn.items()} | {f"roi_{k}": v for k, v in roi.items()}
        return LossReport(terms)
