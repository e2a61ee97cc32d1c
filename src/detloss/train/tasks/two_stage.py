"""The two-stage kind: :class:`TinyTwoStage` (RPN, box and mask heads) trained by :class:`TwoStageCriterion`."""

from __future__ import annotations

from torch import Tensor, nn

from detloss.criteria.targets import Targets
from detloss.criteria.two_stage import TwoStageCriterion, TwoStageOutputs
from detloss.models import TinyTwoStage
from detloss.train.config import TrainConfig
from detloss.train.tasks.base import Autocast, StepOutputs, Task


class TwoStageTask(Task):
    """One step: backbone + RPN (``runner``), the RPN's proposals plus the GT boxes (no gradient), the ROI
    criterion's assignment and sampling, then the box head on the sampled ROIs and the mask head on their
    positives only (the mask term reads nothing else), and the five terms."""

    kind = "two_stage"

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        m = cfg.model
        self.model = TinyTwoStage(
            num_classes,
            width=m.width,
            mask_size=cfg.roi.mask_size,
            proposals_train=m.proposals_train,
            proposals_test=m.proposals_test,
        )
        self.criterion = TwoStageCriterion.from_config(cfg, num_classes, seed=cfg.seed)

    def loss(
        self,
        runner: nn.Module,
        images: Tensor,
        targets: dict[str, Tensor],
        image_ids,
        autocast: Autocast,
        weights: dict[str, float] | None = None,
    ) -> StepOutputs:
        model: TinyTwoStage = self.model
        hw = tuple(images.shape[-2:])
        gts = Targets.from_dict(targets, images.shape[0], hw).per_image()
        with autocast():
            out = runner(images)
        gt_boxes = [g["boxes"] for g in gts]
        rois, roi_image = model.proposals(out, hw, gt_boxes=gt_boxes)
        roi = self.criterion.roi
        sample = roi.assign(rois, roi_image, gts, image_ids)
        rois, roi_image = rois[sample.sampled], roi_image[sample.sampled]
        # the sampled set samples to itself, so the criterion's own assignment keeps it whole
        positives = sample.pos[sample.sampled].nonzero().squeeze(1) if roi.with_mask else None
        features = out["features"]
        with autocast():
            if roi.with_mask:
                cls_logits, box_deltas, mask_logits = model.roi_heads(features, rois, roi_image, positives)
            else:
                (cls_logits, box_deltas), mask_logits = model.box_head(features, rois, roi_image), None
        objectness, rpn_deltas = out["objectness"].float(), out["rpn_deltas"].float()
        cls_logits, box_deltas = cls_logits.float(), box_deltas.float()
        mask_logits = mask_logits.float() if mask_logits is not None else None
        anchors = model.anchors(hw, images.device)
        outputs = TwoStageOutputs(
            objectness, rpn_deltas, anchors, cls_logits, box_deltas, rois, roi_image, mask_logits=mask_logits
        )
        report = self.criterion(outputs, gts, image_ids, weights=weights)
        heads = [t for t in (objectness, rpn_deltas, cls_logits, box_deltas, mask_logits) if t is not None]
        return StepOutputs(report, heads)

    def predict(self, model: nn.Module, images: Tensor, conf: float, iou: float, max_det: int) -> list[dict]:
        return model.predict(images, conf=conf, iou=iou, max_det=max_det)
