"""data.yaml: names (list or mapping), folders and .txt lists, YOLO labels in pixels, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detloss.data.data_yaml import YamlYoloDataset, label_path, read_data_yaml

pytest.importorskip("yaml")


def _fixture(tmp_path: Path, names: str = "names: {0: person, 1: car}") -> Path:
    d = tmp_path / "ds"
    for split in ("train", "val"):
        (d / "images" / split).mkdir(parents=True)
        (d / "labels" / split).mkdir(parents=True)
    np.save(d / "images" / "train" / "a.npy", np.zeros((20, 40, 3), dtype=np.uint8))
    np.save(d / "images" / "train" / "b.npy", np.zeros((10, 10, 3), dtype=np.uint8))  # no label file
    np.save(d / "images" / "val" / "c.npy", np.zeros((10, 20, 3), dtype=np.uint8))
    (d / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n")
    (d / "labels" / "val" / "c.txt").write_text("0 0.25 0.5 0.5 1.0\n")
    (d / "lists").mkdir()
    (d / "lists" / "val.txt").write_text("../images/val/c.npy\n\n")  # relative to the list's folder
    y = tmp_path / "data.yaml"
    y.write_text(f"path: ds\ntrain: images/train\nval: lists/val.txt\nnc: 2\n{names}\n")
    return y


def test_names_splits_and_pixel_boxes(tmp_path):
    y = _fixture(tmp_path)
    train = YamlYoloDataset(y, "train")
    assert train.class_names == ["person", "car"] and train.num_classes == 2
    assert [p.name for p in train.image_paths] == ["a.npy", "b.npy"]
    s = train[0]  # W = 40, H = 20: cx, cy, w, h = 0.5, 0.5, 0.25, 0.5 -> [15, 5, 25, 15]
    assert s["labels"].tolist() == [1] and s["boxes"].tolist() == [[15.0, 5.0, 25.0, 15.0]]
    assert train[1]["boxes"].shape == (0, 4)
    val = YamlYoloDataset(y, "val")  # a .txt list, lines relative to its folder
    assert len(val) == 1 and val[0]["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]] and val[0]["labels"].tolist() == [0]


def test_names_as_list_and_class_bound(tmp_path):
    y = _fixture(tmp_path, "names: [person, car]")
    assert read_data_yaml(y)["names"] == ["person", "car"]
    (tmp_path / "ds" / "labels" / "train" / "a.txt").write_text("2 0.5 0.5 0.25 0.5\n")  # 2 classes: 0, 1
    with pytest.raises(ValueError, match=r"a\.txt, line 1: class 2 out of range \(must be \[0, 2\)\)"):
        YamlYoloDataset(y, "train")


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("names: {0: a, 2: b}", r"data\.yaml: 'names' mapping must have the ids 0\.\.1"),
        ("names: []", r"data\.yaml: 'names' must be a non-empty list"),
        ("names: [a, b, c]", r"data\.yaml: 'nc' is 2 but 'names' lists 3 classes"),
    ],
)
def test_bad_names(tmp_path, names, message):
    with pytest.raises(ValueError, match=message):
        YamlYoloDataset(_fixture(tmp_path, names), "train")


def test_bad_entries(tmp_path):
    y = _fixture(tmp_path)
    with pytest.raises(ValueError, match=r"data\.yaml: no 'test' key"):
        YamlYoloDataset(y, "test")
    (tmp_path / "ds" / "lists" / "val.txt").write_text("../images/val/c.npy\n../images/val/zz.npy\n")
    with pytest.raises(ValueError, match=r"val\.txt, line 2: image .*zz\.npy not found"):
        YamlYoloDataset(y, "val")
    y.write_text("path: ds\ntrain: nowhere\nnames: [a]\n")
    with pytest.raises(ValueError, match=r"data\.yaml: 'train' entry 'nowhere': .* neither a folder"):
        YamlYoloDataset(y, "train")
    y.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match=r"data\.yaml: malformed YAML"):
        YamlYoloDataset(y, "train")


def test_label_path_takes_the_last_images_folder():
    assert label_path(Path("/x/images/d/images/train/a.jpg")) == Path("/x/images/d/labels/train/a.txt")
    with pytest.raises(ValueError, match=r"no 'images' folder"):
        label_path(Path("/x/pics/a.jpg"))
