"""Bad data fails when it is read, with the file (and line) named: out-of-range classes, corrupt images,
label files without an image, class counts below the data's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from detloss.data.yolo import YoloDataset, load_image
from detloss.train.config import DataConfig
from detloss.train.data import build_datasets


def _yolo_root(root: Path, labels: dict[str, str], images: tuple[str, ...] = ("a", "b")) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for stem in images:
            np.save(root / "images" / split / f"{stem}.npy", np.zeros((8, 8, 3), dtype=np.uint8))
        for stem, text in labels.items():
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    return root


def test_a_yolo_class_at_or_above_data_num_classes_names_file_and_line(tmp_path):
    root = _yolo_root(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "b": "1 0.5 0.5 0.2 0.2\n\n2 0.3 0.3 0.1 0.1\n"})
    with pytest.raises(ValueError) as err:
        build_datasets(DataConfig(kind="yolo", root=str(root), num_classes=2), num_vertices=6)
    text = str(err.value)
    assert f"{root / 'labels' / 'train' / 'b.txt'}, line 3: class 2 out of range (must be [0, 2))" == text
    build_datasets(DataConfig(kind="yolo", root=str(root), num_classes=3), num_vertices=6)  # 3 classes fit


def test_a_label_file_without_an_image_is_reported(tmp_path):
    root = _yolo_root(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n", "orphan": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(ValueError) as err:
        YoloDataset(root, "train")
    text = str(err.value)
    assert text.startswith(f"{root / 'labels' / 'train'}: 1 label file(s) without an image") and "orphan.txt" in text


def _png_bytes() -> bytes:
    pil = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    pil.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((16, 16, 3), dtype=np.uint8))
    return buffer.getvalue()


#: name -> (file name, its bytes). The readers' own messages carry no path: "we only support format
#: version (1,0), (2,0), and (3,0), not (9, 0)", "Truncated File Read", "cannot identify image file".
CORRUPT = {
    "npy_version": ("v9.npy", lambda: b"\x93NUMPY\x09\x00" + _npy_bytes()[8:]),
    "npy_truncated": ("cut.npy", lambda: _npy_bytes()[:200]),
    "png_truncated": ("cut.png", lambda: _png_bytes()[: len(_png_bytes()) // 2]),
    "png_not_an_image": ("text.png", lambda: b"not an image at all\n"),
    "jpg_empty": ("empty.jpg", lambda: b""),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_corrupt_image_names_its_file(tmp_path, case):
    name, content = CORRUPT[case]
    path = tmp_path / name
    path.write_bytes(content())
    with pytest.raises(ValueError) as err:
        load_image(path)
    assert str(err.value).startswith(f"{path}: cannot read the image ("), str(err.value)


def test_a_corrupt_image_in_a_dataset_names_its_file_when_read(tmp_path):
    root = _yolo_root(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    bad = root / "images" / "train" / "b.npy"
    bad.write_bytes(_npy_bytes()[:100])
    ds = YoloDataset(root, "train")
    assert ds[0]["labels"].tolist() == [0]
    with pytest.raises(ValueError, match=f"^{bad}: cannot read the image"):
        ds[1]


def test_data_num_classes_below_the_datas_classes_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data.num_classes=2 but the shapes dataset has 6 classes"):
        build_datasets(DataConfig(image_size=64, train_images=4, val_images=2, num_classes=2), num_vertices=6)
    coco = {
        "images": [{"id": 1, "file_name": "a.npy", "width": 8, "height": 8}],
        "categories": [{"id": 3, "name": "x"}, {"id": 7, "name": "y"}, {"id": 9, "name": "z"}],
        "annotations": [],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    cfg = DataConfig(
        kind="coco", root=str(tmp_path), train_annotations=str(tmp_path / "ann.json"),
        val_annotations=str(tmp_path / "ann.json"), num_classes=2,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"data.num_classes=2 but .*ann.json has categories for 3 classes"):
        build_datasets(cfg, num_vertices=6)


def test_three_polygon_slots_cannot_hold_a_box_rectangle(tmp_path):
    root = _yolo_root(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(ValueError, match=r"loss.num_vertices=3: data.kind='yolo' gives boxes 4-vertex rectangles"):
        build_datasets(DataConfig(kind="yolo", root=str(root), num_classes=1), num_vertices=3)
