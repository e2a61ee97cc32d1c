"""Tiles of large images: grid coverage and overlap, seeded random crops, the cut-object rule (hand-worked)."""

from __future__ import annotations

import pytest
import torch

from detloss.data.tiling import TiledDataset, crop_tile, random_window, tile_seed
from detloss.ops.tiles import grid_origins, grid_windows


def _cyclic(a: list[list[float]], b: list[list[float]]) -> bool:
    """Same polygon: equal vertex lists up to a cyclic shift."""
    return len(a) == len(b) and any(a[i:] + a[:i] == b for i in range(len(a)))


def _sample(h: int = 100, w: int = 120, k: int = 4) -> dict:
    boxes = torch.tensor([[50.0, 10, 70, 30], [40, 40, 80, 60], [30, 70, 60, 90]])
    polys = torch.zeros(3, k, 2)
    polys[0, :4] = torch.tensor([[50.0, 10], [70, 10], [70, 30], [50, 30]])
    polys[1, :3] = torch.tensor([[40.0, 40], [80, 40], [60, 60]])
    polys[2, :4] = torch.tensor([[30.0, 70], [60, 70], [60, 90], [30, 90]])
    image = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w).expand(3, h, w) / (h * w)
    return {
        "image": image,
        "labels": torch.tensor([0, 1, 2]),
        "boxes": boxes,
        "polygons": polys,
        "polygon_counts": torch.tensor([4, 3, 4]),
        "is_polygon": torch.tensor([False, True, False]),
        "path": "x.png",
    }


def test_grid_origins_hand_worked():
    # stride 48: starts 0, 48; the last is moved to 120 - 64 = 56 so it ends at the border
    assert grid_origins(120, 64, 16) == [0, 48, 56]
    assert grid_origins(100, 64, 16) == [0, 36]
    assert grid_origins(64, 64, 16) == [0]
    assert grid_origins(40, 64, 16) == [0]  # short axis: one padded tile
    with pytest.raises(ValueError, match="overlap"):
        grid_origins(100, 64, 64)


@pytest.mark.parametrize(("h", "w", "size", "overlap"), [(100, 120, 64, 16), (2500, 2300, 256, 32), (300, 97, 64, 0)])
def test_grid_tiles_cover_the_image_with_the_overlap(h, w, size, overlap):
    windows = grid_windows(h, w, size, overlap)
    cover = torch.zeros(h, w, dtype=torch.int32)
    for x0, y0 in windows:
        assert x0 >= 0 and y0 >= 0 and (x0 + size <= w or x0 == 0) and (y0 + size <= h or y0 == 0)
        cover[y0 : y0 + size, x0 : x0 + size] += 1
    assert bool((cover >= 1).all())  # union == image
    for axis_len in (h, w):
        starts = grid_origins(axis_len, size, overlap)
        if len(starts) > 1:
            gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
            assert all(g == size - overlap for g in gaps[:-1])  # the stated overlap exactly ...
            assert 0 < gaps[-1] <= size - overlap  # ... and at least it where the last tile is shifted
            assert starts[-1] + size == axis_len


def test_cut_objects_follow_the_rule():
    # tile x0 = 56, y0 = 0, size 64 (window [56, 120] x [0, 64])
    t = crop_tile(_sample(), 56, 0, 64, min_visible=0.5)
    # object 0: box [50,70]x[10,30], 14 x 20 of 20 x 20 inside = 0.7 -> kept, clipped to [56,70], shifted by -56
    # object 1: triangle box [40,80]x[40,60], 24 x 20 of 40 x 20 = 0.6 -> kept; the cut at x = 56 meets the
    #   edge (60,60)-(40,40) at y = 56 -> polygon (56,40) (80,40) (60,60) (56,56), shifted
    # object 2: box [30,60]x[70,90] lies below the tile (y >= 70 > 64) -> dropped
    assert t["labels"].tolist() == [0, 1]
    assert t["boxes"].tolist() == [[0.0, 10.0, 14.0, 30.0], [0.0, 40.0, 24.0, 60.0]]
    assert t["polygon_counts"].tolist() == [4, 4]
    assert _cyclic(t["polygons"][0].tolist(), [[0.0, 10.0], [14.0, 10.0], [14.0, 30.0], [0.0, 30.0]])
    assert _cyclic(t["polygons"][1].tolist(), [[0.0, 40.0], [24.0, 40.0], [4.0, 60.0], [0.0, 56.0]])
    assert t["is_polygon"].tolist() == [False, True]
    assert t["image"].shape == (3, 64, 64) and t["tile"] == (56, 0)
    assert torch.equal(t["image"], _sample()["image"][:, 0:64, 56:120])


