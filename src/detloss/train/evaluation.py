"""Validation: decode, NMS, COCO-style AP for boxes and polygons, detections per image."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from detloss.data.collate import collate
from detloss.evaluate import box_map, polygon_map
from detloss.evaluate.errors import box_errors
from detloss.evaluate.tta import tta_predict
from detloss.train.config import TrainConfig
from detloss.train.tasks import Task


@torch.no_grad()
def predict(task: Task, model: nn.Module, images: torch.Tensor, cfg: TrainConfig, conf: float = 0.001) -> list[dict]:
    """Per-image prediction dicts in pixels from ``task``'s decoder, with the NMS settings of ``cfg.eval``
    (and its test-time augmentation, ``eval.tta``)."""
    model.eval()

    def run(x: torch.Tensor) -> list[dict]:
        return task.predict(model, x, conf, cfg.eval.nms_iou, cfg.eval.max_det)

    if cfg.eval.tta is None:
        return run(images)
    return tta_predict(run, images, cfg.eval.tta, cfg.eval.nms_iou, cfg.eval.max_det)


def ground_truth(sample: dict) -> dict:
    """The evaluated ground truth; ``ignore`` (VOC ``difficult``) when the reader gives it."""
    gt = {
        "boxes": sample["boxes"],
        "labels": sample["labels"],
        "polygons": sample["polygons"],
        "polygon_counts": sample["polygon_counts"],
    }
    if "ignore" in sample:
        gt["ignore"] = sample["ignore"]
    return gt


def evaluate(
    task: Task,
    model: nn.Module,
    dataset,
    cfg: TrainConfig,
    num_classes: int,
    device: torch.device,
    errors: bool = False,
) -> dict[str, float]:
    """Box AP (and polygon AP when ``task`` predicts polygons), precision/recall and detections per image;
    with ``errors``, also the counts of :func:`~detloss.evaluate.errors.box_errors` at ``eval.conf`` as
    ``errors/<kind>`` (``errors/area_ratio``: the localization errors' median box / GT area).

    With ``eval.tiled`` (``dataset`` a :class:`~detloss.data.tiling.TiledDataset`), on its full images by tiled
    inference (tiles of ``eval.tile_size``, default the dataset's), up to ``eval.max_det`` detections per
    image in AP."""
    preds, gts = predictions(task, model, dataset, cfg, device)
    names = getattr(dataset, "class_names", None) or [str(c) for c in range(num_classes)]
    limit = {"max_dets": cfg.eval.max_det} if cfg.eval.tiled else {}
    metrics = _flatten(box_map(preds, gts, conf=cfg.eval.conf, **limit), "", names)
    if task.has_polygons:
        metrics.update(_flatten(polygon_map(preds, gts, conf=cfg.eval.conf, **limit), "poly_", names))
    if errors:
        counts = asdict(box_errors(preds, gts, conf=cfg.eval.conf))
        metrics.update({f"errors/{k}": float(v) for k, v in counts.items()})
    return metrics


def predictions(
    task: Task, model: nn.Module, dataset, cfg: TrainConfig, device: torch.device
) -> tuple[list[dict], list[dict]]:
    """Per-image detections (on the CPU) and ground truths of ``dataset``, as :func:`evaluate` scores them."""
    if cfg.eval.tiled:
        return _predict_tiled(task, model, dataset, cfg, device)
    preds, gts = [], []
    batch = cfg.batch_size
    for start in range(0, len(dataset), batch):
        samples = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        images, _ = collate(samples)
        out = predict(task, model, images.to(device), cfg)
        preds += [{k: v.cpu() for k, v in p.items()} for p in out]
        gts += [ground_truth(s) for s in samples]
    return preds, gts


def _predict_tiled(task: Task, model: nn.Module, dataset, cfg: TrainConfig, device) -> tuple[list[dict], list[dict]]:
    from detloss.evaluate.tiled import tiled_predict

    def run(tiles: torch.Tensor) -> list[dict]:
        return [{k: v.cpu() for k, v in p.items()} for p in predict(task, model, tiles.to(device), cfg)]

    preds, gts = [], []
    for i in range(len(dataset.dataset)):  # the full images
        sample = dataset.dataset[i]
        image, size, overlap = sample["image"], cfg.eval.tile_size or dataset.size, dataset.overlap
        preds.append(tiled_predict(run, image, size, overlap, cfg.eval.nms_iou, cfg.eval.max_det, batch=cfg.batch_size))
        gts.append(ground_truth(sample))
    return preds, gts


def _flatten(result: dict, prefix: str, names) -> dict[str, float]:
    """Scalars as they are; per-class AP@[.5:.95] as ``{prefix}map/{class name}`` and AP50 as
    ``{prefix}map50/{class name}`` (-1: no GT)."""
    out = {f"{prefix}{k}": float(v) for k, v in result.items() if not isinstance(v, dict)}
    for key, table in (("map", "per_class"), ("map50", "per_class50")):
        for c, ap in sorted(result.get(table, {}).items()):
            out[f"{prefix}{key}/{names[c] if c < len(names) else c}"] = float(ap)
    return out
