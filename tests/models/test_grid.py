"""grid_targets / decode_grid (hand-computed cells, encodings, ignore cells, shared cells, empty images,
decoding of perfect logits) and TinyGrid with MultigridCriterion."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from detloss.criteria.multigrid import MultigridCriterion
from detloss.assign.grid import grid_targets
from detloss.models import TinyGrid, decode_grid


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # two shared cores: intra-op threads contending with other processes slow the model tests down
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


S = 16  # stride; a 4 x 4 grid covers a 64 x 64 image, cell centres at 8, 24, 40, 56
# Image 0:
#   A (4, 4, 60, 44) class 2: 56 x 40, centre (32, 24) -> cell (row 1, col 2) (32 / 16 = 2.0, 24 / 16 = 1.5)
#   B (40, 36, 60, 60) class 1: 20 x 24, centre (50, 48) -> cell (3, 3) (50 / 16 = 3.125, 48 / 16 = 3.0)
A, B = [4.0, 4.0, 60.0, 44.0], [40.0, 36.0, 60.0, 60.0]
LOC_A = [0.0, 0.5, math.log(56 / 16), math.log(40 / 16)]
LOC_B = [0.125, 0.0, math.log(20 / 16), math.log(24 / 16)]
# Ignore cells from A, IoU(A, A re-centred on the cell) = a / (2 * 2240 - a) with a = (56 - |dx|)(40 - |dy|):
#   dx by column = 24, 8, 8, 24 -> 32, 48, 48, 32;  dy by row = 16, 0, 16, 32 -> 24, 40, 24, 8
#   row 0: 768/3712 = 0.207, 1152/3328 = 0.346, 0.346, 0.207
#   row 1: 1280/3200 = 0.400, 1920/2560 = 0.750, (object cell), 0.400
#   row 2: as row 0;  row 3: 256/4224 = 0.061, 384/4096 = 0.094, ...
# From B (480 px², centred (50, 48)): cells at dx 6 or 10, dy 8 give (20 - 6)(24 - 8) / (960 - 224) = 0.304
#   at (2, 3) and (20 - 10)(24 - 8) / (960 - 160) = 0.2 at (2, 2), (3, 2); farther cells less.
IGNORE_050 = {(1, 1)}  # A only
IGNORE_030 = {(0, 1), (0, 2), (1, 0), (1, 1), (1, 3), (2, 1), (2, 2)} | {(2, 3)}  # A's > 0.3, then B's (2, 3)


def _cells(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(rc) for rc in mask.nonzero().tolist()}


def test_object_cells_loc_and_labels_by_hand() -> None:
    t = grid_targets([torch.tensor([A, B])], [torch.tensor([2, 1])], (4, 4), S)
    assert t["loc"].shape == (1, 4, 4, 4) and t["loc"].dtype == torch.float32
    assert t["labels"].dtype == torch.long and t["object_mask"].dtype == torch.bool
    assert _cells(t["object_mask"][0]) == {(1, 2), (3, 3)}
    torch.testing.assert_close(t["loc"][0, 1, 2], torch.tensor(LOC_A))
    torch.testing.assert_close(t["loc"][0, 3, 3], torch.tensor(LOC_B))
    assert t["labels"][0, 1, 2] == 2 and t["labels"][0, 3, 3] == 1
    off = ~t["object_mask"][0]
    assert (t["labels"][0][off] == 0).all() and (t["loc"][0][off] == 0).all()


@pytest.mark.parametrize(("ignore_iou", "expected"), [(0.5, IGNORE_050), (0.3, IGNORE_030), (1.0, set())])
def test_ignore_cells_by_hand(ignore_iou: float, expected: set) -> None:
    t = grid_targets([torch.tensor([A, B])], [torch.tensor([2, 1])], (4, 4), S, ignore_iou=ignore_iou)
    assert _cells(t["ignore_mask"][0]) == expected
    assert not (t["ignore_mask"] & t["object_mask"]).any()


def test_two_boxes_in_one_cell_first_wins() -> None:
    c = [16.0, 16.0, 32.0, 32.0]  # centre (24, 24) -> cell (1, 1)
    d = [18.0, 20.0, 30.0, 26.0]  # centre (24, 23) -> cell (1, 1) too
    boxes, labels = [torch.tensor([c, d]), torch.tensor([d, c])], [torch.tensor([0, 1]), torch.tensor([1, 0])]
    t = grid_targets(boxes, labels, (4, 4), S)
    assert _cells(t["object_mask"][0]) == _cells(t["object_mask"][1]) == {(1, 1)}
    assert t["labels"][0, 1, 1] == 0 and t["labels"][1, 1, 1] == 1
    torch.testing.assert_close(t["loc"][0, 1, 1], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(t["loc"][1, 1, 1], torch.tensor([0.5, 23 / 16 - 1, math.log(12 / 16), math.log(6 / 16)]))


def test_image_without_boxes_and_centre_on_the_edge() -> None:
    # image 1: centre (64, 64) on the bottom-right image corner -> clamped into cell (3, 3), x offset 1.0
    t = grid_targets(
        [torch.zeros(0, 4), torch.tensor([[56.0, 56.0, 72.0, 72.0]])],
        [torch.zeros(0, dtype=torch.long), torch.tensor([4])],
        (4, 4),
        S,
    )
    assert not t["object_mask"][0].any() and not t["ignore_mask"][0].any()
    assert (t["loc"][0] == 0).all() and (t["labels"][0] == 0).all()
    assert _cells(t["object_mask"][1]) == {(3, 3)}
    torch.testing.assert_close(t["loc"][1, 3, 3], torch.tensor([1.0, 1.0, 0.0, 0.0]))


def test_grid_targets_bad_input() -> None:
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        grid_targets([torch.tensor([[10.0, 10.0, 10.0, 20.0]])], [torch.tensor([0])], (4, 4), S)  # zero width
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        grid_targets([torch.zeros(2, 5)], [torch.zeros(2, dtype=torch.long)], (4, 4), S)
    with pytest.raises(ValueError, match=r"labels\[0\]"):
        grid_targets([torch.tensor([A])], [torch.tensor([0, 1])], (4, 4), S)
    with pytest.raises(ValueError, match="boxes and labels"):
        grid_targets([torch.tensor([A])], [], (4, 4), S)


@pytest.mark.parametrize("cls_loss", ["bce", "ce"])
def test_decode_perfect_logits_returns_the_boxes(cls_loss: str) -> None:
    boxes = [torch.tensor([A, B]), torch.tensor([[10.0, 30.0, 23.0, 41.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([2, 1]), torch.tensor([0]), torch.zeros(0, dtype=torch.long)]
    t = grid_targets(boxes, labels, (4, 4), S)
    big = 20.0
    onehot = torch.nn.functional.one_hot(t["labels"], 3).bool() & t["object_mask"][..., None]
    out = {
        "loc": t["loc"],
        "obj": torch.where(t["object_mask"], big, -big),
        "cls": torch.where(onehot, big, -big),
    }
    dets = decode_grid(out, S, conf=0.5, cls_loss=cls_loss)
    assert len(dets) == 3
    for det, bx, lab in zip(dets, boxes, labels, strict=True):
        order = det["boxes"][:, 0].argsort()
        assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.long
        torch.testing.assert_close(det["boxes"][order], bx[bx[:, 0].argsort()], atol=1e-4, rtol=0)
        assert det["labels"][order].tolist() == lab[bx[:, 0].argsort()].tolist()
        assert (det["scores"] > 0.99).all()


def test_decode_scores_nms_and_clipping() -> None:
    # two cells predict the same box: NMS keeps the higher score; clipping to the image
    loc = torch.zeros(1, 2, 2, 4)
    loc[0, 0, 0] = torch.tensor([0.5, 0.5, math.log(2.0), math.log(2.0)])  # (0, 0, 16, 16) grown to 32 x 32 at (8, 8)
    loc[0, 0, 1] = torch.tensor([-0.5, 0.5, math.log(2.0), math.log(2.0)])  # the same box from the next cell
    obj = torch.tensor([[[2.0, 1.0], [-9.0, -9.0]]])
    cls = torch.zeros(1, 2, 2, 2)
    cls[..., 1] = 3.0
    det = decode_grid({"loc": loc, "obj": obj, "cls": cls}, 16, conf=0.2, cls_loss="ce", image_hw=(32, 32))[0]
    p1 = torch.softmax(torch.tensor([0.0, 3.0]), 0)[1]
    assert det["labels"].tolist() == [1]
    torch.testing.assert_close(det["scores"], (torch.sigmoid(torch.tensor(2.0)) * p1)[None])
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0.0, 24.0, 24.0]]))  # (-8, -8, 24, 24) clipped
    with pytest.raises(ValueError, match="cls_loss"):
        decode_grid({"loc": loc, "obj": obj, "cls": cls}, 16, cls_loss="focal")
    with pytest.raises(ValueError, match="out\\['loc'\\]"):
        decode_grid({"loc": loc[..., :3], "obj": obj, "cls": cls}, 16)


def test_tiny_grid_shapes_and_init() -> None:
    model = TinyGrid(num_classes=3, width=8)
    out = model(torch.zeros(2, 3, 64, 96))
    assert out["loc"].shape == (2, 4, 6, 4) and out["obj"].shape == (2, 4, 6) and out["cls"].shape == (2, 4, 6, 3)
    assert model.grid_hw((64, 96)) == (4, 6) and model.grid_hw((70, 90)) == (5, 6)
    assert TinyGrid(3, width=8, stride=8)(torch.zeros(1, 3, 64, 64))["obj"].shape == (1, 8, 8)
    # low objectness prior, loc at the prior box (up to the small random weights)
    assert torch.sigmoid(out["obj"]).mean() < 0.05
    assert model.head_parameters("poly") == [] and len(model.head_parameters("head")) > 0
    with pytest.raises(ValueError, match="stride"):
        TinyGrid(3, stride=12)
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(2, 1, 64, 64))


def test_multigrid_criterion_trains_tiny_grid() -> None:
    torch.manual_seed(0)
    model = TinyGrid(num_classes=3, width=8)
    images = torch.rand(2, 3, 64, 64)
    out = model(images)
    boxes, labels = [torch.tensor([A, B]), torch.zeros(0, 4)], [torch.tensor([2, 1]), torch.zeros(0, dtype=torch.long)]
    t = grid_targets(boxes, labels, out["obj"].shape[1:], model.stride)
    loss = MultigridCriterion(3, model.stride, cls_loss="bce").cell_loss(out, t).total
    assert torch.isfinite(loss)
    loss.backward()
    first_conv = model.backbone[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert model.pred.weight.grad.abs().sum() > 0
