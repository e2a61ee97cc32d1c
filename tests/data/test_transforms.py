"""letterbox / hflip / vflip / RandomFlip on hand-computed cases, and invariants on synthetic shapes."""

from __future__ import annotations

import pytest
import torch

from detloss.data.shapes import ShapesDataset, rasterize_convex_polygons
from detloss.data.transforms import RandomFlip, hflip, letterbox, reverse_valid_vertices, vflip

H, W = 20, 40


def _hand_sample() -> dict[str, torch.Tensor]:
    """A 20 x 40 image with one box [4, 2, 12, 10] and the triangle (4, 2), (12, 2), (4, 10) in 4 slots."""
    masks = torch.zeros(H, W, dtype=torch.long)
    masks[2:10, 4:12] = 1  # the pixels of the box
    return {
        "image": torch.full((3, H, W), 0.2),
        "labels": torch.tensor([3]),
        "boxes": torch.tensor([[4.0, 2.0, 12.0, 10.0]]),
        "polygons": torch.tensor([[[4.0, 2.0], [12.0, 2.0], [4.0, 10.0], [0.0, 0.0]]]),
        "polygon_counts": torch.tensor([3]),
        "masks": masks,
    }


def _signed_area(p: torch.Tensor) -> float:
    x, y = p[:, 0].double(), p[:, 1].double()
    return 0.5 * float((x * y.roll(-1) - x.roll(-1) * y).sum())


def test_letterbox_shrink_hand_case():
    s = _hand_sample()
    out = letterbox(s, 20)  # r = 20 / 40: content 10 x 20, padded 5 rows above and 5 below
    assert out["image"].shape == (3, 20, 20)
    assert torch.allclose(out["image"][:, 5:15], torch.full((3, 10, 20), 0.2))
    assert (out["image"][:, :5] == 0.5).all() and (out["image"][:, 15:] == 0.5).all()
    assert torch.equal(out["boxes"], torch.tensor([[2.0, 6.0, 6.0, 10.0]]))
    assert torch.equal(out["polygons"], torch.tensor([[[2.0, 6.0], [6.0, 6.0], [2.0, 10.0], [0.0, 0.0]]]))
    # nearest-exact: output pixel i reads input pixel 2i + 1 -> rows 1..4 (+5) and columns 2..5
    expected = torch.zeros(20, 20, dtype=torch.long)
    expected[6:10, 2:6] = 1
    assert torch.equal(out["masks"], expected)
    assert out["letterbox"] == (0.5, 0.5, 0.0, 5.0)
    assert torch.equal(out["labels"], s["labels"]) and torch.equal(s["boxes"], _hand_sample()["boxes"])  # no mutation


def test_letterbox_grow_and_uneven_scales():
    out = letterbox(_hand_sample(), 80)  # r = 2: content 40 x 80, 20 rows of padding above
    assert torch.equal(out["boxes"], torch.tensor([[8.0, 24.0, 24.0, 40.0]]))
    assert int(out["masks"].sum()) == 16 * 16 and (out["masks"][24:40, 8:24] == 1).all()
    # 30 x 45 into 64: content 43 x 64 (round(30 * 64 / 45) = 43), top pad (64 - 43) // 2 = 10;
    # the whole image [0, 45] x [0, 30] maps onto exactly the content rows 10..52
    s = {"image": torch.rand(3, 30, 45), "boxes": torch.tensor([[0.0, 0.0, 45.0, 30.0]])}
    out = letterbox(s, 64)
    assert torch.allclose(out["boxes"], torch.tensor([[0.0, 10.0, 64.0, 53.0]]))
    grey = (out["image"] == 0.5).all(0).all(1)
    assert grey[:10].all() and grey[53:].all() and not grey[10:53].any()


