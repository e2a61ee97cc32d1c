"""VocDataset: standard and loose layouts, difficult objects, class names, errors naming file and element."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detloss.data.voc import VocDataset, parse_voc_xml

PIL = pytest.importorskip("PIL.Image")


def _xml(filename: str, objects: list[tuple]) -> str:
    """``objects``: ``(name, xmin, ymin, xmax, ymax[, difficult])``."""
    parts = [f"<annotation><folder>x</folder><filename>{filename}</filename>"]
    for o in objects:
        diff = f"<difficult>{o[5]}</difficult>" if len(o) > 5 else ""
        parts.append(
            f"<object><name>{o[0]}</name><pose>Unspecified</pose>{diff}"
            f"<bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _png(path: Path, h: int, w: int, value: int = 51) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(np.full((h, w, 3), value, dtype=np.uint8)).save(path)


def _standard(root: Path) -> None:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    _png(root / "JPEGImages" / "a.png", 20, 40)
    _png(root / "JPEGImages" / "b.png", 30, 30)
    (root / "Annotations" / "a.xml").write_text(_xml("a.png", [("dog", 1, 2, 11, 12), ("cat", 5, 5, 40, 20, 1)]))
    (root / "Annotations" / "b.xml").write_text(_xml("b.png", [("cat", 0, 0, 10.5, 7.25, 0)]))
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n\nb\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")


def test_standard_layout_boxes_labels_difficult(tmp_path):
    _standard(tmp_path)
    ds = VocDataset(tmp_path, "train", num_vertices=6)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 2
    s = ds[0]
    assert s["image"].shape == (3, 20, 40) and torch.allclose(s["image"], torch.full((3, 20, 40), 0.2))
    assert s["labels"].tolist() == [1, 0]  # dog -> 1, cat -> 0 (sorted names)
    assert s["boxes"].tolist() == [[1.0, 2.0, 11.0, 12.0], [5.0, 5.0, 40.0, 20.0]]
    assert s["ignore"].tolist() == [False, True] and s["is_polygon"].tolist() == [False, False]
    assert s["polygons"].shape == (2, 6, 2) and s["polygon_counts"].tolist() == [4, 4]
    assert s["polygons"][0, :4].tolist() == [[1.0, 2.0], [11.0, 2.0], [11.0, 12.0], [1.0, 12.0]]
    assert (s["polygons"][:, 4:] == 0).all() and Path(s["path"]) == tmp_path / "JPEGImages" / "a.png"
    t = ds[1]
    assert t["labels"].tolist() == [0] and t["boxes"].tolist() == [[0.0, 0.0, 10.5, 7.25]]
    assert t["ignore"].tolist() == [False]
    val = VocDataset(tmp_path, "val")
    assert val.class_names == ["cat"] and len(val) == 1  # names come from the split read


def test_explicit_class_names_fix_ids_and_reject_unknown(tmp_path):
    _standard(tmp_path)
    ds = VocDataset(tmp_path, "train", class_names=["dog", "bird", "cat"])
    assert ds.num_classes == 3 and ds[0]["labels"].tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"a\.xml: <object> 1: <name> 'cat' is not in class_names"):
        VocDataset(tmp_path, "train", class_names=["dog"])


def test_loose_xml_beside_images(tmp_path):
    _png(tmp_path / "tile_1.png", 16, 16)
    _png(tmp_path / "tile_2.tif", 16, 16)  # TIFF, as aerial crops ship
    (tmp_path / "tile_2.xml").write_text(_xml("tile_2.tif", [("Tree", 2, 3, 8, 9)]))
    (tmp_path / "tile_1.xml").write_text(_xml("tile_1.png", [("Tree", 0, 0, 16, 16), ("Tree", 4, 4, 6, 6)]))
    ds = VocDataset(tmp_path)
    assert [p.name for p in ds.image_paths] == ["tile_1.png", "tile_2.tif"] and ds.class_names == ["Tree"]
    assert ds[0]["boxes"].tolist() == [[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 6.0, 6.0]]
    one = VocDataset(tmp_path / "tile_2.xml")
    assert len(one) == 1 and one[0]["boxes"].tolist() == [[2.0, 3.0, 8.0, 9.0]] and one[0]["labels"].tolist() == [0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("<annotation><filename>i.png</filename><object>", r"bad\.xml: malformed XML"),
        ("<annotation><object><name>a</name></object></annotation>", r"bad\.xml: missing <filename>"),
        (_xml("i.png", [("a", 1, 1, 2, 2)]).replace("<bndbox>", "<box>").replace("</bndbox>", "</box>"),
         r"bad\.xml: <object> 0 \('a'\): missing <bndbox>"),
        (_xml("i.png", [("a", 1, 1, 2, 2), ("b", 1, "x1", 2, 2)]),
         r"bad\.xml: <object> 1 \('b'\): <ymin> 'x1' is not a number"),
        (_xml("i.png", [("a", 1, 1, 2, 2)]).replace("<xmax>2</xmax>", ""),
         r"bad\.xml: <object> 0 \('a'\): missing <bndbox><xmax>"),
        (_xml("i.png", [("a", 3, 1, 3, 2)]), r"bad\.xml: <object> 0 \('a'\): <bndbox> needs xmin < xmax"),
        (_xml("i.png", [("a", 1, 1, 2, 2, 2)]), r"bad\.xml: <object> 0 \('a'\): <difficult> must be 0 or 1"),
        (_xml("i.png", [("a", 1, 1, 2, 2)]).replace("<name>a</name>", ""), r"bad\.xml: <object> 0: missing <name>"),
        (_xml("gone.png", [("a", 1, 1, 2, 2)]), r"bad\.xml: <filename> 'gone\.png': image .*gone\.png not found"),
    ],
)
def test_malformed_files_name_file_and_element(tmp_path, body, message):
    _png(tmp_path / "i.png", 8, 8)
    (tmp_path / "bad.xml").write_text(body)
    with pytest.raises(ValueError, match=message):
        VocDataset(tmp_path)


def test_box_past_the_image_is_an_error_on_read(tmp_path):
    _png(tmp_path / "i.png", 8, 10)  # H = 8, W = 10
    (tmp_path / "i.xml").write_text(_xml("i.png", [("a", 1, 1, 10, 8), ("a", 1, 1, 10, 8.5)]))
    ds = VocDataset(tmp_path)
    with pytest.raises(ValueError, match=r"i\.xml: object 1 box .* reaches past the image"):
        ds[0]


def test_standard_layout_errors(tmp_path):
    _standard(tmp_path)
    with pytest.raises(ValueError, match=r"test\.txt: split list not found"):
        VocDataset(tmp_path, "test")
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("a\nzzz\n")
    with pytest.raises(ValueError, match=r"test\.txt, line 2: annotation .*zzz\.xml not found"):
        VocDataset(tmp_path, "test")


def test_parse_voc_xml_is_hand_checked(tmp_path):
    (tmp_path / "x.xml").write_text(_xml("x.jpg", [("b", 1, 2, 3, 4, 1), ("a", 0.5, 0, 9, 9)]))
    assert parse_voc_xml(tmp_path / "x.xml") == {
        "filename": "x.jpg",
        "names": ["b", "a"],
        "boxes": [[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, 9.0, 9.0]],
        "difficult": [True, False],
    }
