"""COCO AP: equal to pycocotools COCOeval (bbox) on randomized data, hand-worked cases, polygons."""

from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import pytest
import torch

from detloss.evaluate import box_map, polygon_map
from detloss.evaluate.coco import IOU_THRESHOLDS, RECALL_THRESHOLDS

NUM_CLASSES = 4  # class 2: GT but never predicted; class 3: predicted but never in GT


def _random_dataset(seed: int, num_images: int = 30):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    def boxes(n):
        xy = rand(n, 2) * 300
        wh = 4 + rand(n, 2) * rand(n, 1) * 140  # straddles COCO's 32**2 and 96**2 area limits
        return torch.cat([xy, xy + wh], 1)

    preds, gts = [], []
    for i in range(num_images):
        m = 0 if i % 7 == 3 else int(torch.randint(1, 9, (1,), generator=g))  # some images without GT
        gb = boxes(m)
        gl = torch.randint(0, 3, (m,), generator=g)
        if m and i % 5 == 0:
            gb = torch.cat([gb, gb[:1] + 0.5])  # near-duplicate GT: competing matches
            gl = torch.cat([gl, gl[:1]])
        if i % 9 == 4:  # GT but no predictions
            pb, ps, pl = torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)
        else:
            keep = gl != 2  # class 2 is never predicted
            # jittered copies: IoU over 0.5..0.95, a few flipped (x2 < x1: negative area, ignored by COCO)
            tp = gb[keep] + (rand(int(keep.sum()), 4) - 0.5) * 12
            dup = tp[:2] + (rand(min(2, len(tp)), 4) - 0.5) * 6  # duplicates -> FPs after a match
            fp = boxes(int(torch.randint(0, 6, (1,), generator=g)))
            pb = torch.cat([tp, dup, fp])
            pl = torch.cat([gl[keep], gl[keep][:2], torch.tensor([0, 1, 3, 3, 1, 0])[: len(fp)]])
            ps = (rand(len(pb)) * 10).round() / 10  # coarse scores: ties within and across images
        gts.append({"boxes": gb, "labels": gl})
        preds.append({"boxes": pb, "scores": ps, "labels": pl})
    # many predictions of one class in one image: max_dets truncation (at 10 and 100)
    extra = boxes(120)
    preds[1] = {
        "boxes": torch.cat([preds[1]["boxes"], extra]),
        "scores": torch.cat([preds[1]["scores"], rand(120)]),
        "labels": torch.cat([preds[1]["labels"], torch.zeros(120, dtype=torch.long)]),
    }
    return preds, gts


def _xywh(b):
    b = b.double()
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b.tolist()]


def _cocoeval(preds, gts):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = []
    for i, g in enumerate(gts):
        for box, lab in zip(_xywh(g["boxes"]), g["labels"].tolist(), strict=True):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": lab + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    res = []
    for i, p in enumerate(preds):
        for box, s, lab in zip(_xywh(p["boxes"]), p["scores"].tolist(), p["labels"].tolist(), strict=True):
            res.append({"image_id": i + 1, "category_id": lab + 1, "bbox": box, "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {
            "images": [{"id": i + 1} for i in range(len(gts))],
            "categories": [{"id": c + 1} for c in range(NUM_CLASSES)],
            "annotations": anns,
        }
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(res)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _coco_mean(p):
    return float(np.mean(p[p > -1])) if (p > -1).any() else -1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_box_map_equals_pycocotools(seed):
    pytest.importorskip("pycocotools")
    preds, gts = _random_dataset(seed)
    ev = _cocoeval(preds, gts)
    prec = ev.eval["precision"]  # (T, R, K, A, M); A: all, small, medium, large; M: 1, 10, 100
    for a, area_range in enumerate([None, (0, 32**2), (32**2, 96**2), (96**2, 1e5**2)]):
        for m, max_dets in [(1, 10), (2, 100)]:
            kw = {} if area_range is None else {"area_range": area_range}
            ours = box_map(preds, gts, max_dets=max_dets, **kw)
            p = prec[..., a, m]
            assert ours["map"] == pytest.approx(_coco_mean(p), abs=1e-9)
            assert ours["map50"] == pytest.approx(_coco_mean(p[0]), abs=1e-9)
            assert ours["map75"] == pytest.approx(_coco_mean(p[5]), abs=1e-9)
            for c in range(NUM_CLASSES):
                expected = _coco_mean(p[:, :, c]) if (p[:, :, c] > -1).any() else -1.0
                if c in ours["per_class"]:
                    assert ours["per_class"][c] == pytest.approx(expected, abs=1e-9), (c, a, m)
                    expected50 = _coco_mean(p[0, :, c]) if (p[0, :, c] > -1).any() else -1.0
                    assert ours["per_class50"][c] == pytest.approx(expected50, abs=1e-9), (c, a, m)
                else:
                    assert expected == -1.0
    ours = box_map(preds, gts)
    assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-9)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-9)
    assert ours["map75"] == pytest.approx(ev.stats[2], abs=1e-9)
    assert ours["per_class"][3] == -1.0  # predicted, never in GT
    assert ours["per_class"][2] == 0.0  # in GT, never predicted
    assert 0.0 < ours["map"] < 1.0