def test_hflip_hand_case_keeps_orientation():
    s = _hand_sample()
    out = hflip(s)
    assert torch.equal(out["boxes"], torch.tensor([[28.0, 2.0, 36.0, 10.0]]))
    # mirrored (36, 2), (28, 2), (36, 10), then the 3 valid vertices reversed; padding unchanged
    assert torch.equal(out["polygons"], torch.tensor([[[36.0, 10.0], [28.0, 2.0], [36.0, 2.0], [0.0, 0.0]]]))
    assert _signed_area(s["polygons"][0, :3]) > 0 and _signed_area(out["polygons"][0, :3]) > 0
    assert torch.equal(out["masks"][2:10, 28:36], torch.ones(8, 8, dtype=torch.long))
    assert int(out["masks"].sum()) == 64
    back = hflip(out)
    for key in ("image", "boxes", "polygons", "masks"):
        assert torch.equal(back[key], s[key]), key


def test_vflip_hand_case_keeps_orientation():
    s = _hand_sample()
    out = vflip(s)
    assert torch.equal(out["boxes"], torch.tensor([[4.0, 10.0, 12.0, 18.0]]))
    assert torch.equal(out["polygons"], torch.tensor([[[4.0, 10.0], [12.0, 18.0], [4.0, 18.0], [0.0, 0.0]]]))
    assert _signed_area(out["polygons"][0, :3]) > 0
    assert torch.equal(out["masks"][10:18, 4:12], torch.ones(8, 8, dtype=torch.long))
    back = vflip(out)
    for key in ("image", "boxes", "polygons", "masks"):
        assert torch.equal(back[key], s[key]), key


def test_reverse_valid_vertices_without_counts_key():
    s = {"image": torch.zeros(3, 4, 4), "polygons": torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])}
    out = hflip(s)  # no polygon_counts: all K vertices are valid
    assert torch.equal(out["polygons"], torch.tensor([[[4.0, 1.0], [3.0, 0.0], [4.0, 0.0]]]))
    assert reverse_valid_vertices(torch.zeros(0, 5, 2), torch.zeros(0, dtype=torch.long)).shape == (0, 5, 2)


def test_flips_and_letterbox_on_shapes_keep_masks_on_polygons():
    s = ShapesDataset(1, image_size=(48, 64), seed=5)[0]
    for t in (hflip, vflip, lambda x: vflip(hflip(x))):
        out = t(s)
        h, w = out["masks"].shape
        raster = rasterize_convex_polygons(out["polygons"], out["polygon_counts"], h, w)
        for i in range(raster.shape[0]):
            q = out["polygons"][i, : int(out["polygon_counts"][i])]
            assert _signed_area(q) > 0
            assert torch.equal(out["boxes"][i], torch.cat((q.min(0).values, q.max(0).values)))
        assert torch.equal(out["masks"] > 0, raster.any(0))  # pixel centres map to pixel centres exactly
    out = letterbox(s, 32)
    for i in range(out["polygons"].shape[0]):
        q = out["polygons"][i, : int(out["polygon_counts"][i])]
        assert _signed_area(q) > 0 and (q >= 0).all() and (q <= 32).all()


def test_random_flip_is_deterministic():
    s = {"image": torch.arange(6.0).view(1, 2, 3), "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]])}

    def decisions(f: RandomFlip, n: int = 200) -> list[bool]:
        return [not torch.equal(f(s)["image"], s["image"]) for _ in range(n)]

    a, b = decisions(RandomFlip(0.5, seed=1)), decisions(RandomFlip(0.5, seed=1))
    assert a == b and 70 < sum(a) < 130
    assert a != decisions(RandomFlip(0.5, seed=2))
    f = RandomFlip(0.5, seed=1)
    decisions(f, 10)
    f.reset()
    assert decisions(f) == a
    assert not any(decisions(RandomFlip(0.0, seed=0), 20)) and all(decisions(RandomFlip(1.0, seed=0), 20))
    both = RandomFlip(1.0, seed=0, vertical=True)(s)
    assert torch.equal(both["image"], s["image"].flip(-1).flip(-2))
    with pytest.raises(ValueError, match="p must"):
        RandomFlip(1.5)


def test_letterbox_rejects_integer_images():
    with pytest.raises(ValueError, match="floating point"):
        letterbox({"image": torch.zeros(3, 4, 4, dtype=torch.uint8)}, 8)
