"""rot90 / scale_crop / clip_polygon / HSV jitter on hand-worked coordinates; Augment is seeded and keeps
polygons valid."""

from __future__ import annotations

import pytest
import torch

from detloss.data.augment import Augment, clip_polygon, hsv_jitter, hsv_to_rgb, rgb_to_hsv, rot90, scale_crop
from detloss.data.shapes import ShapesDataset
from detloss.data.transforms import hflip, vflip

H, W = 20, 40


def _signed_area(p) -> float:
    p = torch.as_tensor(p, dtype=torch.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float((x * y.roll(-1) - x.roll(-1) * y).sum())


def _sample() -> dict[str, torch.Tensor]:
    """20 x 40: box 1 [4, 2, 12, 10] with the triangle (4, 2), (12, 2), (4, 10); box 2 [30, 15, 38, 19];
    box 3 [20, 11, 30, 13]; masks hold their pixels (ids 1, 2, 3)."""
    masks = torch.zeros(H, W, dtype=torch.long)
    masks[2:10, 4:12] = 1
    masks[15:19, 30:38] = 2
    masks[11:13, 20:30] = 3
    rect = lambda x1, y1, x2, y2: [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]  # noqa: E731
    return {
        "image": torch.rand(3, H, W, generator=torch.Generator().manual_seed(0)),
        "labels": torch.tensor([3, 5, 7]),
        "boxes": torch.tensor([[4.0, 2.0, 12.0, 10.0], [30.0, 15.0, 38.0, 19.0], [20.0, 11.0, 30.0, 13.0]]),
        "polygons": torch.tensor([[[4.0, 2.0], [12.0, 2.0], [4.0, 10.0], [0.0, 0.0]], rect(30.0, 15.0, 38.0, 19.0),
                                  rect(20.0, 11.0, 30.0, 13.0)]),
        "polygon_counts": torch.tensor([3, 4, 4]),
        "is_polygon": torch.tensor([True, False, False]),
        "masks": masks,
    }


def test_rot90_moves_box_polygon_mask_by_hand():
    s = _sample()
    out = rot90(s)  # (x, y) -> (y, W - x), the image becomes 40 high and 20 wide
    assert out["image"].shape == (3, W, H)
    assert torch.equal(out["boxes"][0], torch.tensor([2.0, 28.0, 10.0, 36.0]))
    assert torch.equal(out["polygons"][0, :3], torch.tensor([[2.0, 36.0], [2.0, 28.0], [10.0, 36.0]]))
    assert torch.equal(out["polygons"][0, 3], torch.tensor([0.0, 0.0]))  # padding untouched
    assert _signed_area(out["polygons"][0, :3]) == _signed_area(s["polygons"][0, :3]) == 32.0  # a rotation keeps order
    expected = torch.zeros(W, H, dtype=torch.bool)
    expected[28:36, 2:10] = True
    assert torch.equal(out["masks"] == 1, expected)
    # pixel (row 2, col 4) of the input lands at (row W - 1 - 4, col 2)
    assert torch.equal(out["image"][:, W - 1 - 4, 2], s["image"][:, 2, 4])
    # two quarter turns are both flips; four are the identity
    both = vflip(hflip(s))
    assert torch.equal(rot90(s, 2)["boxes"], both["boxes"]) and torch.equal(rot90(s, 2)["image"], both["image"])
    four = rot90(s, 4)
    for key in ("image", "boxes", "polygons", "masks"):
        assert torch.equal(four[key], s[key]), key


def test_clip_polygon_hand_cases():
    # a diamond cut by the window's right and bottom edges: a hexagon of area 50 - 4 - 4
    diamond = torch.tensor([[5.0, 0.0], [10.0, 5.0], [5.0, 10.0], [0.0, 5.0]])
    out = clip_polygon(diamond, 0, 0, 8, 8)
    assert out == [(5.0, 0.0), (8.0, 3.0), (8.0, 7.0), (7.0, 8.0), (3.0, 8.0), (0.0, 5.0)]
    assert _signed_area(out) == 42.0
    assert clip_polygon(diamond, 20, 20, 30, 30) == []
    assert clip_polygon(diamond, -1, -1, 11, 11) == [tuple(p) for p in diamond.tolist()]


def test_scale_crop_hand_case_and_drop_rule():
    s = _sample()
    # scale 2 -> 40 x 80, window at (left, top) = (10, 4): x -> 2x - 10, y -> 2y - 4
    out = scale_crop(s, 2.0, 10, 4, min_visible=0.25)
    # box 1 -> [-2, 0, 14, 16]: 14 * 16 of 16 * 16 visible, kept; a polygon object, so its box is the bounds
    # of its clipped triangle (-2, 0), (14, 0), (-2, 16) -> (0, 0), (14, 0), (0, 14)
    # box 2 -> [50, 26, 66, 34]: outside, dropped; box 3 -> [30, 18, 50, 22] -> [30, 18, 40, 20]: 20 of 80 = 0.25
    assert out["labels"].tolist() == [3, 7]
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 0.0, 14.0, 14.0], [30.0, 18.0, 40.0, 20.0]]))
    assert out["polygon_counts"].tolist() == [3, 4]
    assert torch.equal(out["polygons"][0, :3], torch.tensor([[0.0, 0.0], [14.0, 0.0], [0.0, 14.0]]))
    # the clipped rectangle, same cycle; it starts where the clip re-enters the window
    assert torch.equal(out["polygons"][1], torch.tensor([[30.0, 20.0], [30.0, 18.0], [40.0, 18.0], [40.0, 20.0]]))
    assert out["is_polygon"].tolist() == [True, False]
    assert out["image"].shape == (3, H, W)
    # masks: nearest-exact doubles every pixel; object 3 becomes id 2, object 2 (dropped) is gone
    m1 = torch.zeros(H, W, dtype=torch.bool)
    m1[0:16, 0:14] = True
    assert torch.equal(out["masks"] == 1, m1)
    m3 = torch.zeros(H, W, dtype=torch.bool)
    m3[18:20, 30:40] = True
    assert torch.equal(out["masks"] == 2, m3) and int(out["masks"].max()) == 2
    # just above the rule's threshold object 3 is dropped
    out = scale_crop(s, 2.0, 10, 4, min_visible=0.26)
    assert out["labels"].tolist() == [3] and int(out["masks"].max()) == 1