def test_thresholds_are_numpy_linspace():
    assert np.array_equal(IOU_THRESHOLDS.numpy(), np.linspace(0.5, 0.95, 10))
    assert np.array_equal(RECALL_THRESHOLDS.numpy(), np.linspace(0.0, 1.0, 101))


def _box(*xyxy):
    return torch.tensor([xyxy], dtype=torch.float32)


def test_perfect_predictions():
    gb = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 50.0], [5.0, 5.0, 15.0, 25.0]])
    gl = torch.tensor([0, 1, 1])
    out = box_map([{"boxes": gb, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": gl}], [{"boxes": gb, "labels": gl}])
    for key in ("map", "map50", "map75"):
        assert out[key] == pytest.approx(1.0, abs=1e-12)
    assert out["per_class"] == pytest.approx({0: 1.0, 1: 1.0}, abs=1e-12)
    assert out["precision"] == 1.0 and out["recall"] == 1.0


def test_false_positive_ranked_above_true_positive():
    gt = {"boxes": _box(0, 0, 10, 10), "labels": torch.tensor([0])}
    pred = {
        "boxes": torch.cat([_box(50, 50, 60, 60), _box(0, 0, 10, 10)]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([0, 0]),
    }
    # cumulative tp [0, 1], fp [1, 1]: recall [0, 1], precision [0, 1/2] -> monotone [1/2, 1/2]
    assert box_map([pred], [gt])["map"] == pytest.approx(0.5, abs=1e-12)

    gt2 = {"boxes": torch.cat([_box(0, 0, 10, 10), _box(20, 0, 30, 10)]), "labels": torch.tensor([0, 0])}
    pred2 = {
        "boxes": torch.cat([_box(0, 0, 10, 10), _box(50, 50, 60, 60), _box(20, 0, 30, 10)]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([0, 0, 0]),
    }
    # TP, FP, TP: recall [.5, .5, 1], precision [1, 1/2, 2/3] -> [1, 2/3, 2/3]:
    # recall thresholds 0.00..0.50 (51) read 1, 0.51..1.00 (50) read 2/3
    assert box_map([pred2], [gt2])["map"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)


def test_iou_between_thresholds():
    gt = {"boxes": _box(0, 0, 10, 10), "labels": torch.tensor([0])}
    pred = {"boxes": _box(0, 0, 10, 7.7), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}  # IoU 0.77
    out = box_map([pred], [gt])
    assert out["map"] == pytest.approx(0.6, abs=1e-12)  # matched at .50 .. .75 (6 of 10 thresholds)
    assert out["map50"] == pytest.approx(1.0, abs=1e-12)
    assert out["map75"] == pytest.approx(1.0, abs=1e-12)
    assert box_map([pred], [gt], iou_thresholds=[0.8, 0.9])["map"] == 0.0
    assert box_map([pred], [gt], iou_thresholds=[0.8, 0.9])["map50"] == pytest.approx(1.0, abs=1e-12)


def test_precision_recall_dets_per_image():
    a, b = _box(0, 0, 10, 10), _box(20, 20, 30, 30)
    gts = [
        {"boxes": torch.cat([a, b]), "labels": torch.tensor([0, 0])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    preds = [
        {
            "boxes": torch.cat([a, a, b, _box(50, 50, 60, 60), b]),
            "scores": torch.tensor([0.9, 0.8, 0.1, 0.6, 0.7]),
            "labels": torch.tensor([0, 0, 0, 0, 1]),  # duplicate of a; b found only at 0.1; wrong class on b
        },
        {"boxes": _box(0, 0, 5, 5), "scores": torch.tensor([0.3]), "labels": torch.tensor([1])},
    ]
    out = box_map(preds, gts, conf=0.25)
    # score >= 0.25: 0.9 (TP a), 0.8 (dup), 0.6 (FP), 0.7 (wrong class), 0.3 (no GT): 1 TP of 5; 1 of 2 GT found
    assert out["precision"] == pytest.approx(1 / 5)
    assert out["recall"] == pytest.approx(1 / 2)
    assert out["dets_per_image"] == pytest.approx(5 / 2)
    assert out["per_class"][1] == -1.0
    empty = box_map(
        [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}], gts[:1]
    )
    assert (
        empty["map"] == 0.0 and empty["precision"] == 0.0 and empty["recall"] == 0.0 and empty["dets_per_image"] == 0.0
    )


def _rect(boxes):
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([torch.stack(v, -1) for v in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))], 1)


def _proper(b):
    return torch.cat([torch.minimum(b[:, :2], b[:, 2:]), torch.maximum(b[:, :2], b[:, 2:])], 1)


def test_polygon_map_of_rectangles_equals_box_map():
    preds, gts = _random_dataset(3, num_images=12)
    # the jitter can flip a box (x2 < x1): COCO's box IoU is 0 there, a polygon is just a rectangle
    preds = [{**p, "boxes": _proper(p["boxes"])} for p in preds]
    ppreds = [{"polygons": _rect(p["boxes"]), "scores": p["scores"], "labels": p["labels"]} for p in preds]
    pgts = [{"polygons": _rect(g["boxes"]), "labels": g["labels"]} for g in gts]
    for kw in ({}, {"area_range": (32**2, 96**2)}):
        ours, ref = polygon_map(ppreds, pgts, **kw), box_map(preds, gts, **kw)
        for key in ("map", "map50", "map75", "precision", "recall", "dets_per_image"):
            assert ours[key] == pytest.approx(ref[key], abs=1e-9), key
        assert ours["per_class"] == pytest.approx(ref["per_class"], abs=1e-9)


def test_polygon_map_triangles():
    tri = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])  # area 8
    # a triangle inside it, area 2 * 3.1 = 6.2: IoU 0.775, padded to 4 vertices (vertex count 3)
    inner = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 3.1], [float("nan"), float("nan")]]])
    far = torch.tensor([[[10.0, 10.0], [14.0, 10.0], [10.0, 14.0], [12.0, 13.0]]])
    preds = [
        {
            "polygons": torch.cat([inner, far]),
            "polygon_counts": torch.tensor([3, 4]),
            "scores": torch.tensor([0.9, 0.2]),
            "labels": torch.tensor([0, 0]),
        },
        {"polygons": torch.zeros(0, 4, 2), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    gts = [
        {"polygons": tri, "labels": torch.tensor([0])},
        {"polygons": tri + 5.0, "polygon_valid": torch.ones(1, 3, dtype=torch.bool), "labels": torch.tensor([0])},
    ]
    out = polygon_map(preds, gts)
    # per matched threshold: TP then FP, 2 GT: recall [.5, .5], precision [1, 1/2] -> 51 of 101 points read 1
    assert out["map50"] == pytest.approx(51 / 101, abs=1e-12)
    assert out["map75"] == pytest.approx(51 / 101, abs=1e-12)
    assert out["map"] == pytest.approx(0.6 * 51 / 101, abs=1e-12)  # matched at .50 .. .75
    assert out["precision"] == 1.0 and out["recall"] == 0.5 and out["dets_per_image"] == 0.5


def test_bad_inputs_raise():
    gt = {"boxes": _box(0, 0, 1, 1), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match="one entry per image"):
        box_map([], [gt])
    with pytest.raises(ValueError, match="scores"):
        box_map([{"boxes": _box(0, 0, 1, 1), "labels": torch.tensor([0])}], [gt])
    with pytest.raises(ValueError, match="labels"):
        box_map([{"boxes": _box(0, 0, 1, 1), "scores": torch.ones(1), "labels": torch.ones(1)}], [gt])
    with pytest.raises(ValueError, match="polygons"):
        polygon_map(
            [{"polygons": torch.zeros(1, 3), "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)}], [gt]
        )


def test_equal_iou_takes_the_later_ground_truth():
    # det 1 overlaps both GTs with IoU exactly 0.5; pycocotools replaces its match on >=, so it takes
    # the later GT and det 2 (identical to the first GT) still finds its match
    gt = {"boxes": torch.cat([_box(0, 0, 10, 5), _box(0, 5, 10, 10)]), "labels": torch.tensor([0, 0])}
    pred = {
        "boxes": torch.cat([_box(0, 0, 10, 10), _box(0, 0, 10, 5)]),
        "scores": torch.tensor([0.9, 0.8]),
        "labels": torch.tensor([0, 0]),
    }
    out = box_map([pred], [gt])
    assert out["map50"] == pytest.approx(1.0, abs=1e-12)  # TP, TP
    # above 0.5: FP then TP of 2 GT -> precision 1/2 up to recall 1/2 (51 of 101 points)
    assert out["map"] == pytest.approx((1.0 + 9 * 0.5 * 51 / 101) / 10, abs=1e-12)
    if importlib.util.find_spec("pycocotools") is not None:
        assert out["map"] == pytest.approx(_cocoeval([pred], [gt]).stats[0], abs=1e-12)
