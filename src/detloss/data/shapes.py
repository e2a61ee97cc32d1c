"""Synthetic shapes: convex polygons of several classes over textured backgrounds, generated on the fly.

:class:`ShapesDataset` draws every image from ``(seed, split, index)`` alone, so any item can be rebuilt
anywhere (any worker, any rank) without a download and without storing anything.

Classes (``label = 2 * shape_group + colour_group``, see :data:`CLASS_NAMES`):

====  ======================  ===================  ==========================================
 id    name                    shape (sides drawn)  colour (HSV hue, saturation >= 0.65)
====  ======================  ===================  ==========================================
  0    ``triangle-warm``       3                    warm: red, orange, yellow (-20 to 55 deg)
  1    ``triangle-cool``       3                    cool: cyan, azure, blue (170 to 250 deg)
  2    ``quadrilateral-warm``  4                    warm
  3    ``quadrilateral-cool``  4                    cool
  4    ``polygon-warm``        5 to 8               warm
  5    ``polygon-cool``        5 to 8               cool
====  ======================  ===================  ==========================================

Shapes are regular polygons, rotated, stretched a little along a random direction (aspect 0.75-1.33, an
affine map, so they stay convex) and sized so their circumscribed circle has a diameter of 6%-45% of the
shorter image side. Warm shapes are redder than they are blue (``R > B``), cool shapes bluer than red;
backgrounds are desaturated (saturation <= 0.2) smooth noise, gradients or stripes of low contrast.

Ground truth, per image with ``n`` objects (``1 <= n <= max_objects``):

* ``labels (n,)`` int64 class ids;
* ``polygons (n, K, 2)`` float32 pixel ``(x, y)`` vertices, ``K = num_vertices``, valid vertices first,
  zeros after; ``polygon_counts (n,)`` int64. A shape crossing the border is clipped **exactly** to the
  image rectangle ``[0, W] x [0, H]`` (Sutherland-Hodgman), so every polygon is convex and inside the
  image; a clipped shape can have more or fewer vertices than it was drawn with (a clipped triangle may
  be a quadrilateral), its class is that of the shape drawn (``sides (n,)`` int64 keeps the drawn count).
* **Vertex order**: the shoelace signed area ``sum(x_i * y_{i+1} - x_{i+1} * y_i) / 2`` of the raw pixel
  coordinates is positive, i.e. counter-clockwise in a y-up frame, which is **clockwise as drawn** in
  image coordinates (x right, y down) -- the convention of
  :func:`detloss.ops.signed_polygon_area` and :func:`detloss.data.synthetic.random_targets`.
* ``boxes (n, 4)`` float32 pixel ``xyxy``: the bounds of the (clipped) polygon.
* ``masks (H, W)`` int64 instance mask: 0 background, ``i + 1`` where object ``i`` is visible. Objects
  are painted in order, later over earlier, so a mask can be smaller than its polygon (occlusion); the
  polygons and boxes are the shapes as drawn, not their visible parts. Placement keeps at least half of
  every object's pixels visible.

Images are ``(3, H, W)`` float32 in ``[0, 1]``. Pixel ``(row i, column j)`` covers ``[j, j+1] x [i, i+1]``;
it belongs to a polygon when its centre ``(j + 0.5, i + 0.5)`` is inside or on the boundary.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from detloss.ops.clip import clip_convex_polygon_to_rect

__all__ = [
    "CLASS_NAMES",
    "ShapesDataset",
    "rasterize_convex_polygons",
    "shape_group",
]

CLASS_NAMES: tuple[str, ...] = (
    "triangle-warm",
    "triangle-cool",
    "quadrilateral-warm",
    "quadrilateral-cool",
    "polygon-warm",
    "polygon-cool",
)

_WARM_HUE = (-20.0, 55.0)
_COOL_HUE = (170.0, 250.0)
_MIN_PIXELS = 8
_MIN_VISIBLE_FRACTION = 0.5  # of each object's own pixels, after later objects are painted
_MIN_INSIDE_FRACTION = 0.3  # of a shape's area that must remain after clipping to the image
_TRIES = 30


def shape_group(sides: int | Tensor) -> int | Tensor:
    """Shape group of a polygon drawn with ``sides`` vertices: 0 triangle, 1 quadrilateral, 2 five or more."""
    if isinstance(sides, Tensor):
        return (sides - 3).clamp(0, 2)
    return min(max(int(sides) - 3, 0), 2)


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------
def _signed_area(poly: Tensor) -> Tensor:
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1)


def _rasterize_crop(p: Tensor, height: int, width: int) -> tuple[int, int, Tensor] | None:
    """One polygon ``(c, 2)`` float64: ``(row0, col0, inside)`` over the pixels of its bounding box."""
    if p.shape[0] < 3:
        return None
    area = _signed_area(p)
    if area == 0:
        return None
    x0, y0 = p.min(0).values.tolist()
    x1, y1 = p.max(0).values.tolist()
    # columns / rows whose centre can be inside: j + 0.5 in [x0, x1]
    j0, j1 = max(math.ceil(x0 - 0.5), 0), min(math.floor(x1 - 0.5), width - 1)
    i0, i1 = max(math.ceil(y0 - 0.5), 0), min(math.floor(y1 - 0.5), height - 1)
    if j1 < j0 or i1 < i0:
        return None
    xs = torch.arange(j0, j1 + 1, dtype=torch.float64, device=p.device) + 0.5
    ys = torch.arange(i0, i1 + 1, dtype=torch.float64, device=p.device) + 0.5
    ex, ey = (p.roll(-1, 0) - p).unbind(-1)  # (c,) edge vectors
    # cross(edge, centre - start) = ex * (y - py) - ey * (x - px), sign-corrected by the orientation
    s = area.sign()
    cross = (s * ex)[:, None, None] * (ys[None, :, None] - p[:, 1, None, None]) - (s * ey)[:, None, None] * (
        xs[None, None, :] - p[:, 0, None, None]
    )
    return i0, j0, (cross >= 0).all(0)


def rasterize_convex_polygons(polygons: Tensor, counts: Tensor | None, height: int, width: int) -> Tensor:
    """Fill convex polygons on the pixel-centre grid, vectorized over edges and pixels.

    Args:
        polygons: ``(n, K, 2)`` pixel ``(x, y)`` vertices, either orientation.
        counts: ``(n,)`` valid vertices (first ``counts[i]``), or ``None`` for all ``K``.
        height, width: the grid; pixel ``(i, j)`` is tested at its centre ``(j + 0.5, i + 0.5)``.

    Returns:
        ``(n, height, width)`` bool: the centre is on the inner side (or on the line) of every edge.
        Polygons with fewer than 3 vertices or zero area are empty.

    >>> tri = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])
    >>> rasterize_convex_polygons(tri, None, 4, 4)[0].int()
    tensor([[1, 1, 1, 1],
            [1, 1, 1, 0],
            [1, 1, 0, 0],
            [1, 0, 0, 0]], dtype=torch.int32)
    """
    n, k = polygons.shape[0], polygons.shape[1]
    out = torch.zeros(n, height, width, dtype=torch.bool, device=polygons.device)
    poly64 = polygons.to(torch.float64)
    for i in range(n):
        c = k if counts is None else int(counts[i])
        crop = _rasterize_crop(poly64[i, :c], height, width)
        if crop is not None:
            i0, j0, inside = crop
            out[i, i0 : i0 + inside.shape[0], j0 : j0 + inside.shape[1]] = inside
    return out


# --------------------------------------------------------------------------------------------------
# random drawing
# --------------------------------------------------------------------------------------------------
def _seed_of(seed: int, split: str, index: int) -> int:
    digest = hashlib.sha256(f"detloss.shapes/{seed}/{split}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    m = v - c
    return (r + m, g + m, b + m)


def _background(g: torch.Generator, h: int, w: int) -> Tensor:
    base = torch.tensor(_hsv_to_rgb(_u(g, 0, 360), _u(g, 0.0, 0.2), _u(g, 0.25, 0.75)), dtype=torch.float32)
    img = base.view(3, 1, 1).expand(3, h, w).clone()
    kind = _randint(g, 0, 2)
    ys = (torch.arange(h, dtype=torch.float32) + 0.5).view(h, 1)
    xs = (torch.arange(w, dtype=torch.float32) + 0.5).view(1, w)
    side = float(min(h, w))
    if kind == 0:  # linear gradient towards a nearby colour
        theta = _u(g, 0, 2 * math.pi)
        proj = (xs * math.cos(theta) + ys * math.sin(theta)) / side
        proj = (proj - proj.min()) / (proj.max() - proj.min()).clamp_min(1e-6)
        delta = (torch.rand(3, generator=g) - 0.5) * 0.3
        img = img + delta.view(3, 1, 1) * proj
    elif kind == 1:  # smooth noise: a coarse random grid upsampled bilinearly
        cells = _randint(g, 3, 8)
        coarse = (torch.rand(1, 3, cells, cells, generator=g) - 0.5) * 0.25
        img = img + torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    else:  # stripes
        theta = _u(g, 0, math.pi)
        freq = _u(g, 3, 12)
        phase = _u(g, 0, 2 * math.pi)
        wave = torch.sin(2 * math.pi * freq * (xs * math.cos(theta) + ys * math.sin(theta)) / side + phase)
        delta = (torch.rand(3, generator=g) - 0.5) * 0.2
        img = img + delta.view(3, 1, 1) * wave
    return img


def _draw_shape(
    g: torch.Generator, sides: int, h: int, w: int
) -> tuple[Tensor, float]:  # (sides, 2) float64 vertices, unclipped area
    side = float(min(h, w))
    diameter = side * math.exp(_u(g, math.log(0.06), math.log(0.45)))
    aspect = math.exp(_u(g, math.log(0.75), math.log(4 / 3)))
    phi = _u(g, 0, 2 * math.pi)
    psi = _u(g, 0, math.pi)
    cx, cy = _u(g, 0.05, 0.95) * w, _u(g, 0.05, 0.95) * h
    ang = phi + 2 * math.pi * torch.arange(sides, dtype=torch.float64) / sides
    unit = torch.stack((ang.cos() * math.sqrt(aspect), ang.sin() / math.sqrt(aspect)), -1) * (diameter / 2)
    rot = torch.tensor([[math.cos(psi), -math.sin(psi)], [math.sin(psi), math.cos(psi)]], dtype=torch.float64)
    verts = unit @ rot.T + torch.tensor([cx, cy], dtype=torch.float64)
    # increasing angle in raw (x, y) and an orientation-preserving map: positive shoelace area
    return verts, float(_signed_area(verts))


class ShapesDataset(torch.utils.data.Dataset):
    """Deterministic synthetic convex-polygon detection data (see the module docstring for the classes).

    Args:
        num_images: length of the dataset.
        image_size: ``S`` for ``S x S`` images, or ``(H, W)``.
        max_objects: at most this many objects per image (at least one).
        num_vertices: ``K``, the padded vertex count of the polygons (>= 3). Shapes are drawn with at
            most ``min(8, K)`` sides and placed so that their clipped polygon has at most ``K`` vertices;
            with ``K < 5`` the ``polygon-*`` classes never occur.
        seed: base seed; item ``index`` of ``split`` depends on ``(seed, split, index)`` only.
        split: any string (``"train"``, ``"val"``, ...); different splits give different images.

    ``dataset[i]`` is a dict: ``image (3, H, W)`` float32 in ``[0, 1]``, ``labels (n,)``, ``boxes (n, 4)``
    pixel ``xyxy``, ``polygons (n, K, 2)`` pixel, ``polygon_counts (n,)``, ``masks (H, W)`` int64
    instance ids and ``sides (n,)`` the number of sides each shape was drawn with.

    >>> ds = ShapesDataset(4, image_size=64, seed=1)
    >>> s = ds[0]
    >>> s["image"].shape, s["masks"].shape, s["polygons"].shape[1:]
    (torch.Size([3, 64, 64]), torch.Size([64, 64]), torch.Size([8, 2]))
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(
        self,
        num_images: int,
        image_size: int | tuple[int, int] = 256,
        max_objects: int = 6,
        num_vertices: int = 8,
        seed: int = 0,
        split: str = "train",
    ) -> None:
        if num_images < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(hw) != 2 or min(hw) < 8:
            raise ValueError(f"image_size must be an int or (H, W) with sides >= 8, got {image_size!r}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        if num_vertices < 3:
            raise ValueError(f"num_vertices must be >= 3, got {num_vertices}")
        self.num_images = int(num_images)
        self.image_hw: tuple[int, int] = (int(hw[0]), int(hw[1]))
        self.max_objects = int(max_objects)
        self.num_vertices = int(num_vertices)
        self.seed = int(seed)
        self.split = str(split)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_images} images")
        index %= max(self.num_images, 1)
        return self.generate(index)

    def generate(self, index: int) -> dict[str, Tensor]:
        """The item for ``index`` (any non-negative int, not limited to ``len(self)``)."""
        g = torch.Generator().manual_seed(_seed_of(self.seed, self.split, index))
        h, w = self.image_hw
        k = self.num_vertices
        image = _background(g, h, w)
        masks = torch.zeros(h, w, dtype=torch.long)
        groups = [grp for grp in range(3) if grp + 3 <= min(k, 5)]
        n_target = _randint(g, 1, self.max_objects)

        labels: list[int] = []
        sides_out: list[int] = []
        polys: list[Tensor] = []
        drawn_pixels: list[int] = []
        visible: list[int] = []
        for _ in range(n_target):
            grp = groups[_randint(g, 0, len(groups) - 1)]
            sides = 3 + grp if grp < 2 else _randint(g, 5, min(8, k))
            cool = _randint(g, 0, 1)
            hue = _u(g, *(_COOL_HUE if cool else _WARM_HUE))
            colour = torch.tensor(_hsv_to_rgb(hue, _u(g, 0.65, 1.0), _u(g, 0.6, 1.0)), dtype=torch.float32)
            for _attempt in range(_TRIES):
                verts, full_area = _draw_shape(g, sides, h, w)
                # the float32 polygon is the ground truth: rasterize exactly that
                clipped = clip_convex_polygon_to_rect(verts, w, h).float().double()
                m = clipped.shape[0]
                if m < 3 or m > k or float(_signed_area(clipped)) < _MIN_INSIDE_FRACTION * full_area:
                    continue
                crop = _rasterize_crop(clipped, h, w)
                if crop is None:
                    continue
                i0, j0, fill = crop
                rows, cols = slice(i0, i0 + fill.shape[0]), slice(j0, j0 + fill.shape[1])
                pixels = int(fill.sum())
                if pixels < _MIN_PIXELS:
                    continue
                # pixels each earlier object would lose: keep at least half of what it was drawn with
                lost = torch.bincount(masks[rows, cols][fill], minlength=len(polys) + 1)[1:].tolist()
                if any(v - l < _MIN_VISIBLE_FRACTION * d for v, l, d in zip(visible, lost, drawn_pixels, strict=True)):
                    continue
                visible = [v - l for v, l in zip(visible, lost, strict=True)] + [pixels]
                masks[rows, cols][fill] = len(polys) + 1
                image[:, rows, cols][:, fill] = colour.view(3, 1)
                labels.append(2 * grp + cool)
                sides_out.append(sides)
                polys.append(clipped)
                drawn_pixels.append(pixels)
                break

        image = (image + 0.015 * torch.randn(image.shape, generator=g)).clamp_(0.0, 1.0)
        n = len(polys)
        polygons = torch.zeros(n, k, 2, dtype=torch.float32)
        counts = torch.zeros(n, dtype=torch.long)
        boxes = torch.zeros(n, 4, dtype=torch.float32)
        for i, p in enumerate(polys):
            polygons[i, : p.shape[0]] = p.float()
            counts[i] = p.shape[0]
            boxes[i] = torch.cat((p.min(0).values, p.max(0).values)).float()
        return {
            "image": image.float().contiguous(),
            "labels": torch.tensor(labels, dtype=torch.long),
            "boxes": boxes,
            "polygons": polygons,
            "polygon_counts": counts,
            "masks": masks,
            "sides": torch.tensor(sides_out, dtype=torch.long),
        }
