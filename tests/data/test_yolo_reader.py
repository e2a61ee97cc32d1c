"""YoloDataset: boxes, polygons, vertex reduction, images, and errors naming file and line."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detloss.data.yolo import YoloDataset, convex_hull, fit_polygon, load_image, parse_yolo_labels


def _area(p) -> float:
    p = torch.as_tensor(p, dtype=torch.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float((x * y.roll(-1) - x.roll(-1) * y).sum())


def _decagon_clockwise() -> list[tuple[float, float]]:
    """10 points on a circle in decreasing angle: a negative shoelace area."""
    return [
        (0.5 + 0.3 * math.cos(-2 * math.pi * i / 10), 0.5 + 0.3 * math.sin(-2 * math.pi * i / 10)) for i in range(10)
    ]


def _write_root(root: Path) -> None:
    img_dir, lbl_dir = root / "images" / "train", root / "labels" / "train"
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    np.save(img_dir / "a.npy", np.full((20, 40, 3), 51, dtype=np.uint8))  # HWC uint8 -> 0.2
    np.save(img_dir / "b.npy", np.full((3, 10, 10), 0.75, dtype=np.float32))  # CHW float
    np.save(img_dir / "c.npy", np.zeros((8, 8), dtype=np.uint8))  # gray, no label file
    (img_dir / "notes.txt").write_text("not an image")
    deca = " ".join(f"{x:.6f} {y:.6f}" for x, y in _decagon_clockwise())
    (lbl_dir / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n\n1 0.1 0.1 0.3 0.1 0.2 0.4\n")
    (lbl_dir / "b.txt").write_text(f"2 {deca}\n1 0.1 0.1 0.1 0.9 0.9 0.9 1.0005 0.1\n")


def test_boxes_and_polygons_in_pixels(tmp_path):
    _write_root(tmp_path)
    ds = YoloDataset(tmp_path, "train", num_vertices=8)
    assert [Path(p).name for p in ds.image_paths] == ["a.npy", "b.npy", "c.npy"]
    s = ds[0]  # W = 40, H = 20
    assert s["image"].shape == (3, 20, 40) and torch.allclose(s["image"], torch.full((3, 20, 40), 0.2))
    assert s["labels"].tolist() == [0, 1] and s["is_polygon"].tolist() == [False, True]
    # box: cx, cy, w, h = 0.5, 0.5, 0.25, 0.5 -> [15, 5, 25, 15]; its polygon is the rectangle
    assert torch.allclose(s["boxes"][0], torch.tensor([15.0, 5.0, 25.0, 15.0]))
    rect = torch.tensor([[15.0, 5.0], [25.0, 5.0], [25.0, 15.0], [15.0, 15.0]])
    assert s["polygon_counts"][0] == 4 and torch.allclose(s["polygons"][0, :4], rect)
    # triangle (0.1, 0.1), (0.3, 0.1), (0.2, 0.4) -> (4, 2), (12, 2), (8, 8): positive area, kept in order
    tri = torch.tensor([[4.0, 2.0], [12.0, 2.0], [8.0, 8.0]])
    assert s["polygon_counts"][1] == 3 and torch.allclose(s["polygons"][1, :3], tri)
    assert torch.allclose(s["boxes"][1], torch.tensor([4.0, 2.0, 12.0, 8.0]))
    assert (s["polygons"][:, 4:] == 0).all() and (s["polygons"][1, 3] == 0).all()
    for i in range(2):
        assert _area(s["polygons"][i, : int(s["polygon_counts"][i])]) > 0

    e = ds[2]
    assert e["image"].shape == (3, 8, 8) and e["labels"].shape == (0,) and e["polygons"].shape == (0, 8, 2)


def test_polygon_reduction_and_orientation(tmp_path):
    _write_root(tmp_path)
    s = YoloDataset(tmp_path, num_vertices=8)[1]  # 10 x 10 image
    assert torch.allclose(s["image"], torch.full((3, 10, 10), 0.75))
    # the clockwise decagon: hull (10 vertices, positive area) -> vertices floor(i * 10 / 8) = 0,1,2,3,5,6,7,8
    pts = torch.tensor(_decagon_clockwise()) * 10
    hull = torch.tensor(convex_hull([tuple(p) for p in _decagon_clockwise()])) * 10
    assert s["polygon_counts"][0] == 8
    assert torch.allclose(s["polygons"][0], hull[[0, 1, 2, 3, 5, 6, 7, 8]].float(), atol=1e-5)
    assert _area(s["polygons"][0]) > 0
    # the box covers all 10 input points, not only the 8 kept
    assert torch.allclose(s["boxes"][0], torch.cat((pts.min(0).values, pts.max(0).values)), atol=1e-5)
    # a clockwise quadrilateral (1.0005 within tolerance, clamped to 1) is reversed, not reduced
    quad = s["polygons"][1, : int(s["polygon_counts"][1])]
    assert s["polygon_counts"][1] == 4 and _area(quad) > 0
    assert torch.allclose(quad, torch.tensor([[10.0, 1.0], [9.0, 9.0], [1.0, 9.0], [1.0, 1.0]]))
    assert float(s["boxes"][1, 2]) == 10.0


def test_fit_polygon_rules():
    square = [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (1.0, 0.0)]  # clockwise in (x, y)
    assert fit_polygon(square, 8) == square[::-1]
    many = [(math.cos(t), math.sin(t)) for t in (2 * math.pi * i / 12 for i in range(12))] + [(0.0, 0.0)]
    out = fit_polygon(many, 6)  # hull has 12 vertices: keep every second one
    assert len(out) == 6 and _area(out) > 0
    assert all(p in many for p in out)
    assert fit_polygon([(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)], 3) == [(0.0, 0.0), (3.0, 3.0)]


BAD_LINES = [
    ("0 0.5 0.5 0.2 abc", "not a number"),
    ("0 0.5 0.5 0.2 nan", "not finite"),
    ("x 0.5 0.5 0.2 0.2", "class 'x' is not a number"),
    ("1.5 0.5 0.5 0.2 0.2", "not an integer"),
    ("-1 0.5 0.5 0.2 0.2", "out of range"),
    ("7 0.5 0.5 0.2 0.2", "out of range"),
    ("0 0.1 0.1 0.2 0.2 0.3", "odd number of coordinates"),
    ("0 0.1 0.1", "at least 3 x y pairs"),
    ("0 0.5 0.5 0.2 1.3", "outside [0, 1]"),
    ("0 0.95 0.5 0.2 0.2", "x2 1.05 outside [0, 1]"),
    ("0 0.5 0.5 0 0.2", "must be > 0"),
    ("0 0.1 0.1 0.5 0.5 0.9 0.9", "zero area"),
    ("0 0.1 0.1 -0.2 0.5 0.9 0.9", "outside [0, 1]"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_bad_label_lines_name_file_and_line(tmp_path, line, message):
    img_dir, lbl_dir = tmp_path / "images" / "val", tmp_path / "labels" / "val"
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    np.save(img_dir / "bad_image.npy", np.zeros((4, 4, 3), dtype=np.uint8))
    (lbl_dir / "bad_image.txt").write_text(f"0 0.5 0.5 0.2 0.2\n\n{line}\n")
    with pytest.raises(ValueError) as err:
        YoloDataset(tmp_path, "val", num_classes=3)
    text = str(err.value)
    assert "bad_image.txt" in text and "line 3" in text and message in text, text


def test_tolerance_and_missing_folder(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("0 1.0009 0.5 0.2 0.2 0.3 0.4\n")
    t = parse_yolo_labels(f, 8)
    assert float(t["polygons"][0, :, 0].max()) == 1.0
    with pytest.raises(ValueError, match="line 1"):
        parse_yolo_labels(f, 8, tolerance=1e-4)
    with pytest.raises(ValueError, match="image folder not found"):
        YoloDataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="num_vertices"):
        YoloDataset(tmp_path, num_vertices=3)


def test_image_files(tmp_path, monkeypatch):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((5, 5, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="bad.npy"):
        load_image(bad)
    np.save(bad, np.full((4, 4, 3), 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(bad)
    rgba = tmp_path / "rgba.npy"
    np.save(rgba, np.full((4, 5, 4), 255, dtype=np.uint8))
    assert torch.equal(load_image(rgba), torch.ones(3, 4, 5))
    with pytest.raises(ValueError, match="unsupported"):
        load_image(tmp_path / "x.bmp")

    png = tmp_path / "img.png"
    png.write_bytes(b"")  # never opened without Pillow
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="Pillow"):
        load_image(png)


def test_png_with_pillow(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    arr = np.zeros((6, 9, 3), dtype=np.uint8)
    arr[..., 0] = 255
    pil.fromarray(arr).save(tmp_path / "red.png")
    img = load_image(tmp_path / "red.png")
    assert img.shape == (3, 6, 9) and torch.equal(img[0], torch.ones(6, 9)) and (img[1:] == 0).all()