def test_objects_below_min_visible_are_dropped():
    # tile x0 = 56, y0 = 36: object 2's box [30,60]x[70,90] has 4 x 20 = 80 of 600 inside (0.133) -> dropped;
    # object 1: 24 x 20 of 800 = 0.6 -> kept at min_visible 0.6, dropped at 0.61
    t = crop_tile(_sample(), 56, 36, 64, min_visible=0.6)
    assert t["labels"].tolist() == [1]
    assert t["boxes"].tolist() == [[0.0, 4.0, 24.0, 24.0]]
    t = crop_tile(_sample(), 56, 36, 64, min_visible=0.61)
    assert t["labels"].tolist() == []
    assert t["polygons"].shape == (0, 4, 2) and t["boxes"].shape == (0, 4)
    # object 2 at min_visible 0.1 is kept: box [56,60]x[70,90] -> [0,34,4,54]
    t = crop_tile(_sample(), 56, 36, 64, min_visible=0.1)
    assert t["labels"].tolist() == [1, 2]
    assert t["boxes"][1].tolist() == [0.0, 34.0, 4.0, 54.0]


def test_objects_below_min_visible_become_ignore_regions_with_cut_ignore():
    # the tile of the test above at min_visible 0.61: object 1 (0.6 visible) and object 2 (0.133) are kept
    # clipped, flagged ignore; object 0 (box [50,70]x[10,30], above y0 = 36) has no area inside -> dropped
    t = crop_tile(_sample(), 56, 36, 64, min_visible=0.61, cut="ignore")
    assert t["labels"].tolist() == [1, 2] and t["ignore"].tolist() == [True, True]
    assert t["boxes"].tolist() == [[0.0, 4.0, 24.0, 24.0], [0.0, 34.0, 4.0, 54.0]]
    # an ignore flag the reader gave (VOC difficult) survives; a kept object stays a target
    s = _sample()
    s["ignore"] = torch.tensor([False, False, True])
    t = crop_tile(s, 56, 36, 64, min_visible=0.5, cut="ignore")
    assert t["labels"].tolist() == [1, 2] and t["ignore"].tolist() == [False, True]
    assert crop_tile(s, 56, 36, 64, min_visible=0.5)["ignore"].tolist() == [False]  # cut="drop"
    with pytest.raises(ValueError, match="cut must be"):
        crop_tile(s, 56, 36, 64, cut="keep")


def test_a_cut_with_more_vertices_than_slots_is_fitted():
    # K = 4: the diamond (50,0) (100,50) (50,100) (0,50) cut by [0,64]^2 is the pentagon
    # (50,0) (64,14) (64,64) (14,64) (0,50) (x = 64 meets its edges at y = 14 and 86, y = 64 at x = 64 and 14);
    # it does not fit the 4 slots and goes through fit_polygon: 4 of those 5 vertices
    s = _sample(k=4)
    s["boxes"] = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    s["polygons"] = torch.tensor([[[50.0, 0.0], [100.0, 50.0], [50.0, 100.0], [0.0, 50.0]]])
    s["polygon_counts"] = torch.tensor([4])
    s["labels"], s["is_polygon"] = torch.tensor([0]), torch.tensor([True])
    t = crop_tile(s, 0, 0, 64, min_visible=0.4)  # box: 64 x 64 of 100 x 100 = 0.4096
    assert t["polygon_counts"].tolist() == [4]
    pentagon = {(50.0, 0.0), (64.0, 14.0), (64.0, 64.0), (14.0, 64.0), (0.0, 50.0)}
    got = {tuple(v) for v in t["polygons"][0].tolist()}
    assert len(got) == 4 and got <= pentagon
    assert crop_tile(s, 0, 0, 64, min_visible=0.41)["labels"].tolist() == []


