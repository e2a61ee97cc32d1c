"""``detloss polygons RUN_DIR``: polygon quality of a finished dense run on its validation set
(:mod:`detloss.evaluate.polygon_quality`), and a plot of the worst predictions of each class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detloss.data.collate import collate
from detloss.evaluate.decode import decode_dense
from detloss.evaluate.polygon_quality import PolygonQuality, polygon_quality
from detloss.models.tiny_yolo import TinyDetector
from detloss.train.config import TrainConfig, load_config
from detloss.train.validate import load_run

__all__ = ["plot_worst", "run_polygon_report"]


def _load(run: Path) -> tuple[TrainConfig, TinyDetector, object, int]:
    """The run's config, its model with the EMA weights when saved (what validation evaluates), the
    validation set and the class count."""
    cfg = load_config(run / "config.yaml")
    if cfg.model.kind != "dense" or cfg.loss.num_vertices < 3:
        raise ValueError(f"{run}: polygon quality needs a dense run with a polygon branch (loss.num_vertices >= 3)")
    cfg, task, val, num_classes = load_run(run)
    return cfg, task.model, val, num_classes


@torch.no_grad()
def run_polygon_report(
    run: str | Path, conf: float | None = None, tol: float = 1.0
) -> tuple[PolygonQuality, list[dict], list[dict]]:
    """:func:`polygon_quality` of the run's last checkpoint on its validation images (``conf``: default the
    run's ``eval.conf``); also the raw predictions and the ground truth, one dict per image."""
    run = Path(run)
    cfg, model, val, num_classes = _load(run)
    preds, gts = [], []
    for start in range(0, len(val), cfg.batch_size):
        samples = [val[i] for i in range(start, min(start + cfg.batch_size, len(val)))]
        images, _ = collate(samples)
        out = decode_dense(
            [f.float() for f in model(images)], model.strides, num_classes, cfg.loss.reg_max,
            num_vertices=cfg.loss.num_vertices, conf=0.001, iou=cfg.eval.nms_iou, max_det=cfg.eval.max_det,
            objectness=cfg.loss.objectness,
        )  # fmt: skip
        preds += out
        gts += [{k: s[k] for k in ("polygons", "polygon_counts", "labels", "image")} for s in samples]
    names = getattr(val, "class_names", None) or [str(c) for c in range(num_classes)]
    quality = polygon_quality(preds, gts, conf=cfg.eval.conf if conf is None else conf, tol=tol, names=names)
    return quality, preds, gts


def plot_worst(
    quality: PolygonQuality, preds: list[dict], gts: list[dict], path: str | Path, per_class: int = 4
) -> Path:
    """The ``per_class`` lowest-IoU ground truths of each class that have a prediction (misses are in the
    table), cropped: the image, the GT polygon (green),
    the convex hull of the best prediction (red) and its K raw vertices (red dots)."""
    from detloss.ops.hull import convex_hull
    from detloss.train.plots import _pyplot, _save

    plt = _pyplot()
    labels = sorted({m.label for m in quality.matches})
    fig, axes = plt.subplots(len(labels), per_class, figsize=(2.4 * per_class, 2.4 * len(labels)), squeeze=False)
    for row, label in enumerate(labels):
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            cases = quality.worst(per_class, label, matched=True)
            if col >= len(cases):
                continue
            m = cases[col]
            g = gts[m.image]
            image = g["image"].permute(1, 2, 0).float().numpy()
            ax.imshow(image.clip(0, 1) if image.max() <= 1 else image / 255)
            gt = g["polygons"][m.gt_index, : int(g["polygon_counts"][m.gt_index])].numpy()
            pts = [gt]
            ax.fill(gt[:, 0], gt[:, 1], fill=False, edgecolor="lime", linewidth=1.5)
            if m.pred_index >= 0:
                raw = preds[m.image]["polygons"][m.pred_index].double()
                hull, valid = convex_hull(raw[None])
                h = hull[0][valid[0]].numpy()
                ax.fill(h[:, 0], h[:, 1], fill=False, edgecolor="red", linewidth=1.0)
                ax.plot(raw[:, 0].numpy(), raw[:, 1].numpy(), "r.", markersize=4)
                pts.append(raw.numpy())
            allpts = np.concatenate(pts)
            lo, hi = allpts.min(0) - 8, allpts.max(0) + 8
            ax.set_xlim(float(lo[0]), float(hi[0]))
            ax.set_ylim(float(hi[1]), float(lo[1]))
            ax.set_title(f"{quality.name(label)} IoU {m.iou:.2f}\n{m.gt_vertices} -> {m.corners} corners", fontsize=7)
    return _save(plt, fig, Path(path))
