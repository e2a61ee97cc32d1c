"""The trainer on a user's YOLO-txt folder: reader -> letterbox -> collate -> criterion -> AP."""

from __future__ import annotations

import numpy as np
import torch

from detloss.data.shapes import ShapesDataset
from detloss.train.config import load_config
from detloss.train.trainer import Trainer


def _write_yolo_split(root, split: str, n: int) -> None:
    """Shapes images saved as .npy (96x80, not square: letterbox has work to do) with polygon labels."""
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    data = ShapesDataset(n, image_size=(96, 80), max_objects=2, num_vertices=6, seed=3, split=split)
    for i in range(n):
        s = data[i]
        np.save(root / "images" / split / f"im{i}.npy", s["image"].permute(1, 2, 0).numpy())
        lines = []
        for label, poly, count in zip(s["labels"], s["polygons"], s["polygon_counts"], strict=True):
            xy = poly[: int(count)] / torch.tensor([80.0, 96.0])  # normalized by (width, height)
            lines.append(" ".join([str(int(label)), *(f"{v:.6f}" for v in xy.flatten().tolist())]))
        (root / "labels" / split / f"im{i}.txt").write_text("\n".join(lines) + "\n")


def test_training_on_a_yolo_folder_runs_and_evaluates(tmp_path):
    root = tmp_path / "data"
    _write_yolo_split(root, "train", 8)
    _write_yolo_split(root, "val", 4)
    config = load_config(
        None,
        [
            f"out_dir={tmp_path / 'run'}",
            "data.kind=yolo",
            f"data.root={root}",
            "data.num_classes=6",
            "data.image_size=64",
            "model.width=8",
            "batch_size=4",
            "epochs=1",
            "loss.reg_max=4",
            "loss.num_vertices=6",
            "eval.plots=false",
        ],
    )
    trainer = Trainer(config)
    images, targets = next(trainer.batches(0))
    assert images.shape == (4, 3, 64, 64)
    assert targets["polygons"].shape[1:] == (6, 2) and targets["bboxes"].shape[1] == 4
    assert float(targets["bboxes"][:, :2].min()) >= 0 and float(targets["bboxes"][:, :2].max()) <= 1
    metrics = trainer.fit()
    assert trainer.step == 2
    assert {"map50", "poly_map50", "dets_per_image"} <= set(metrics)
