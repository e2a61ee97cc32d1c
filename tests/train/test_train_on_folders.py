"""The trainer on a user's YOLO-txt folder: reader -> letterbox -> collate -> criterion -> AP."""

from __future__ import annotations

from yolo_folder import write_yolo_split

from detloss.train.config import load_config
from detloss.train.trainer import Trainer


def test_training_on_a_yolo_folder_runs_and_evaluates(tmp_path):
    root = tmp_path / "data"
    write_yolo_split(root, "train", 8)
    write_yolo_split(root, "val", 4)
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
