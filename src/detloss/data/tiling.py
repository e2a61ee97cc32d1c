"""Tiles of large images: grid windows, seeded random crops, and the rule for objects a tile cuts.

A sample is a dict as the readers give it: ``image (3, H, W)`` float in ``[0, 1]``, ``labels (n,)``,
``boxes (n, 4)`` pixel ``xyxy``, ``polygons (n, K, 2)`` with ``polygon_counts (n,)`` valid vertices, and
optionally other per-object tensors of length ``n`` (``is_polygon``, ``ignore``) that follow the objects.

**Windows.** A tile is the ``size x size`` window with top-left corner ``(x0, y0)``. Grid windows
(:func:`~detloss.ops.tiles.grid_windows`) start every ``size - overlap`` pixels along each axis; the last row
and column are shifted to end exactly at the image border, so consecutive windows overlap by at least
``overlap`` and their union is the image. Along an axis shorter than ``size`` there is one window at 0, and
the tile is padded on the right / bottom with ``fill`` (grey 0.5, as :func:`~detloss.data.transforms.letterbox`
pads): no image is resized. Random windows (:func:`random_window`) have integer corners drawn uniformly.

**Cut objects.** An object is kept when at least ``min_visible`` of its box area lies inside the window
(a zero-area box: when it lies in the closed window). Otherwise, with ``cut="drop"``, it is dropped (a
mostly-hidden object is then background for that tile); with ``cut="ignore"``, an object with some box
area inside is kept and flagged ``ignore`` (``True``): the dense trainer's loss treats the anchors in its
box as neither positive nor background (:func:`~detloss.assign.anchors.anchors_in_boxes`), and evaluation
as COCO's ignored ground truth. A kept object's box
is clipped to the window, and its polygon is clipped to the window rectangle (Sutherland-Hodgman,
:func:`~detloss.ops.clip.clip_convex_polygon_to_rect`; exact for the convex polygons the readers give). A
clipped polygon with more than ``K`` vertices (a cut adds up to 4) is fitted into the ``K`` slots with
:func:`~detloss.data.yolo.fit_polygon` (the YOLO reader's rule); a kept object whose polygon has no
area left inside the window (possible for a non-rectangular shape whose box corner is in it) is dropped.
Coordinates are then shifted to the tile: ``x -> x - x0``, ``y -> y - y0``.
"""

from __future__ import annotations

from collections import OrderedDict

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from detloss.data.collate import OBJECT_KEYS
from detloss.data.yolo import fit_polygon
from detloss.ops.clip import clip_convex_polygon_to_rect
from detloss.ops.tiles import check_tiling, grid_windows

__all__ = ["TiledDataset", "crop_tile", "random_window", "tile_seed"]



def tile_seed(seed: int, epoch: int, index: int) -> int:
    """The generator seed of tile ``index`` in ``epoch`` (the same formula as the trainer's flips)."""
    return (seed * 1_000_003 + epoch) * 1_000_003 + index


def random_window(height: int, width: int, size: int, generator: torch.Generator) -> tuple[int, int]:
    """A uniformly drawn integer corner ``(x0, y0)`` with the window inside the image (0 along a short axis)."""
    x = int(torch.randint(max(width - size, 0) + 1, (), generator=generator))
    y = int(torch.randint(max(height - size, 0) + 1, (), generator=generator))
    return x, y


