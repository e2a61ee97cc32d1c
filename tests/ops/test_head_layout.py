"""HeadLayout: channel slices, splits, flattening and box decoding of a dense head, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.ops.head_layout import HeadLayout


def _numbered(channels: int, h: int, w: int, level: int) -> torch.Tensor:
    """``(1, channels, h, w)`` with value ``1000 * channel + 100 * level + cell`` (cell row-major)."""
    ch = torch.arange(channels, dtype=torch.float32)[:, None, None] * 1000
    cell = torch.arange(h * w, dtype=torch.float32).view(1, h, w)
    return (ch + 100 * level + cell)[None]


def test_channel_groups_and_slices_by_hand():
    layout = HeadLayout(reg_max=4, num_classes=3, num_vertices=2)  # 16 | 3 | 4
    assert layout.groups == (16, 3, 0, 4)
    assert layout.num_channels == 23
    assert (layout.box, layout.cls, layout.poly) == (slice(0, 16), slice(16, 19), slice(19, 23))
    no_poly = HeadLayout(reg_max=1, num_classes=5)
    assert no_poly.groups == (4, 5, 0, 0) and no_poly.num_channels == 9 and no_poly.poly == slice(9, 9)
    assert no_poly.obj == slice(9, 9)


def test_split_gives_the_channels_of_each_part():
    layout = HeadLayout(reg_max=2, num_classes=3, num_vertices=1)
    x = _numbered(13, 2, 2, level=0)
    box, cls, obj, poly = layout.split(x)
    assert obj.shape == (1, 0, 2, 2)
    assert box[0, :, 0, 0].tolist() == [1000.0 * c for c in range(8)]
    assert cls[0, :, 0, 0].tolist() == [8000.0, 9000.0, 10000.0]
    assert poly[0, :, 1, 1].tolist() == [11003.0, 12003.0]
    rows = x.flatten(2).transpose(1, 2)  # channels-last (1, 4, 13)
    assert layout.split(rows, dim=-1)[1][0, 3].tolist() == [8003.0, 9003.0, 10003.0]


def test_flatten_numbers_anchors_level_by_level_row_major():
    layout = HeadLayout(reg_max=1, num_classes=2, num_vertices=1)  # 4 | 2 | 2 = 8 channels
    feats = [_numbered(8, 2, 3, level=0), _numbered(8, 1, 2, level=1)]
    cls = layout.flatten(feats, "cls")
    assert cls.shape == (1, 8, 2)
    # anchor a: level 0 cells 0..5 then level 1 cells 0..1; channel 4 and 5 are the classes
    expected = [[4000 + cell, 5000 + cell] for cell in range(6)] + [[4100 + cell, 5100 + cell] for cell in range(2)]
    assert cls[0].tolist() == expected
    assert layout.flatten(feats, "poly")[0, 7].tolist() == [6101.0, 7101.0]
    assert layout.flatten(feats, "box")[0, 6].tolist() == [100.0, 1100.0, 2100.0, 3100.0]


def test_decode_boxes_and_vertices_by_hand():
    layout = HeadLayout(reg_max=2, num_classes=1, num_vertices=2)
    # side 0: p = (1/4, 3/4) -> 0.75; side 1: uniform -> 0.5; side 2: (1/10, 9/10) -> 0.9; side 3: one-hot on 1
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0, 0.0, math.log(9.0), -100.0, 100.0]], dtype=torch.float64)
    assert layout.decode_boxes(logits).tolist()[0] == pytest.approx([0.75, 0.5, 0.9, 1.0], rel=1e-12)
    level = logits.T[None]  # (1, 8, 1): one level, channels first
    assert layout.decode_boxes(level, dim=1)[0, :, 0].tolist() == pytest.approx([0.75, 0.5, 0.9, 1.0], rel=1e-12)
    offsets = torch.tensor([[1.0, 2.0, 3.0, 4.0]])  # x0, y0, x1, y1
    assert layout.vertices(offsets).tolist() == [[[1.0, 2.0], [3.0, 4.0]]]


def test_split_levels_sizes_and_starts():
    layout = HeadLayout(reg_max=1, num_classes=2)
    head = layout.split_levels([torch.zeros(2, 6, 4, 4), torch.zeros(2, 6, 2, 3)], strides=(8, 16))
    assert head.sizes == [(4, 4), (2, 3)] and head.starts == [0, 16, 22] and head.poly is None
    assert [tuple(b.shape) for b in head.box] == [(2, 4, 16), (2, 4, 6)]
    assert [tuple(c.shape) for c in head.cls] == [(2, 2, 16), (2, 2, 6)]
    assert head.layout is layout


def test_bad_layouts_and_inputs_name_the_argument():
    for kwargs, name in (
        ({"reg_max": 0, "num_classes": 3}, "reg_max"),
        ({"reg_max": 2, "num_classes": 0}, "num_classes"),
        ({"reg_max": 2, "num_classes": 3, "num_vertices": -1}, "num_vertices"),
        ({"reg_max": 2.0, "num_classes": 3}, "reg_max"),
        ({"reg_max": True, "num_classes": 3}, "reg_max"),
    ):
        with pytest.raises(ValueError, match=name):
            HeadLayout(**kwargs)
    layout = HeadLayout(reg_max=2, num_classes=3)
    with pytest.raises(ValueError, match=r"11 \(4R \+ C \+ O \+ 2K\) channels in dim 1"):
        layout.split(torch.zeros(1, 12, 2, 2))
    with pytest.raises(ValueError, match=r"feats\[1\] must have shape \(2, 11, H, W\)"):
        layout.check([torch.zeros(2, 11, 2, 2), torch.zeros(2, 12, 1, 1)])
    with pytest.raises(ValueError, match="feats must be a list of 2"):
        layout.split_levels([torch.zeros(2, 11, 2, 2)], strides=(8, 16))
    with pytest.raises(ValueError, match="part must be one of"):
        layout.flatten([torch.zeros(2, 11, 2, 2)], "boxes")


def test_every_dense_head_reader_uses_the_criterion_layout():
    from detloss.criteria.dense import DenseCriterion
    from detloss.models.tiny_yolo import TinyDetector

    crit = DenseCriterion(num_classes=3, strides=(8, 16, 32), reg_max=4, num_vertices=5)
    model = TinyDetector(num_classes=3, reg_max=4, num_vertices=5, width=8)
    assert crit.layout == model.layout == HeadLayout(4, 3, 5)
    assert [f.shape[1] for f in model(torch.zeros(1, 3, 64, 64))] == [4 * 4 + 3 + 2 * 5] * 3


def test_objectness_part_sits_after_the_classes():
    with_obj = HeadLayout(reg_max=2, num_classes=3, num_vertices=1, objectness=True)  # 8 | 3 | 1 | 2
    assert with_obj.groups == (8, 3, 1, 2) and with_obj.num_channels == 14
    assert (with_obj.cls, with_obj.obj, with_obj.poly) == (slice(8, 11), slice(11, 12), slice(12, 14))
    without = HeadLayout(reg_max=2, num_classes=3, num_vertices=1)
    assert without.num_channels == 13 and without.obj == slice(11, 11) and without.poly == slice(11, 13)
    feats = [_numbered(14, 2, 2, level=0), _numbered(14, 1, 1, level=1)]
    obj = with_obj.flatten(feats, "obj")
    assert obj.shape == (1, 5, 1) and obj[0, :, 0].tolist() == [11000.0, 11001.0, 11002.0, 11003.0, 11100.0]
    assert with_obj.flatten(feats, "poly")[0, 4].tolist() == [12100.0, 13100.0]
    head = with_obj.split_levels(feats, strides=(8, 16))
    assert [tuple(o.shape) for o in head.obj] == [(1, 1, 4), (1, 1, 1)]
    assert without.split_levels([f[:, :13] for f in feats], strides=(8, 16)).obj is None
    with pytest.raises(ValueError, match="objectness must be a bool"):
        HeadLayout(reg_max=2, num_classes=3, objectness=1)
