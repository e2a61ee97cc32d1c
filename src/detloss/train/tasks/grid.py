"""The grid kind: :class:`TinyGrid` trained by :class:`MultigridCriterion` (which encodes the cells itself)."""

from __future__ import annotations

from torch import Tensor, nn

from detloss.criteria.multigrid import MultigridCriterion
from detloss.criteria.targets import Targets
from detloss.models import TinyGrid, decode_grid
from detloss.train.config import TrainConfig
from detloss.train.tasks.base import Autocast, StepOutputs, Task


class GridTask(Task):
    kind = "grid"

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        self.cls_loss = cfg.grid.cls_loss
        self.model = TinyGrid(num_classes, width=cfg.model.width, stride=cfg.model.stride)
        self.criterion = MultigridCriterion.from_config(cfg.grid, num_classes, cfg.model.stride)

    def loss(
        self,
        runner: nn.Module,
        images: Tensor,
        targets: dict[str, Tensor],
        image_ids,
        autocast: Autocast,
        weights: dict[str, float] | None = None,
    ) -> StepOutputs:
        gt = Targets.from_dict(targets, images.shape[0], tuple(images.shape[-2:]))  # the real image size
        with autocast():
            out = runner(images)
        out = {k: v.float() for k, v in out.items()}
        report = self.criterion(out, gt, weights=weights)
        return StepOutputs(report, [out["loc"], out["obj"], out["cls"]])

    def predict(self, model: nn.Module, images: Tensor, conf: float, iou: float, max_det: int) -> list[dict]:
        out = model(images)
        return decode_grid(
            out, self.model.stride, conf, iou, max_det, cls_loss=self.cls_loss, image_hw=tuple(images.shape[-2:])
        )
