"""The trainer on large images: random tiles for training, tiled inference on the full validation images."""

from __future__ import annotations

import pytest
from yolo_folder import write_yolo_split

import detloss.evaluate.tiled as tiled
from detloss.data.tiling import TiledDataset
from detloss.train.config import load_config
from detloss.train.trainer import Trainer

H, W = 200, 160  # larger than the 64 px tiles: 4 rows (0, 48, 96, 136) x 3 columns (0, 48, 96)


def _config(tmp_path, root, *extra):
    return load_config(
        None,
        [
            f"out_dir={tmp_path / 'run'}",
            "data.kind=yolo",
            f"data.root={root}",
            "data.num_classes=6",
            "data.image_size=64",
            "data.tile.overlap=16",
            "model.width=8",
            "batch_size=4",
            "epochs=1",
            "max_steps=2",
            "loss.reg_max=4",
            "loss.num_vertices=6",
            "eval.plots=false",
            *extra,
        ],
    )


def test_tiled_training_and_tiled_evaluation(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_yolo_split(root, "train", 2, (H, W), max_objects=4, seed=5)
    write_yolo_split(root, "val", 2, (H, W), max_objects=4, seed=5)
    trainer = Trainer(_config(tmp_path, root, "eval.tiled=true", "eval.max_det=300"))
    assert isinstance(trainer.train_set, TiledDataset) and trainer.train_set.mode == "random"
    assert len(trainer.train_set) == 2 * 12 and len(trainer.val_set) == 2 * 12
    images, targets = next(trainer.batches(0))
    assert images.shape == (4, 3, 64, 64)  # full-resolution tiles, not the 200x160 image letterboxed
    first = [trainer.train_set.get(i, 0)["tile"] for i in range(4)]
    assert first != [trainer.train_set.get(i, 1)["tile"] for i in range(4)]  # new crops each epoch
    epochs = []
    get = trainer.train_set.get
    monkeypatch.setattr(trainer.train_set, "get", lambda i, epoch=0: epochs.append(epoch) or get(i, epoch))
    next(trainer.batches(3))
    assert epochs == [3] * 4  # the trainer draws the crops of its epoch
    monkeypatch.undo()

    seen = []
    real = tiled.tiled_predict

    def spy(predict, image, size, overlap, *args, **kwargs):
        seen.append((tuple(image.shape), size, overlap, args))
        return real(predict, image, size, overlap, *args, **kwargs)

    monkeypatch.setattr(tiled, "tiled_predict", spy)
    metrics = trainer.fit()
    assert seen == [((3, H, W), 64, 16, (0.6, 300))] * 2  # each full validation image once, eval.max_det kept
    assert {"map50", "poly_map50", "dets_per_image"} <= set(metrics)


def test_eval_tile_size_sets_the_inference_tile(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_yolo_split(root, "train", 1, (H, W), max_objects=2, seed=5)
    write_yolo_split(root, "val", 1, (H, W), max_objects=2, seed=5)
    trainer = Trainer(_config(tmp_path, root, "eval.tiled=true", "eval.tile_size=128", "epochs=1", "max_steps=1"))
    tiles = []
    real = tiled.tiled_predict

    def spy(predict, image, size, overlap, *args, **kwargs):
        return real(lambda t: tiles.append(tuple(t.shape)) or predict(t), image, size, overlap, *args, **kwargs)

    monkeypatch.setattr(tiled, "tiled_predict", spy)
    trainer.fit()
    # 200 x 160 image in 128 px tiles, overlap 16: rows at 0 and 72, columns at 0 and 32; training stays at 64
    assert sum(t[0] for t in tiles) == 4 and {t[1:] for t in tiles} == {(3, 128, 128)}
    assert trainer.train_set.size == 64


def test_tiled_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match="eval.tile_size needs eval.tiled"):
        load_config(None, ["data.kind=yolo", "data.image_size=64", "data.tile.overlap=16", "eval.tile_size=128"])
    tiled_yolo = ["data.kind=yolo", "data.image_size=64", "data.tile.overlap=48", "eval.tiled=true"]
    for bad in (100, 32):  # not a multiple of the stride; not larger than the overlap
        with pytest.raises(ValueError, match=rf"eval.tile_size must be a multiple of 32 .*\(48\), got {bad}"):
            load_config(None, [*tiled_yolo, f"eval.tile_size={bad}"])
    with pytest.raises(ValueError, match="eval.tiled needs data.tile"):
        load_config(None, ["eval.tiled=true"])
    with pytest.raises(ValueError, match=r"data.tile.overlap \(64\) must be < data.image_size \(64\)"):
        load_config(None, ["data.kind=yolo", "data.image_size=64", "data.tile.overlap=64"])
