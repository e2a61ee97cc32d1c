"""collate: shapes and normalization on a hand case, round trip through the criterion's target padding."""

from __future__ import annotations

import pytest
import torch

from detloss.criteria.targets import pad_targets
from detloss.data.collate import collate
from detloss.data.shapes import ShapesDataset
from detloss.data.transforms import letterbox


def _samples() -> list[dict[str, torch.Tensor]]:
    """Image 0 (10 x 20): two objects, triangles in 3 slots; image 1: none, 4 slots; image 2: one square."""
    a = {
        "image": torch.zeros(3, 10, 20),
        "labels": torch.tensor([1, 2]),
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 5.0], [10.0, 5.0, 20.0, 10.0]]),
        "polygons": torch.tensor([[[0.0, 0.0], [10.0, 0.0], [0.0, 5.0]], [[10.0, 5.0], [20.0, 5.0], [20.0, 10.0]]]),
        "polygon_counts": torch.tensor([3, 3]),
        "masks": torch.zeros(10, 20, dtype=torch.long),
    }
    b = {
        "image": torch.ones(3, 10, 20),
        "labels": torch.zeros(0, dtype=torch.long),
        "boxes": torch.zeros(0, 4),
        "polygons": torch.zeros(0, 4, 2),
        "polygon_counts": torch.zeros(0, dtype=torch.long),
        "masks": torch.zeros(10, 20, dtype=torch.long),
    }
    c = {
        "image": torch.full((3, 10, 20), 0.5),
        "labels": torch.tensor([0]),
        "boxes": torch.tensor([[2.0, 2.0, 6.0, 6.0]]),
        "polygons": torch.tensor([[[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]]]),
        "polygon_counts": torch.tensor([4]),
        "masks": torch.zeros(10, 20, dtype=torch.long),
    }
    return [a, b, c]


def test_collate_hand_case():
    images, t = collate(_samples())
    assert images.shape == (3, 3, 10, 20)
    assert torch.equal(images[1], torch.ones(3, 10, 20))
    assert t["batch_idx"].tolist() == [0, 0, 2] and t["cls"].tolist() == [1, 2, 0]
    assert t["batch_idx"].dtype == torch.int64 and t["cls"].dtype == torch.int64
    expected = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.2, 0.4, 0.2, 0.4]])
    assert torch.allclose(t["bboxes"], expected)
    assert t["polygons"].shape == (3, 4, 2)  # K = the largest in the batch
    assert torch.allclose(t["polygons"][0], torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5], [0.0, 0.0]]))
    assert torch.allclose(t["polygons"][2], torch.tensor([[0.1, 0.2], [0.3, 0.2], [0.3, 0.6], [0.1, 0.6]]))
    assert t["polygon_counts"].tolist() == [3, 3, 4]
    assert len(t["masks"]) == 3 and t["masks"][0].shape == (10, 20)


def test_collate_round_trips_through_pad_targets():
    samples = _samples()
    images, t = collate(samples)
    padded = pad_targets(t, images.shape[0], tuple(images.shape[-2:]), torch.device("cpu"))
    assert torch.allclose(padded.boxes[0, :2], samples[0]["boxes"])
    assert torch.allclose(padded.boxes[2, :1], samples[2]["boxes"])
    assert padded.mask.tolist() == [[True, True], [False, False], [True, False]]
    assert torch.allclose(padded.polygons[2, 0], samples[2]["polygons"][0])
    assert padded.polygon_valid[0, 0].tolist() == [True, True, True, False]


def test_collate_letterboxed_shapes():
    ds = ShapesDataset(3, image_size=(40, 56), seed=2)
    batch = [letterbox(ds[i], 48) for i in range(3)]
    images, t = collate(batch)
    n = sum(s["labels"].shape[0] for s in batch)
    assert images.shape == (3, 3, 48, 48)
    assert t["bboxes"].shape == (n, 4) and t["polygons"].shape == (n, 8, 2) and t["polygon_counts"].shape == (n,)
    assert (t["bboxes"] >= 0).all() and (t["bboxes"] <= 1).all()
    valid = torch.arange(8) < t["polygon_counts"].view(-1, 1)
    assert (t["polygons"][valid] >= 0).all() and (t["polygons"][valid] <= 1).all()


def test_collate_box_only_and_errors():
    s = {"image": torch.zeros(3, 8, 8), "labels": torch.tensor([0]), "boxes": torch.tensor([[0.0, 0.0, 4.0, 8.0]])}
    _, t = collate([s])
    assert set(t) == {"batch_idx", "cls", "bboxes"}
    assert torch.allclose(t["bboxes"], torch.tensor([[0.25, 0.5, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="one shape"):
        collate([s, {**s, "image": torch.zeros(3, 8, 9)}])
    with pytest.raises(ValueError, match="polygons"):
        collate([s, _samples()[0] | {"image": torch.zeros(3, 8, 8)}])
    with pytest.raises(ValueError, match="at least one"):
        collate([])


def test_ignore_objects_leave_the_targets_for_ignore_boxes():
    a = {
        "image": torch.zeros(3, 10, 20),
        "labels": torch.tensor([1, 0]),
        "boxes": torch.tensor([[0.0, 0.0, 10.0, 5.0], [10.0, 0.0, 20.0, 10.0]]),
        "ignore": torch.tensor([False, True]),
    }
    b = {"image": torch.zeros(3, 10, 20), "labels": torch.tensor([2]), "boxes": torch.tensor([[4.0, 2.0, 8.0, 6.0]])}
    _, t = collate([a, b])
    assert t["batch_idx"].tolist() == [0, 1] and t["cls"].tolist() == [1, 2]
    # (10, 0, 20, 10) in a 20 x 10 image: centre (15, 5) / (20, 10), size (10, 10) / (20, 10)
    assert t["ignore_bboxes"].tolist() == [[0.75, 0.5, 0.5, 1.0]] and t["ignore_batch_idx"].tolist() == [0]
    assert "ignore_bboxes" not in collate([b, b])[1]
    with pytest.raises(ValueError, match="masks"):
        collate([{**a, "masks": torch.zeros(10, 20)}])
