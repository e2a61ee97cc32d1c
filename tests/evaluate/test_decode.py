"""decode_dense on hand-set head outputs: boxes, scores, labels and polygons equal hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import DenseCriterion
from detloss.evaluate import decode_dense

OFF = -1e4  # a logit whose sigmoid and softmax weight are exactly 0 in float32


def _feats(b, c, r, k, sizes):
    return [torch.full((b, 4 * r + c + 2 * k, h, w), OFF) for h, w in sizes]


def test_layout_is_dense_criterion():
    crit = DenseCriterion(num_classes=3, strides=(8,), reg_max=4, num_vertices=2)
    assert crit.num_channels == 4 * 4 + 3 + 2 * 2


def test_single_anchor_box_score_label_polygon():
    c, r, k, stride = 3, 4, 2, 8
    feats = _feats(1, c, r, k, [(2, 3)])
    f = feats[0][0]
    y, x = 1, 2  # anchor point ((2 + .5) * 8, (1 + .5) * 8) = (20, 12)
    f[0 * r + 2, y, x], f[0 * r + 3, y, x] = 0.0, math.log(3.0)  # left: 1/4 at bin 2, 3/4 at bin 3 -> 2.75
    f[1 * r + 1, y, x] = 5.0  # top: bin 1 -> 1
    f[2 * r + 0, y, x] = 5.0  # right: bin 0 -> 0
    f[3 * r : 4 * r, y, x] = 0.0  # bottom: uniform -> 1.5
    f[4 * r + 2, y, x] = math.log(0.9 / 0.1)  # class 2 at 0.9
    f[4 * r + c : 4 * r + c + 4, y, x] = torch.tensor([1.0, -1.0, -0.5, 2.0])  # vertices (1, -1), (-.5, 2)
    (det,) = decode_dense(feats, (stride,), c, r, num_vertices=k)
    torch.testing.assert_close(det["boxes"], torch.tensor([[20 - 2.75 * 8, 12 - 1 * 8, 20 + 0 * 8, 12 + 1.5 * 8]]))
    torch.testing.assert_close(det["scores"], torch.tensor([0.9]))
    assert det["labels"].tolist() == [2]
    assert det["labels"].dtype == torch.int64
    torch.testing.assert_close(det["polygons"], torch.tensor([[[28.0, 4.0], [16.0, 28.0]]]))


def test_levels_batch_nms_conf_and_max_det():
    c, r = 2, 2
    feats = _feats(2, c, r, 0, [(4, 4), (1, 1)])  # strides 8 and 32
    for f in feats:
        f[:, : 4 * r] = 0.0  # uniform DFL: every side 0.5 cell -> the box is the anchor's cell
    f0 = feats[0][0]  # image 0, stride 8; cell (y, x) box [8x, 8y, 8x + 8, 8y + 8]
    f0[4 * r + 0, 0, 0] = 3.0  # class 0: [0, 0, 8, 8]
    f0[: 4 * r, 0, 2] = torch.tensor([OFF, 0.0] * 4)  # every side 1 cell: [12, -4, 28, 12]
    f0[4 * r + 0, 0, 2] = 2.0
    f0[4 * r + 0, 1, 2] = 0.5  # [16, 8, 24, 16], IoU 32 / 288 = 1/9 with the box above: suppressed
    f0[4 * r + 1, 1, 1] = 1.0  # class 1: [8, 8, 16, 16]
    f0[4 * r + 1, 2, 2] = -8.0  # sigmoid 3.4e-4 < conf 0.001
    feats[1][1, 4 * r + 1, 0, 0] = 4.0  # image 1, stride 32, class 1: [0, 0, 32, 32]
    det0, det1 = decode_dense(feats, (8, 32), c, r, iou=0.1)
    sig = torch.sigmoid(torch.tensor([3.0, 2.0, 1.0, 4.0]))
    torch.testing.assert_close(det0["scores"], sig[:3])
    assert det0["labels"].tolist() == [0, 0, 1]
    torch.testing.assert_close(det0["boxes"], torch.tensor([[0.0, 0, 8, 8], [12, -4, 28, 12], [8, 8, 16, 16]]))
    torch.testing.assert_close(det1["boxes"], torch.tensor([[0.0, 0, 32, 32]]))
    torch.testing.assert_close(det1["scores"], sig[3:])
    assert det1["labels"].tolist() == [1]
    assert "polygons" not in det1
    assert len(decode_dense(feats, (8, 32), c, r, iou=0.2)[0]["scores"]) == 4  # 1/9 < 0.2: not suppressed
    assert [len(d["scores"]) for d in decode_dense(feats, (8, 32), c, r, iou=0.1, max_det=2)] == [2, 1]
    assert [len(d["scores"]) for d in decode_dense(feats, (8, 32), c, r, conf=0.9)] == [1, 1]


def test_reg_max_one_is_direct_ltrb():
    feats = _feats(1, 1, 1, 0, [(1, 1)])
    feats[0][0, :4, 0, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    feats[0][0, 4, 0, 0] = 0.0
    (det,) = decode_dense(feats, (16,), 1, 1)
    torch.testing.assert_close(det["boxes"], torch.tensor([[8.0 - 16, 8 - 32, 8 + 48, 8 + 64]]))
    torch.testing.assert_close(det["scores"], torch.tensor([0.5]))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"feats\[0\]"):
        decode_dense([torch.zeros(1, 5, 2, 2)], (8,), 3, 4)
    with pytest.raises(ValueError, match="strides"):
        decode_dense([torch.zeros(1, 19, 2, 2)], (8, 16), 3, 4)


def test_return_index_is_the_flat_anchor_index():
    c, r = 2, 2
    feats = _feats(2, c, r, 0, [(2, 3), (1, 2)])  # level 0: anchors 0..5 (row-major), level 1: anchors 6, 7
    for f in feats:
        f[:, : 4 * r] = 0.0
    feats[0][0, 4 * r + 0, 1, 2] = 3.0  # image 0, level 0, (y=1, x=2): 1 * 3 + 2 = 5
    feats[1][0, 4 * r + 1, 0, 1] = 2.0  # image 0, level 1, (y=0, x=1): 6 + 1 = 7
    feats[0][0, 4 * r + 1, 0, 1] = 1.0  # image 0, level 0, (y=0, x=1): 1
    feats[1][1, 4 * r + 0, 0, 0] = 4.0  # image 1, level 1, (y=0, x=0): 6
    det0, det1 = decode_dense(feats, (8, 16), c, r, return_index=True)
    assert det0["index"].tolist() == [5, 7, 1]  # sorted by score like every other key
    assert det1["index"].tolist() == [6]
    assert det0["index"].dtype == torch.int64
    # the index addresses the concatenated raw outputs: the best class logit read back there is the score
    flat = torch.cat([f.flatten(2) for f in feats], 2)  # (B, channels, A)
    for i, det in enumerate((det0, det1)):
        logits = flat[i, 4 * r :, det["index"]].max(0).values
        torch.testing.assert_close(det["scores"], logits.sigmoid())
    plain = decode_dense(feats, (8, 16), c, r)
    assert "index" not in plain[0]
    for a, b in zip(plain, (det0, det1), strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k])
    (empty,) = decode_dense(_feats(1, c, r, 0, [(2, 2)]), (8,), c, r, return_index=True)
    assert empty["index"].shape == (0,) and empty["index"].dtype == torch.int64


def test_objectness_scores_are_class_times_objectness():
    # two anchors 2 cells apart (no overlap): A has class 0 at sigmoid(3) = 0.9526 but objectness
    # sigmoid(-3) = 0.0474 -> 0.0452; B has class 1 at 1/2 and objectness sigmoid(2) = 0.8808 -> 0.4404
    c, r = 2, 1
    feats = [torch.full((1, 4 * r + c + 1, 1, 3), OFF)]
    f = feats[0][0]
    f[: 4 * r] = 0.4  # direct ltrb distances (reg_max 1): 0.8-cell boxes
    f[4, 0, 0], f[6, 0, 0] = 3.0, -3.0  # anchor A: class 0, objectness
    f[5, 0, 2], f[6, 0, 2] = 0.0, 2.0  # anchor B: class 1, objectness
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    (det,) = decode_dense(feats, (8,), c, r, conf=0.01, objectness=True, return_index=True)
    assert det["index"].tolist() == [2, 0] and det["labels"].tolist() == [1, 0]  # B first: the product ranks
    torch.testing.assert_close(det["scores"], torch.tensor([0.5 * sig(2.0), sig(3.0) * sig(-3.0)]))
    (strict,) = decode_dense(feats, (8,), c, r, conf=0.1, objectness=True)  # conf applies to the product
    assert strict["labels"].tolist() == [1]
    (plain,) = decode_dense([f[None, : 4 * r + c] for f in feats[0]], (8,), c, r, conf=0.01)
    torch.testing.assert_close(plain["scores"], torch.tensor([sig(3.0), 0.5]))  # without: class scores only