def test_scale_crop_identity_and_shrink_padding():
    s = _sample()
    same = scale_crop(s, 1.0, 0, 0, min_visible=1.0)
    for key in ("image", "boxes", "polygons", "masks", "labels"):
        assert torch.equal(same[key], s[key]), key
    # scale 0.5 -> 10 x 20 placed at (10, 5) inside grey: x -> x / 2 + 10, y -> y / 2 + 5
    out = scale_crop(s, 0.5, -10, -5)
    assert torch.equal(out["boxes"][0], torch.tensor([12.0, 6.0, 16.0, 10.0]))
    assert (out["image"][:, :5] == 0.5).all() and (out["image"][:, :, :10] == 0.5).all()
    assert (out["image"][:, 15:] == 0.5).all() and (out["image"][:, :, 30:] == 0.5).all()


def test_scale_crop_fits_a_clipped_polygon_into_k_slots():
    s = {"image": torch.zeros(3, 8, 8), "labels": torch.tensor([0]), "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]),
         "polygons": torch.tensor([[[5.0, 0.0], [10.0, 5.0], [5.0, 10.0], [0.0, 5.0]]]),
         "polygon_counts": torch.tensor([4])}
    out = scale_crop(s, 1.0, 0, 0, min_visible=0.5)  # the hexagon of test_clip_polygon_hand_cases, 4 slots
    assert out["polygon_counts"].tolist() == [4]
    # fit_polygon keeps hexagon vertices 0, 1, 3, 4 (floor(i * 6 / 4)) of its hull
    hull = {(5.0, 0.0), (8.0, 3.0), (8.0, 7.0), (7.0, 8.0), (3.0, 8.0), (0.0, 5.0)}
    assert {tuple(p) for p in out["polygons"][0].tolist()} <= hull and _signed_area(out["polygons"][0]) > 0


def test_hsv_jitter_hand_values():
    red = {"image": torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)}
    assert torch.allclose(hsv_jitter(red, 1 / 3, 0, 0)["image"].flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    dark = {"image": torch.tensor([0.5, 0.25, 0.25]).view(3, 1, 1)}
    assert torch.allclose(hsv_jitter(dark, 0, 0, 0.5)["image"].flatten(), torch.tensor([0.75, 0.375, 0.375]))
    pale = {"image": torch.tensor([1.0, 0.5, 0.5]).view(3, 1, 1)}  # s = 0.5: ds = -1 leaves grey at v
    assert torch.allclose(hsv_jitter(pale, 0, -1, 0)["image"].flatten(), torch.ones(3))
    x = torch.rand(3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-12)
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert hsv_jitter({"image": x, "boxes": boxes}, 0.1, 0.2, 0.3)["boxes"] is boxes


def test_augment_is_seeded_and_keeps_polygons_valid():
    aug = Augment(vflip=0.5, rot90=0.5, scale_jitter=0.4, hsv=(0.02, 0.5, 0.3), min_visible=0.25)
    data = ShapesDataset(8, 64, 4, 8, seed=0)
    outcomes = set()
    for i in range(8):
        s = data[i]
        a = aug(s, torch.Generator().manual_seed(i))
        b = aug(s, torch.Generator().manual_seed(i))
        for key in ("image", "boxes", "polygons", "polygon_counts", "labels", "masks"):
            assert torch.equal(a[key], b[key]), key
        outcomes.add(tuple(a["boxes"].flatten().round().tolist()))
        assert a["image"].shape == s["image"].shape
        assert ((a["boxes"] >= 0) & (a["boxes"] <= 64)).all() and (a["boxes"][:, 2:] > a["boxes"][:, :2]).all()
        for p, c in zip(a["polygons"], a["polygon_counts"], strict=True):
            assert _signed_area(p[: int(c)]) > 0
        assert int(a["masks"].max()) <= a["boxes"].shape[0]
    assert len(outcomes) == 8


@pytest.mark.parametrize(
    "kwargs, word",
    [({"vflip": 1.5}, "vflip"), ({"rot90": -0.1}, "rot90"), ({"scale_jitter": 1.0}, "scale_jitter"),
     ({"hsv": (0.1, 2.0, 0.0)}, "hsv"), ({"min_visible": 2.0}, "min_visible")],
)
def test_augment_rejects_out_of_range(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Augment(**kwargs)
    with pytest.raises(ValueError, match="scale"):
        scale_crop(_sample(), 0.0, 0, 0)
