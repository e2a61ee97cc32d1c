"""The trainer on VOC, box-CSV and data.yaml data: class count and names come from the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detloss.data.collate import collate
from detloss.train.config import load_config
from detloss.train.data import build_datasets
from detloss.train.trainer import Trainer

PIL = pytest.importorskip("PIL.Image")

# image -> objects (name, xmin, ymin, xmax, ymax, difficult)
TRAIN = {
    "t0": [("pine", 4, 4, 20, 24, 0), ("oak", 30, 10, 60, 40, 1)],
    "t1": [("oak", 10, 8, 40, 30, 0)],
    "t2": [("pine", 2, 2, 14, 14, 0), ("pine", 40, 20, 60, 44, 0)],
    "t3": [("oak", 20, 16, 50, 46, 0)],
}
VAL = {"v0": [("pine", 8, 8, 24, 30, 0), ("oak", 36, 12, 62, 40, 1)], "v1": [("oak", 6, 6, 30, 30, 0)]}


def _write_voc(root: Path) -> None:
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, items in (("train", TRAIN), ("val", VAL)):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(items) + "\n")
        for stem, objs in items.items():
            PIL.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.png")
            body = "".join(
                f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                f"<xmax>{c}</xmax><ymax>{e}</ymax></bndbox></object>"
                for n, a, b, c, e, d in objs
            )
            (root / "Annotations" / f"{stem}.xml").write_text(
                f"<annotation><filename>{stem}.png</filename>{body}</annotation>"
            )


def _config(tmp_path: Path, *data: str):
    return load_config(
        None,
        [
            f"out_dir={tmp_path / 'run'}",
            *data,
            "data.image_size=64",
            "model.width=8",
            "batch_size=2",
            "epochs=1",
            "loss.reg_max=4",
            "loss.num_vertices=4",
            "eval.every_epochs=1",
        ],
    )


def test_training_on_voc_takes_classes_from_the_data(tmp_path, monkeypatch):
    _write_voc(tmp_path / "voc")
    trainer = Trainer(_config(tmp_path, "data.kind=voc", f"data.root={tmp_path / 'voc'}"))
    assert trainer.num_classes == 2 and trainer.val_set.class_names == ["oak", "pine"]
    # both splits keep the difficult oak of t0, flagged
    assert trainer.train_set[0]["labels"].tolist() == [1, 0] and trainer.train_set[0]["ignore"].tolist() == [False, True]
    assert trainer.val_set[0]["ignore"].tolist() == [False, True]
    seen = {}
    import detloss.train.plots as plots

    original = plots.plot_predictions
    monkeypatch.setattr(plots, "plot_predictions", lambda *a, **k: seen.setdefault("names", a[4]) and original(*a))
    metrics = trainer.fit()
    assert trainer.step == 2
    assert {"map50", "map/oak", "map/pine", "map50/oak", "map50/pine"} <= set(metrics)
    assert seen["names"] == ["oak", "pine"] and (tmp_path / "run" / "predictions.png").is_file()


def test_difficult_objects_are_ignore_regions_of_the_dense_loss(tmp_path):
    """t0's difficult oak (30, 10, 60, 40), letterboxed 48 -> 64 px rows (+8): (30, 18, 60, 48). Anchor centres
    inside it, edges included: stride 8 x 36..60 (4) by y 20..44 (4) = 16; stride 16 x 40, 56 by y 24, 40 = 4;
    stride 32 (48, 48) = 1: 21 of the 64 + 16 + 4 = 84 anchors of image 0, none of image 1."""
    _write_voc(tmp_path / "voc")
    trainer = Trainer(_config(tmp_path, "data.kind=voc", f"data.root={tmp_path / 'voc'}"))
    images, targets = collate([trainer.train_set[0], trainer.train_set[1]])
    assert targets["cls"].tolist() == [1, 0] and targets["ignore_batch_idx"].tolist() == [0]
    assert torch.allclose(targets["ignore_bboxes"] * 64, torch.tensor([[45.0, 33.0, 30.0, 30.0]]))
    out = trainer.task.loss(trainer.model, images, targets, None, trainer.autocast)
    ignored = trainer.task.ignored_anchors(out.outputs, images, targets)
    assert ignored.sum(1).tolist() == [21, 0]
    assert out.report.as_dict()["cls/num_elements"] == (2 * 84 - 21) * 2  # (anchors - ignored) x 2 classes


def test_difficult_objects_are_ignored_in_evaluation(tmp_path):
    """An oracle that finds every object but the difficult ones scores AP 1 (without the flag: oak recall 1/2)."""
    import torch

    from detloss.train.evaluation import evaluate

    _write_voc(tmp_path / "voc")
    cfg = _config(tmp_path, "data.kind=voc", f"data.root={tmp_path / 'voc'}")
    _, val, num_classes = build_datasets(cfg.data, 4)
    wanted = [val[i] for i in range(len(val))]

    class Oracle:
        has_polygons = False

        def predict(self, model, images, conf, nms_iou, max_det):
            out = []
            for s in wanted[: images.shape[0]]:
                keep = ~s["ignore"]
                n = int(keep.sum())
                out.append({"boxes": s["boxes"][keep], "labels": s["labels"][keep], "scores": torch.ones(n)})
            del wanted[: images.shape[0]]
            return out

    metrics = evaluate(Oracle(), torch.nn.Identity(), val, cfg, num_classes, torch.device("cpu"))
    assert metrics["map50"] == pytest.approx(1.0) and metrics["recall"] == 1.0 and metrics["precision"] == 1.0
    assert metrics["map50/oak"] == pytest.approx(1.0) and metrics["map50/pine"] == pytest.approx(1.0)


def test_explicit_names_and_a_too_small_num_classes(tmp_path):
    _write_voc(tmp_path / "voc")
    cfg = _config(tmp_path, "data.kind=voc", f"data.root={tmp_path / 'voc'}", "data.names=[pine,oak,elm]").data
    train, val, num_classes = build_datasets(cfg, 4)
    assert num_classes == 3 and val.class_names == ["pine", "oak", "elm"] and val[1]["labels"].tolist() == [1]
    cfg = _config(tmp_path, "data.kind=voc", f"data.root={tmp_path / 'voc'}", "data.num_classes=1").data
    with pytest.raises(ValueError, match=r"data.num_classes=1 but the training data \(\['oak', 'pine'\]\) has 2"):
        build_datasets(cfg, 4)


def test_csv_and_data_yaml_kinds(tmp_path):
    PIL.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "train.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,11,12,Tree\n")
    (tmp_path / "val.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\na.png,0,0,16,16,Tree\n")
    csvs = [f"data.train_annotations={tmp_path / 'train.csv'}", f"data.val_annotations={tmp_path / 'val.csv'}"]
    cfg = _config(tmp_path, "data.kind=csv", *csvs).data
    train, val, num_classes = build_datasets(cfg, 4)
    assert num_classes == 1 and val.class_names == ["Tree"]
    assert train[0]["boxes"].tolist() == [[2.0, 4.0, 22.0, 24.0]]  # letterboxed 32 -> 64: x2
    d = tmp_path / "y"
    for split in ("train", "val"):
        (d / "images" / split).mkdir(parents=True)
        (d / "labels" / split).mkdir(parents=True)
        np.save(d / "images" / split / "a.npy", np.zeros((32, 32, 3), dtype=np.uint8))
        (d / "labels" / split / "a.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    (d / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a, b, c]\n")
    for data in ([f"data.root={d / 'data.yaml'}"], [f"data.root={d}", f"data.yaml={d / 'data.yaml'}"]):
        train, val, num_classes = build_datasets(_config(tmp_path, "data.kind=yolo", *data).data, 4)
        assert num_classes == 3 and val.class_names == ["a", "b", "c"] and val[0]["labels"].tolist() == [2]


def test_voc_images_decode_once_through_the_cache_and_tiles(tmp_path):
    """data.cache applies to the VOC reader (decoding goes through its load_image) and, with data.tile,
    the tiles are cut from the cached images: the same samples as without the cache."""
    _write_voc(tmp_path / "VOC")
    base = ["data.kind=voc", f"data.root={tmp_path / 'VOC'}", "data.tile={overlap: 16}"]
    plain, _, _ = build_datasets(_config(tmp_path, *base).data, 4)
    cached, _, _ = build_datasets(_config(tmp_path, *base, "data.cache=disk", f"data.cache_dir={tmp_path / 'c'}").data, 4)
    assert len(cached) == len(plain) > 0
    for i in range(len(plain)):
        a, b = plain.get(i, 0), cached.get(i, 0)
        assert a["image"].equal(b["image"]) and a["boxes"].equal(b["boxes"]) and a["labels"].equal(b["labels"])
    assert len(list((tmp_path / "c").glob("*.npy"))) == len(TRAIN) + len(VAL)  # every image decoded once