def test_short_image_is_padded_not_resized():
    s = _sample(h=40, w=50)
    s["boxes"] = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    s["polygons"], s["polygon_counts"] = s["polygons"][:1], torch.tensor([4])
    s["polygons"][0] = torch.tensor([[10.0, 10], [20, 10], [20, 20], [10, 20]])
    s["labels"], s["is_polygon"] = torch.tensor([3]), torch.tensor([False])
    t = crop_tile(s, 0, 0, 64)
    assert t["image"].shape == (3, 64, 64)
    assert torch.equal(t["image"][:, :40, :50], s["image"])
    assert bool((t["image"][:, 40:, :] == 0.5).all() and (t["image"][:, :, 50:] == 0.5).all())
    assert t["boxes"].tolist() == [[10.0, 10.0, 20.0, 20.0]]


def test_random_crops_are_deterministic_per_seed_epoch_index():
    ds = TiledDataset([_sample(h=300, w=200)], size=64, overlap=16, mode="random", seed=3)
    assert len(ds) == len(grid_windows(300, 200, 64, 16)) == 24  # 6 rows x 4 columns
    a = [ds.get(i, epoch=2)["tile"] for i in range(len(ds))]
    assert a == [ds.get(i, epoch=2)["tile"] for i in range(len(ds))]
    for i in range(len(ds)):
        g = torch.Generator().manual_seed(tile_seed(3, 2, i))
        assert a[i] == random_window(300, 200, 64, g)
    assert a != [ds.get(i, epoch=3)["tile"] for i in range(len(ds))]
    other_seed = TiledDataset([_sample(h=300, w=200)], 64, 16, mode="random", seed=4)
    assert a != [other_seed.get(i, 2)["tile"] for i in range(24)]
    assert all(0 <= x <= 200 - 64 and 0 <= y <= 300 - 64 for x, y in a)


def test_grid_dataset_lists_every_tile():
    ds = TiledDataset([_sample(), _sample(h=50, w=60)], size=64, overlap=16, mode="grid")
    assert len(ds) == 6 + 1
    assert [ds[i]["tile"] for i in range(len(ds))] == [(0, 0), (48, 0), (56, 0), (0, 36), (48, 36), (56, 36), (0, 0)]


class _Counting(list):
    """A dataset that counts how often each image is loaded."""

    def __init__(self, samples):
        super().__init__(samples)
        self.loads = [0] * len(samples)

    def __getitem__(self, i):
        self.loads[i] += 1
        return super().__getitem__(i)


def test_tiles_of_one_image_load_it_once_and_are_their_own_tensors():
    base = _Counting([_sample(), _sample(h=50, w=60)])
    ds = TiledDataset(base, size=64, overlap=16, mode="grid", keep_images=1)
    assert base.loads == [1, 1]  # image sizes, read once at construction
    first = ds[0]
    tiles = [ds[i] for i in range(len(ds))]  # image 0's six tiles, then image 1's
    assert base.loads == [2, 2]
    first["image"].mul_(0)  # an in-place augmentation of one tile leaves the kept image alone
    torch.testing.assert_close(ds[1]["image"], tiles[1]["image"])
    torch.testing.assert_close(ds[0]["image"], _sample()["image"][:, :64, :64])
    assert base.loads == [3, 2]  # image 1 was the one kept
    uncached = _Counting([_sample()])
    plain = TiledDataset(uncached, size=64, overlap=16, keep_images=0)
    _ = [plain[i] for i in range(len(plain))]
    assert uncached.loads == [1 + 6]


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_visible"):
        crop_tile(_sample(), 0, 0, 64, min_visible=0)
    with pytest.raises(ValueError, match="not inside"):
        crop_tile(_sample(), 60, 0, 64)
    with pytest.raises(ValueError, match="mode"):
        TiledDataset([_sample()], 64, mode="diagonal")
    with pytest.raises(ValueError, match="keep_images"):
        TiledDataset([_sample()], 64, keep_images=-1)
