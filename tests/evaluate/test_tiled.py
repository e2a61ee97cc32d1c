"""Tiled inference: a fake detector that reports the visible part of each ground-truth box in a tile;
after shifting, the border rule and NMS, every object comes back once with its exact box."""

from __future__ import annotations

import pytest
import torch

from detloss.evaluate.tiled import tiled_predict
from detloss.ops.tiles import grid_origins

H, W, SIZE, OVERLAP = 500, 600, 128, 48


def _image() -> torch.Tensor:
    # channel 0 holds x, channel 1 holds y (exact in float32), so a tile's corner is its first pixel
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)])


def _fake_predict(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, calls: list):
    def predict(tiles: torch.Tensor) -> list[dict]:
        out = []
        for t in tiles:
            x0, y0 = int(t[0, 0, 0]), int(t[1, 0, 0])
            calls.append((x0, y0))
            win = torch.tensor([x0, y0, min(x0 + SIZE, W), min(y0 + SIZE, H)], dtype=torch.float32)
            lo = torch.maximum(gt_boxes[:, :2], win[:2])
            hi = torch.minimum(gt_boxes[:, 2:], win[2:])
            vis = (hi - lo).clamp(min=0).prod(1) / (gt_boxes[:, 2:] - gt_boxes[:, :2]).prod(1)
            seen = vis > 0
            boxes = torch.cat([lo, hi], 1)[seen] - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
            corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
            out.append({"boxes": boxes, "scores": vis[seen], "labels": gt_labels[seen], "polygons": corners})
        return out

    return predict


def _objects() -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = grid_origins(W, SIZE, OVERLAP), grid_origins(H, SIZE, OVERLAP)
    boxes = [
        [xs[1] - 15, 30, xs[1] + 15, 60],  # across a vertical tile edge
        [100, ys[1] + SIZE - 20, 130, ys[1] + SIZE + 10],  # across a horizontal edge
        [xs[2] + SIZE - 17, ys[2] + SIZE - 13, xs[2] + SIZE + 20, ys[2] + SIZE + 21],  # across a 4-tile corner
        [W - 40, H - 30, W, H],  # on the image corner
        [0, 200, 25, 240],  # on the left border
        [300.5, 300.25, 340.75, 333.5],  # fractional
        [302, 302, 338, 330],  # overlapping the previous one, another class
    ]
    labels = [0, 1, 0, 2, 1, 0, 1]
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        x, y = torch.randint(W - 40, (), generator=g).item(), torch.randint(H - 40, (), generator=g).item()
        w, h = torch.randint(8, 40, (2,), generator=g).tolist()
        boxes.append([x, y, x + w, y + h])
        labels.append(3 + len(boxes) % 2)
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels)


def _rows(boxes: torch.Tensor, labels: torch.Tensor) -> list:
    return sorted(zip(labels.tolist(), map(tuple, boxes.tolist()), strict=True))


def test_straddling_objects_come_back_once_with_exact_boxes():
    boxes, labels = _objects()
    calls: list = []
    out = tiled_predict(_fake_predict(boxes, labels, calls), _image(), SIZE, OVERLAP, iou=0.6, batch=5)
    # each tile evaluated once
    grid = {(x, y) for y in grid_origins(H, SIZE, OVERLAP) for x in grid_origins(W, SIZE, OVERLAP)}
    assert sorted(calls) == sorted(grid)
    assert len(calls) == len(set(calls)) == 7 * 6  # x: 0, 80, ..., 400, 472; y: 0, 80, ..., 320, 372
    assert _rows(out["boxes"], out["labels"]) == _rows(boxes, labels)  # exact boxes, no duplicate, none lost
    assert out["scores"].tolist() == [1.0] * len(boxes)  # every one a whole view
    # polygons shifted with their boxes
    assert torch.equal(out["polygons"], out["boxes"][:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2))


def test_without_the_border_rule_pieces_remain():
    boxes, labels = _objects()
    out = tiled_predict(_fake_predict(boxes, labels, []), _image(), SIZE, OVERLAP, iou=0.6, drop_cut=False)
    assert len(out["boxes"]) > len(boxes)  # the cut pieces have IoU < 0.6 with the whole box
    # the first object [65, 95]: its piece in the second tile column starts at that tile's left edge x = 80
    assert [80.0, 30.0, 95.0, 60.0] in out["boxes"].tolist()


def test_an_object_no_tile_sees_whole_keeps_its_pieces():
    # 100 px wide, larger than the overlap: the border rule has nothing whole to prefer, so it keeps the pieces
    boxes, labels = torch.tensor([[70.0, 10.0, 180.0, 40.0]]), torch.tensor([0])
    out = tiled_predict(_fake_predict(boxes, labels, []), _image(), SIZE, OVERLAP, iou=0.6)
    assert len(out["boxes"]) >= 2
    assert out["boxes"][:, 0].min().item() == 70.0 and out["boxes"][:, 2].max().item() == 180.0


def test_max_det_and_bad_arguments():
    boxes, labels = _objects()
    out = tiled_predict(_fake_predict(boxes, labels, []), _image(), SIZE, OVERLAP, max_det=5)
    assert len(out["boxes"]) == 5
    with pytest.raises(ValueError, match="overlap"):
        tiled_predict(_fake_predict(boxes, labels, []), _image(), SIZE, SIZE)
    with pytest.raises(ValueError, match="image"):
        tiled_predict(_fake_predict(boxes, labels, []), _image()[0], SIZE, OVERLAP)
