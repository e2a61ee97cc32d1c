"""The one-stage kind: :class:`TinyDetector` trained by :class:`DenseCriterion` (boxes, classes, polygons)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detloss.assign.anchors import anchors_in_boxes, make_anchors
from detloss.criteria.dense import DenseCriterion
from detloss.evaluate import decode_dense
from detloss.ops.hull import convex_hull
from detloss.models import TinyDetector
from detloss.weighting.schedule import WarmupSchedule
from detloss.train.config import BackgroundConfig, TrainConfig
from detloss.train.tasks.base import Autocast, StepOutputs, Task


def background_schedule(b: BackgroundConfig | None, default_burn_in: float = 0.0) -> WarmupSchedule | None:
    """The ``bg`` term's ``lambda_bg`` schedule; ``burn_in: null`` takes ``default_burn_in``."""
    if b is None:
        return None
    burn_in = default_burn_in if b.burn_in is None else b.burn_in
    return WarmupSchedule(b.max_value, burn_in, b.warmup, b.mode)


class DenseTask(Task):
    kind = "dense"

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        self.cfg = cfg.loss
        self.num_classes = num_classes
        loss = cfg.loss
        self.model = TinyDetector(
            num_classes, loss.reg_max, loss.num_vertices, cfg.model.width, cfg.model.p2, objectness=loss.objectness
        )
        self.criterion = DenseCriterion.from_config(cfg.loss, num_classes, self.model.strides)
        schedule = background_schedule(cfg.loss.background)
        self.schedules = {"bg": schedule} if schedule is not None else {}
        self.has_polygons = cfg.loss.num_vertices > 0

    def loss(
        self,
        runner: nn.Module,
        images: Tensor,
        targets: dict[str, Tensor],
        image_ids,
        autocast: Autocast,
        weights: dict[str, float] | None = None,
    ) -> StepOutputs:
        with autocast():
            feats = runner(images)
        feats = [f.float() for f in feats]
        ignore = self.ignored_anchors(feats, images, targets)
        return StepOutputs(self.criterion(feats, targets, weights=weights, ignore=ignore), feats, feats)

    def ignored_anchors(self, feats: list[Tensor], images: Tensor, targets: dict[str, Tensor]) -> Tensor | None:
        """``(B, A)``: the anchors inside the batch's ignore regions (``targets["ignore_bboxes"]``, see
        :func:`~detloss.data.collate.collate`), or ``None`` when the batch has none."""
        boxes = targets.get("ignore_bboxes")
        if boxes is None or boxes.shape[0] == 0:
            return None
        h, w = images.shape[-2:]
        points, _ = make_anchors([tuple(f.shape[-2:]) for f in feats], self.criterion.strides, device=images.device)
        xy, wh = boxes[:, :2] * boxes.new_tensor([w, h]), boxes[:, 2:] * boxes.new_tensor([w, h])
        return anchors_in_boxes(points, torch.cat((xy - wh / 2, xy + wh / 2), 1), targets["ignore_batch_idx"], len(images))

    def measure(self, doctor, step: int, out: StepOutputs, targets: dict[str, Tensor]) -> None:
        doctor.measure(step, out.report, out.outputs, self.criterion, targets)

    def predict(self, model: nn.Module, images: Tensor, conf: float, iou: float, max_det: int) -> list[dict]:
        """A predicted polygon is the convex hull of its K vertices: MGIoU trains the vertex set's extent,
        not an order."""
        feats = model(images)
        preds = decode_dense(
            [f.float() for f in feats],
            model.strides,
            self.num_classes,
            self.cfg.reg_max,
            num_vertices=self.cfg.num_vertices,
            conf=conf,
            iou=iou,
            max_det=max_det,
            objectness=self.cfg.objectness,
        )
        for p in preds:
            if "polygons" in p:
                p["polygons"], p["polygon_valid"] = convex_hull(p["polygons"])
        return preds
