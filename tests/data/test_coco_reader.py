"""CocoDataset: bbox, largest polygon part, iscrowd, RLE, category mapping, and errors naming the id."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from detloss.data.coco import CocoDataset


def _area(p: torch.Tensor) -> float:
    x, y = p[:, 0].double(), p[:, 1].double()
    return 0.5 * float((x * y.roll(-1) - x.roll(-1) * y).sum())


def _coco() -> dict:
    return {
        "images": [
            {"id": 5, "file_name": "b.npy", "width": 30, "height": 20},
            {"id": 2, "file_name": "a.npy", "width": 40, "height": 20},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 12, "name": "twelve"}],
        "annotations": [
            # box only
            {"id": 1, "image_id": 2, "category_id": 7, "bbox": [4, 2, 8, 8], "iscrowd": 0},
            # two parts: a small triangle and a larger, clockwise-drawn square -> the square, reoriented
            {
                "id": 2,
                "image_id": 2,
                "category_id": 12,
                "bbox": [20, 2, 10, 10],
                "segmentation": [[0, 0, 2, 0, 0, 2], [20, 2, 20, 12, 30, 12, 30, 2]],
                "iscrowd": 0,
            },
            # crowd: skipped
            {
                "id": 3,
                "image_id": 2,
                "category_id": 3,
                "bbox": [0, 0, 5, 5],
                "iscrowd": 1,
                "segmentation": {"counts": [0, 25], "size": [20, 40]},
            },
            # RLE: box only, with a warning
            {
                "id": 4,
                "image_id": 5,
                "category_id": 3,
                "bbox": [1, 1, 4, 6],
                "segmentation": {"counts": "abc", "size": [20, 30]},
            },
        ],
    }


def _write(tmp_path: Path, data: dict | str, name: str = "instances.json") -> Path:
    np.save(tmp_path / "a.npy", np.zeros((20, 40, 3), dtype=np.uint8))
    np.save(tmp_path / "b.npy", np.zeros((20, 30, 3), dtype=np.uint8))
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_reads_boxes_polygons_and_maps_categories(tmp_path):
    path = _write(tmp_path, _coco())
    with pytest.warns(UserWarning, match=r"1 annotation\(s\) with RLE segmentation \(ids \[4\]\)"):
        ds = CocoDataset(tmp_path, path, num_vertices=6)
    assert ds.category_ids == [3, 7, 12] and ds.cat_id_to_label == {3: 0, 7: 1, 12: 2}
    assert ds.class_names == ["three", "seven", "twelve"] and ds.num_classes == 3
    assert ds.image_ids == [2, 5] and len(ds) == 2

    s = ds[0]  # image 2: the crowd annotation is gone
    assert s["image_id"] == 2 and s["image"].shape == (3, 20, 40)
    assert s["labels"].tolist() == [1, 2] and s["is_polygon"].tolist() == [False, True]
    assert torch.equal(s["boxes"], torch.tensor([[4.0, 2.0, 12.0, 10.0], [20.0, 2.0, 30.0, 12.0]]))
    rect = torch.tensor([[4.0, 2.0], [12.0, 2.0], [12.0, 10.0], [4.0, 10.0]])
    assert s["polygon_counts"].tolist() == [4, 4] and torch.equal(s["polygons"][0, :4], rect)
    square = torch.tensor([[30.0, 2.0], [30.0, 12.0], [20.0, 12.0], [20.0, 2.0]])  # the part, reversed
    assert torch.equal(s["polygons"][1, :4], square) and _area(square) > 0
    assert s["polygons"].shape == (2, 6, 2) and (s["polygons"][:, 4:] == 0).all()

    r = ds[1]  # image 5: the RLE annotation as its box
    assert r["labels"].tolist() == [0] and r["is_polygon"].tolist() == [False]
    assert torch.equal(r["boxes"], torch.tensor([[1.0, 1.0, 5.0, 7.0]]))


def test_long_polygon_is_hulled_and_thinned(tmp_path):
    data = _coco()
    ring = [v for t in range(16) for v in (15 + 5 * np.cos(t * np.pi / 8), 10 + 5 * np.sin(t * np.pi / 8))]
    data["annotations"] = [
        {"id": 9, "image_id": 5, "category_id": 7, "bbox": [10, 5, 10, 10], "segmentation": [[float(v) for v in ring]]}
    ]
    ds = CocoDataset(tmp_path, _write(tmp_path, data), num_vertices=8)
    s = ds[1]
    assert s["polygon_counts"].tolist() == [8] and _area(s["polygons"][0]) > 0
    ring_pts = torch.tensor(ring, dtype=torch.float32).view(-1, 2)
    # every kept vertex is one of the 16 ring points (every second hull vertex)
    assert all(torch.isclose(ring_pts, v, atol=1e-5).all(1).any() for v in s["polygons"][0])


def test_empty_image_and_zero_size_box(tmp_path):
    data = _coco()
    data["annotations"] = [{"id": 1, "image_id": 2, "category_id": 7, "bbox": [4, 2, 0, 8]}]
    with pytest.warns(UserWarning, match="zero-width or zero-height"):
        ds = CocoDataset(tmp_path, _write(tmp_path, data))
    assert ds[0]["labels"].shape == (0,) and ds[0]["polygons"].shape == (0, 8, 2)


def _bad(mutate) -> dict:
    data = _coco()
    mutate(data)
    return data


BAD = [
    (lambda d: d["annotations"][0].pop("bbox"), "annotation id 1", "'bbox'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotation id 1", "'bbox'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "annotation id 1", "negative"),
    (lambda d: d["annotations"][1].update(category_id=99), "annotation id 2", "'category_id'"),
    (lambda d: d["annotations"][1].update(image_id=99), "annotation id 2", "'image_id'"),
    (lambda d: d["annotations"][1].update(segmentation=[[1, 2, 3, 4, 5]]), "annotation id 2", "'segmentation'"),
    (lambda d: d["annotations"][1].update(segmentation=[[1, 2, "x", 4, 5, 6]]), "annotation id 2", "not a finite"),
    (lambda d: d["annotations"][1].update(segmentation="poly"), "annotation id 2", "'segmentation'"),
    (lambda d: d["annotations"][3].update(segmentation={"size": [1, 1]}), "annotation id 4", "not RLE"),
    (lambda d: d["annotations"][3].update(iscrowd=2), "annotation id 4", "'iscrowd'"),
    (lambda d: d["annotations"][2].update(id=1), "annotation id 1", "duplicate"),
    (lambda d: d["annotations"][2].pop("id"), "annotation #2", "'id'"),
    (lambda d: d["images"][0].pop("width"), "image id 5", "'width'"),
    (lambda d: d["categories"][1].update(id="3"), "category #1", "'id'"),
    (lambda d: d.update(annotations={}), "instances.json", "'annotations'"),
    (lambda d: d.pop("images"), "instances.json", "'images'"),
]


@pytest.mark.parametrize(("mutate", "where", "what"), BAD)
def test_bad_structure_names_file_and_annotation(tmp_path, mutate, where, what):
    path = _write(tmp_path, _bad(mutate))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as err:
            CocoDataset(tmp_path, path)
    text = str(err.value)
    assert "instances.json" in text and where in text and what in text, text


def test_not_json_and_wrong_image_size(tmp_path):
    with pytest.raises(ValueError, match="instances.json: not valid JSON"):
        CocoDataset(tmp_path, _write(tmp_path, "{not json"))
    data = _coco()
    data["images"][0]["width"] = 31
    data["annotations"] = []
    ds = CocoDataset(tmp_path, _write(tmp_path, data))
    with pytest.raises(ValueError, match="image id 5"):
        ds[1]
