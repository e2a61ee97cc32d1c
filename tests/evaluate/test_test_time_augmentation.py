"""Test-time augmentation: views mapped back exactly, and the merge's box voting by hand."""

from __future__ import annotations

import pytest
import torch

from detloss.evaluate.tta import VIEWS, merge_views, restore, transform, tta_predict

H, W = 12, 20
BOX = [3.0, 2.0, 9.0, 5.0]  # the bright block: columns 3..8, rows 2..4 (xyxy, exclusive ends)


def _image() -> torch.Tensor:
    image = torch.zeros(1, 1, H, W)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    image[0, 0, y1:y2, x1:x2] = 1.0
    return image


def _oracle(images: torch.Tensor) -> list[dict]:
    """A "detector" that reads the bright block's extent off the pixels of the view it is given, with its
    corners as a polygon (clockwise as drawn) and a second, lower-scored box of another class."""
    out = []
    for image in images:
        ys, xs = image[0].nonzero(as_tuple=True)
        x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1
        polygon = torch.tensor([[[x1, y1], [x2, y1], [x2, y2], [x1, y2]]])
        out.append({
            "boxes": torch.tensor([[x1, y1, x2, y2]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0]),
            "polygons": polygon,
        })  # fmt: skip
    return out


@pytest.mark.parametrize("views", ["flips", "d4"])
def test_every_view_maps_back_to_the_original_box(views):
    seen = []

    def predict(x):
        seen.append(tuple(x.shape[-2:]))
        return _oracle(x)

    det = tta_predict(predict, _image(), views, iou=0.5)[0]
    assert len(seen) == len(VIEWS[views])
    assert ((W, H) in seen) == (views == "d4")  # the transposed views see a W x H image
    torch.testing.assert_close(det["boxes"], torch.tensor([BOX]), rtol=0, atol=1e-5)  # voting: float rounding
    x1, y1, x2, y2 = BOX
    corners = {(x1, y1), (x2, y1), (x2, y2), (x1, y2)}
    assert {tuple(p) for p in det["polygons"][0].tolist()} == corners


@pytest.mark.parametrize("view", VIEWS["d4"])
def test_restore_undoes_each_view_exactly(view):
    det = restore(_oracle(transform(_image(), view))[0], view, H, W)
    assert det["boxes"].tolist() == [BOX]
    x1, y1, x2, y2 = BOX
    assert {tuple(p) for p in det["polygons"][0].tolist()} == {(x1, y1), (x2, y1), (x2, y2), (x1, y2)}


def test_merge_votes_boxes_of_one_class_and_keeps_the_best_score():
    a = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    b = {"boxes": torch.tensor([[1.0, 1.0, 11.0, 11.0]]), "scores": torch.tensor([0.6]), "labels": torch.tensor([0])}
    c = {"boxes": torch.tensor([[1.0, 1.0, 11.0, 11.0]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([1])}
    # IoU(a, b) = 81 / 119 = 0.68 > 0.5: b votes into a; c is another class and stays apart
    out = merge_views([a, b, c], iou=0.5, max_det=10)
    expected = (0.9 * torch.tensor([0.0, 0.0, 10.0, 10.0]) + 0.6 * torch.tensor([1.0, 1.0, 11.0, 11.0])) / 1.5
    torch.testing.assert_close(out["boxes"], torch.stack([expected, torch.tensor([1.0, 1.0, 11.0, 11.0])]))
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.5]))
    assert out["labels"].tolist() == [0, 1]
    # above the IoU threshold nothing is merged
    assert merge_views([a, b], iou=0.7, max_det=10)["boxes"].shape == (2, 4)


def test_merge_with_no_detections():
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert merge_views([empty, empty], iou=0.5, max_det=10)["boxes"].shape == (0, 4)


def test_unknown_views_are_refused():
    with pytest.raises(ValueError, match="views must be one of"):
        tta_predict(_oracle, _image(), "rot45")