def crop_tile(
    sample: Mapping[str, Any],
    x0: int,
    y0: int,
    size: int,
    min_visible: float = 0.5,
    fill: float = 0.5,
    cut: str = "drop",
) -> dict[str, Any]:
    """The ``size x size`` tile at ``(x0, y0)`` of ``sample`` with its objects cut by the module's rule
    (``cut``: ``"drop"`` or ``"ignore"`` the objects with less than ``min_visible`` of their box inside).

    Returns a sample of the same layout (``image (3, size, size)``, per-object tensors of the kept objects,
    other entries as they are) plus ``tile``: ``(x0, y0)``, so a tile detection maps back with ``x + x0``.
    """
    if not 0 < min_visible <= 1:
        raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
    _check_cut(cut)
    image = sample["image"]
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise ValueError(f"sample['image'] must be a (C, H, W) tensor, got {getattr(image, 'shape', type(image))}")
    h, w = image.shape[-2:]
    if not (x0 >= 0 and y0 >= 0 and (x0 + size <= w or x0 == 0) and (y0 + size <= h or y0 == 0)):
        raise ValueError(f"tile ({x0}, {y0}) of size {size} is not inside the {h}x{w} image (or at 0 on a short axis)")
    # a copy: augmentations may work in place, and the full image serves the next tiles
    tile = image[:, y0 : y0 + size, x0 : x0 + size].clone()
    if tile.shape[-2:] != (size, size):
        tile = F.pad(tile, (0, size - tile.shape[-1], 0, size - tile.shape[-2]), value=fill)
    out = dict(sample)
    out["image"], out["tile"] = tile, (int(x0), int(y0))
    boxes = sample["boxes"]
    n = boxes.shape[0]
    win = torch.tensor([x0, y0, x0 + size, y0 + size], dtype=torch.float64)
    b = boxes.double()
    clipped = torch.cat([torch.maximum(b[:, :2], win[:2]), torch.minimum(b[:, 2:], win[2:])], 1)
    inter = (clipped[:, 2:] - clipped[:, :2]).clamp(min=0).prod(1)
    area = (b[:, 2:] - b[:, :2]).prod(1)
    inside = (b[:, :2] >= win[:2]).all(1) & (b[:, 2:] <= win[2:]).all(1)
    frac = torch.where(area > 0, inter / area.clamp(min=1e-300), inside.double())
    keep = frac >= min_visible
    ignore = sample["ignore"].clone() if "ignore" in sample else torch.zeros(n, dtype=torch.bool)
    if cut == "ignore":
        hidden = ~keep & (inter > 0)
        ignore |= hidden
        keep |= hidden
    shift = win[:2]

    polygons, counts = sample.get("polygons"), sample.get("polygon_counts")
    if polygons is not None:
        k = polygons.shape[1]
        counts = counts if counts is not None else torch.full((n,), k, dtype=torch.long)
        new_poly, new_counts = polygons.clone(), counts.clone()
        for i in keep.nonzero().flatten().tolist():
            verts = polygons[i, : int(counts[i])].double() - shift
            pts = clip_convex_polygon_to_rect(verts, size, size).tolist()
            if len(pts) > k:
                pts = fit_polygon(pts, k)
            if len(pts) < 3:
                keep[i] = False  # no area of the shape in the tile
                continue
            new_poly[i] = 0
            new_poly[i, : len(pts)] = torch.tensor(pts, dtype=torch.float64).to(polygons.dtype)
            new_counts[i] = len(pts)
        out["polygons"], out["polygon_counts"] = new_poly[keep], new_counts[keep]
    out["boxes"] = (clipped - shift.repeat(2))[keep].to(boxes.dtype)
    for key in OBJECT_KEYS:
        if key in sample and key not in ("boxes", "polygons", "polygon_counts", "ignore"):
            out[key] = sample[key][keep]
    if "ignore" in sample or cut == "ignore":
        out["ignore"] = ignore[keep]
    return out


def _check_cut(cut: str) -> None:
    if cut not in ("drop", "ignore"):
        raise ValueError(f"cut must be 'drop' or 'ignore', got {cut!r}")


class TiledDataset(torch.utils.data.Dataset):
    """A dataset of large images as a dataset of ``size x size`` tiles.

    ``mode="grid"``: every grid tile of every image (:func:`~detloss.ops.tiles.grid_windows`), in image then row order.
    ``mode="random"``: as many tiles per image as its grid has, each a random window drawn from
    ``tile_seed(seed, epoch, index)``: the same on every rank and after a resume, new each epoch
    (:meth:`get`; ``dataset[i]`` is epoch 0). ``cut``: :func:`crop_tile`'s rule. Image sizes are read once here (one load per image);
    ``dataset`` keeps the full images (tiled inference evaluates on them). The last ``keep_images`` full
    samples stay in memory, so consecutive tiles of one image load it once (each tile is its own copy).
    """

    def __init__(
        self,
        dataset,
        size: int,
        overlap: int = 0,
        min_visible: float = 0.5,
        mode: str = "grid",
        seed: int = 0,
        keep_images: int = 4,
        cut: str = "drop",
    ) -> None:
        check_tiling(size, overlap)
        _check_cut(cut)
        if mode not in ("grid", "random"):
            raise ValueError(f"mode must be 'grid' or 'random', got {mode!r}")
        if not 0 < min_visible <= 1:
            raise ValueError(f"min_visible must be in (0, 1], got {min_visible}")
        self.dataset, self.size, self.overlap, self.min_visible = dataset, size, overlap, min_visible
        self.mode, self.seed, self.cut = mode, seed, cut
        self.num_classes = getattr(dataset, "num_classes", None)
        self.class_names = getattr(dataset, "class_names", None)
        if keep_images < 0:
            raise ValueError(f"keep_images must be >= 0, got {keep_images}")
        # the last few full samples: the tiles of one image are cut without loading it again (a large
        # image is tens of MB to decode or unpack; its tile a fraction of a millisecond to crop)
        self.keep_images = keep_images
        self._recent: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self.image_hw = [tuple(dataset[i]["image"].shape[-2:]) for i in range(len(dataset))]
        self.index: list[tuple[int, tuple[int, int]]] = [
            (i, xy) for i, (h, w) in enumerate(self.image_hw) for xy in grid_windows(h, w, size, overlap)
        ]

    def __len__(self) -> int:
        return len(self.index)

    def get(self, index: int, epoch: int = 0) -> dict[str, Any]:
        """Tile ``index`` (for ``mode="random"``: its window in ``epoch``)."""
        image, (x0, y0) = self.index[index]
        if self.mode == "random":
            h, w = self.image_hw[image]
            g = torch.Generator().manual_seed(tile_seed(self.seed, epoch, index))
            x0, y0 = random_window(h, w, self.size, g)
        return crop_tile(self._sample(image), x0, y0, self.size, self.min_visible, cut=self.cut)

    def _sample(self, image: int) -> dict[str, Any]:
        if image in self._recent:
            self._recent.move_to_end(image)
            return self._recent[image]
        sample = self.dataset[image]
        if self.keep_images:
            self._recent[image] = sample
            while len(self._recent) > self.keep_images:
                self._recent.popitem(last=False)
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get(index)
