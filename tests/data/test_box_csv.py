"""BoxCsvDataset: hand-checked boxes, labels and names; empty images; errors naming file and line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detloss.data.box_csv import BoxCsvDataset

PIL = pytest.importorskip("PIL.Image")


def _png(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(np.full((h, w, 3), 102, dtype=np.uint8)).save(path)


def _fixture(tmp_path: Path) -> Path:
    _png(tmp_path / "img" / "a.png", 20, 30)
    _png(tmp_path / "img" / "b.png", 10, 10)
    _png(tmp_path / "img" / "c.png", 10, 10)
    csv = tmp_path / "boxes.csv"
    csv.write_text(
        "image_path,xmin,ymin,xmax,ymax,label,score\n"
        "img/b.png,1,2,3,4,Tree,1\n"
        "img/a.png,0,0,30,20,Bird,1\n"
        "\n"
        "img/b.png,5.5,5,10,10,Bird,1\n"
        "img/c.png,0,0,0,0,Tree,1\n"
    )
    return csv


def test_boxes_labels_names_and_empty_image(tmp_path):
    ds = BoxCsvDataset(_fixture(tmp_path))
    assert ds.class_names == ["Bird", "Tree"] and ds.num_classes == 2
    assert [p.name for p in ds.image_paths] == ["b.png", "a.png", "c.png"]  # first-row order
    b = ds[0]
    assert b["image"].shape == (3, 10, 10) and abs(float(b["image"].mean()) - 0.4) < 1e-6
    assert b["boxes"].tolist() == [[1.0, 2.0, 3.0, 4.0], [5.5, 5.0, 10.0, 10.0]] and b["labels"].tolist() == [1, 0]
    assert b["polygons"][1, :4].tolist() == [[5.5, 5.0], [10.0, 5.0], [10.0, 10.0], [5.5, 10.0]]
    assert b["ignore"].tolist() == [False, False] and b["polygon_counts"].tolist() == [4, 4]
    assert ds[1]["boxes"].tolist() == [[0.0, 0.0, 30.0, 20.0]] and ds[1]["labels"].tolist() == [0]
    c = ds[2]
    assert c["boxes"].shape == (0, 4) and c["labels"].shape == (0,) and c["polygons"].shape == (0, 8, 2)


def test_explicit_names_and_image_root(tmp_path):
    csv = _fixture(tmp_path)
    moved = tmp_path / "elsewhere" / "boxes.csv"
    moved.parent.mkdir()
    moved.write_text(csv.read_text())
    ds = BoxCsvDataset(moved, image_root=tmp_path, class_names=["Tree", "Bird", "Car"])
    assert ds.num_classes == 3 and ds[0]["labels"].tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"boxes\.csv, line 3: label 'Bird' is not in class_names"):
        BoxCsvDataset(csv, class_names=["Tree"])
    with pytest.raises(ValueError, match=r"boxes\.csv, line 2: image_path 'img/b.png': .* not found"):
        BoxCsvDataset(moved)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"bad\.csv: empty file"),
        ("image_path,xmin,ymin,xmax,ymax\n", r"bad\.csv, line 1: header lacks column\(s\) \['label'\]"),
        ("img/a.png,1,2,3,4,Tree\n", r"bad\.csv, line 1: header lacks column"),  # no header
        ("image_path,xmin,ymin,xmax,ymax,label\nimg/a.png,1,two,3,4,Tree\n", r"bad\.csv, line 2: ymin 'two' is not"),
        ("image_path,xmin,ymin,xmax,ymax,label\nimg/a.png,1,2,3,4,T\nimg/a.png,3,2,3,4,T\n",
         r"bad\.csv, line 3: box needs xmin < xmax"),
        ("image_path,xmin,ymin,xmax,ymax,label\nimg/a.png,1,2,3,inf,T\n", r"bad\.csv, line 2: ymax 'inf' is not fin"),
        ("image_path,xmin,ymin,xmax,ymax,label\nimg/a.png,1,2,3\n", r"bad\.csv, line 2: 4 values, the header has 6"),
        ("image_path,xmin,ymin,xmax,ymax,label\nimg/a.png,1,2,3,4,\n", r"bad\.csv, line 2: empty label"),
        ("image_path,xmin,ymin,xmax,ymax,label\nimg/a.png,-1,2,3,4,T\n", r"bad\.csv, line 2: xmin/ymin must be >= 0"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, message):
    _png(tmp_path / "img" / "a.png", 20, 30)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        BoxCsvDataset(tmp_path / "bad.csv")


def test_box_past_the_image_names_the_csv(tmp_path):
    _png(tmp_path / "a.png", 20, 30)
    (tmp_path / "b.csv").write_text("image_path,xmin,ymin,xmax,ymax,label\na.png,1,2,31,4,T\n")
    with pytest.raises(ValueError, match=r"b\.csv: object 0 box .* reaches past the image"):
        BoxCsvDataset(tmp_path / "b.csv")[0]
