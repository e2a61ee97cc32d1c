"""The grid kind: report 003's :class:`TinyGrid` trained by :class:`MultigridCriterion`."""

from __future__ import annotations

from torch import Tensor, nn

from detloss.criteria.multigrid import MultigridCriterion
from detloss.models import TinyGrid, decode_grid, grid_targets
from detloss.train.config import TrainConfig
from detloss.train.tasks.base import Autocast, StepOutputs, Task, per_image

#: Per-image sums: train and validation losses comparable (report 003's option 1).
GRID_NORMALIZERS = {"loc": "batch_size", "obj": "batch_size", "cls": "batch_size"}


class GridTask(Task):
    kind = "grid"

    def __init__(self, cfg: TrainConfig, num_classes: int) -> None:
        g = cfg.grid
        self.cls_loss, self.ignore_iou = g.cls_loss, g.ignore_iou
        self.model = TinyGrid(num_classes, width=cfg.model.width, stride=cfg.model.stride)
        self.criterion = MultigridCriterion(
            num_classes,
            g.weights,
            GRID_NORMALIZERS | g.normalizers,
            loc_loss=g.loc_loss,
            cls_loss=g.cls_loss,
            obj_pos_weight=g.obj_pos_weight,
        )

    def loss(
        self, runner: nn.Module, images: Tensor, targets: dict[str, Tensor], image_ids, autocast: Autocast
    ) -> StepOutputs:
        hw = tuple(images.shape[-2:])
        gts = per_image(targets, images.shape[0], hw)
        with autocast():
            out = runner(images)
        out = {k: v.float() for k, v in out.items()}
        grid = grid_targets(
            [g["boxes"] for g in gts], [g["labels"] for g in gts], tuple(out["obj"].shape[1:]),
            self.model.stride, ignore_iou=self.ignore_iou,
        )  # fmt: skip
        report = self.criterion(out, grid)
        return StepOutputs(report, [out["loc"], out["obj"], out["cls"]])

    def predict(self, model: nn.Module, images: Tensor, conf: float, iou: float, max_det: int) -> list[dict]:
        out = model(images)
        return decode_grid(
            out, self.model.stride, conf, iou, max_det, cls_loss=self.cls_loss, image_hw=tuple(images.shape[-2:])
        )
