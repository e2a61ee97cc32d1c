"""Augmentations for real data that move boxes and polygons exactly: 90-degree rotations, scale jitter with
a random crop, HSV jitter (image only), and :class:`Augment`, which draws them from a generator.

Samples follow :mod:`detloss.data.transforms` (``image (3, H, W)``, pixel ``boxes (n, 4)`` ``xyxy``,
``polygons (n, K, 2)`` with ``polygon_counts (n,)``, ``masks (H, W)`` instance ids ``i + 1``); other
per-object tensors (first dimension ``n``: ``labels``, ``is_polygon``, ...) follow their objects.

The crop rule (:func:`scale_crop`): each box is intersected with the output window; polygons are clipped
to the window exactly (Sutherland-Hodgman), and a clipped polygon with more than ``K`` vertices is fitted
into the ``K`` slots by :func:`detloss.data.yolo.fit_polygon` (its convex hull, then ``K`` hull vertices
spread evenly: the only inexact step). An object is **dropped** when its visible box area is below
``min_visible`` times its box area before the crop (both after scaling), when its visible box has zero
width or height, or when its polygon has no area left inside the window. A polygon object
(``is_polygon`` True) gets the bounds of its clipped polygon as box; a box object keeps the intersected box.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from detloss.data.transforms import _counts, _image_hw, _map_polygons, hflip, vflip
from detloss.data.yolo import fit_polygon

__all__ = ["Augment", "clip_polygon", "hsv_jitter", "hsv_to_rgb", "rgb_to_hsv", "rot90", "scale_crop"]

_SPATIAL = ("image", "masks")


def rot90(sample: Mapping[str, Any], k: int = 1) -> dict[str, Any]:
    """Rotate by ``k`` quarter turns, each ``(x, y) -> (y, W - x)`` in a ``W``-wide image (``torch.rot90``
    on ``(H, W)``: counter-clockwise as drawn); the result is ``W`` high and ``H`` wide.

    A rotation keeps the polygons' vertex order valid (no reversal, unlike a flip).

    >>> s = {"image": torch.zeros(3, 10, 20), "boxes": torch.tensor([[2.0, 1.0, 6.0, 3.0]])}
    >>> rot90(s)["boxes"].tolist(), tuple(rot90(s)["image"].shape)
    ([[1.0, 14.0, 3.0, 18.0]], (3, 20, 10))
    """
    k = int(k) % 4
    out = dict(sample)
    for _ in range(k):
        _, w = _image_hw(out)
        src = dict(out)
        out["image"] = src["image"].rot90(1, (-2, -1))
        if "boxes" in src:
            b = src["boxes"]
            out["boxes"] = torch.stack((b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]), -1)
        if "polygons" in src:
            out["polygons"] = _map_polygons(src, lambda p, w=w: torch.stack((p[..., 1], w - p[..., 0]), -1))
        if "masks" in src:
            out["masks"] = src["masks"].rot90(1, (-2, -1))
    return out


def clip_polygon(points: Tensor, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    """The part of polygon ``points (m, 2)`` inside ``[x0, x1] x [y0, y1]`` (Sutherland-Hodgman, exact for
    convex polygons, orientation kept); consecutive repeated vertices removed.

    >>> clip_polygon(torch.tensor([[-2.0, 0.0], [2.0, 0.0], [2.0, 2.0], [-2.0, 2.0]]), 0, 0, 10, 10)
    [(0.0, 0.0), (2.0, 0.0), (2.0, 2.0), (0.0, 2.0)]
    """
    pts = [(float(x), float(y)) for x, y in points.tolist()]
    x0, y0, x1, y1 = float(x0), float(y0), float(x1), float(y1)
    # each edge: (is p inside, intersection of segment a-b with the edge line)
    edges = (
        (lambda p: p[0] >= x0, lambda a, b: (x0, a[1] + (b[1] - a[1]) * (x0 - a[0]) / (b[0] - a[0]))),
        (lambda p: p[0] <= x1, lambda a, b: (x1, a[1] + (b[1] - a[1]) * (x1 - a[0]) / (b[0] - a[0]))),
        (lambda p: p[1] >= y0, lambda a, b: (a[0] + (b[0] - a[0]) * (y0 - a[1]) / (b[1] - a[1]), y0)),
        (lambda p: p[1] <= y1, lambda a, b: (a[0] + (b[0] - a[0]) * (y1 - a[1]) / (b[1] - a[1]), y1)),
    )
    for inside, cut in edges:
        if not pts:
            break
        src, pts = pts, []
        for i, cur in enumerate(src):
            prev = src[i - 1]
            if inside(cur):
                if not inside(prev):
                    pts.append(cut(prev, cur))
                pts.append(cur)
            elif inside(prev):
                pts.append(cut(prev, cur))
    return [p for i, p in enumerate(pts) if p != pts[i - 1]] if len(pts) > 1 else pts


def _area(pts: list[tuple[float, float]]) -> float:
    return 0.5 * sum(pts[i - 1][0] * pts[i][1] - pts[i][0] * pts[i - 1][1] for i in range(len(pts)))


def scale_crop(
    sample: Mapping[str, Any], scale: float, left: float, top: float, min_visible: float = 0.25, fill: float = 0.5
) -> dict[str, Any]:
    """Resize by ``scale``, then take the ``H x W`` window at ``(left, top)`` of the resized image (the input's
    size; parts outside the resized image are ``fill`` grey): ``x -> x * sx - left``, ``y -> y * sy - top``
    with ``sx = round(W * scale) / W`` and ``sy = round(H * scale) / H`` (the resized grid's exact scales).

    ``left`` and ``top`` are whole pixels (rounded). Objects cut by the window follow the module's crop
    rule; ``min_visible`` in ``[0, 1]``. The image is resized bilinearly (antialiased when shrinking),
    masks with ``nearest-exact``; mask ids are renumbered to the kept objects (dropped ones become 0).
    """
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must lie in [0, 1], got {min_visible}")
    h, w = _image_hw(sample)
    nh, nw = max(round(h * scale), 1), max(round(w * scale), 1)
    sx, sy = nw / w, nh / h
    left, top = int(round(left)), int(round(top))
    # the window [left, left + w) x [top, top + h) of the resized image, padded where it leaves it
    pad = (max(-left, 0), max(left + w - nw, 0), max(-top, 0), max(top + h - nh, 0))
    cl, ct = left + pad[0], top + pad[2]  # the window's origin in the padded image

    def window(x: Tensor, mode: str, value: float) -> Tensor:
        if (nh, nw) != (h, w):
            kw = {"align_corners": False, "antialias": nh < h} if mode == "bilinear" else {}
            x = F.interpolate(x[None].double() if mode != "bilinear" else x[None], size=(nh, nw), mode=mode, **kw)[0]
        return F.pad(x, pad, value=value)[..., ct : ct + h, cl : cl + w]

    out = dict(sample)
    out["image"] = window(sample["image"], "bilinear", fill)
    n = sample["boxes"].shape[0] if "boxes" in sample else 0
    if "boxes" not in sample:
        if "masks" in sample:
            out["masks"] = window(sample["masks"][None], "nearest-exact", 0)[0].to(sample["masks"].dtype)
        return out

    b = sample["boxes"].double()
    moved = torch.stack((b[:, 0] * sx - left, b[:, 1] * sy - top, b[:, 2] * sx - left, b[:, 3] * sy - top), -1)
    limit = torch.tensor([w, h, w, h], dtype=torch.float64)
    clipped = torch.minimum(moved.clamp(min=0), limit)
    area = (moved[:, 2:] - moved[:, :2]).prod(-1)
    wh = clipped[:, 2:] - clipped[:, :2]
    keep = (wh > 0).all(-1) & (wh.prod(-1) >= min_visible * area)
    new_boxes = clipped.clone()
    if "polygons" in sample:
        poly = sample["polygons"]
        counts = _counts(sample)
        is_poly = sample.get("is_polygon", torch.ones(n, dtype=torch.bool))
        kk = poly.shape[1]
        new_poly, new_counts = poly.clone(), counts.clone()
        for i in range(n):
            if not keep[i]:
                continue
            c = int(counts[i])
            p = poly[i, :c].double() * torch.tensor([sx, sy], dtype=torch.float64) - torch.tensor([left, top])
            pts = clip_polygon(p, 0.0, 0.0, float(w), float(h))
            if len(pts) > kk:
                pts = fit_polygon(pts, kk)
            if len(pts) < 3 or _area(pts) <= 0:
                keep[i] = False
                continue
            q = torch.tensor(pts, dtype=torch.float64)
            new_poly[i] = 0
            new_poly[i, : len(pts)] = q.to(poly.dtype)
            new_counts[i] = len(pts)
            if bool(is_poly[i]):
                new_boxes[i] = torch.cat((q.min(0).values, q.max(0).values))
        out["polygons"] = new_poly[keep]
        out["polygon_counts"] = new_counts[keep].to(counts.dtype)
    out["boxes"] = new_boxes[keep].to(sample["boxes"].dtype)
    for key, value in sample.items():
        if key in ("boxes", "polygons", "polygon_counts", *_SPATIAL):
            continue
        if isinstance(value, Tensor) and value.dim() >= 1 and value.shape[0] == n:
            out[key] = value[keep]
    if "masks" in sample:
        m = window(sample["masks"][None], "nearest-exact", 0)[0].long()
        ids = torch.zeros(n + 1, dtype=torch.long)  # old id -> new id
        ids[1:][keep] = torch.arange(1, int(keep.sum()) + 1)
        out["masks"] = ids[m.clamp(0, n)].to(sample["masks"].dtype)
    return out


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """``(3, H, W)`` RGB in ``[0, 1]`` -> HSV, hue in ``[0, 1)`` (a full turn is 1), in ``rgb``'s dtype.

    >>> rgb_to_hsv(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64).view(3, 1, 1)).flatten().tolist()
    [0.08333333333333333, 1.0, 1.0]
    """
    r, g, b = rgb.unbind(0)
    v, arg = rgb.max(0)
    c = v - rgb.min(0).values
    safe = torch.where(c > 0, c, 1.0)
    # the sector of the hue: which channel is largest (ties resolve to the first, r before g before b)
    h = torch.where(arg == 0, ((g - b) / safe) % 6, torch.where(arg == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(c > 0, h / 6, 0.0)
    s = torch.where(v > 0, c / torch.where(v > 0, v, 1.0), 0.0)
    return torch.stack((h, s, v))


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """The inverse of :func:`rgb_to_hsv`, in ``hsv``'s dtype."""
    h, s, v = hsv.unbind(0)
    h6 = (h % 1.0) * 6
    vs = v * s
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype).view(3, 1, 1)
    k = (n + h6) % 6
    return v - vs * torch.minimum(k, 4 - k).clamp_(0, 1)


def hsv_jitter(sample: Mapping[str, Any], dh: float, ds: float, dv: float) -> dict[str, Any]:
    """Shift the hue by ``dh`` turns, multiply saturation by ``1 + ds`` and value by ``1 + dv`` (both
    clamped to ``[0, 1]``); geometry untouched. Computed in the image's dtype (float32 images: 1e-6)."""
    h, s, v = rgb_to_hsv(sample["image"]).unbind(0)
    hsv = torch.stack(((h + dh) % 1.0, (s * (1 + ds)).clamp_(0, 1), (v * (1 + dv)).clamp_(0, 1)))
    out = dict(sample)
    out["image"] = hsv_to_rgb(hsv)
    return out


@dataclass(frozen=True)
class Augment:
    """Draws the augmentations of one sample from a generator (so it depends only on that generator's seed).

    Order: vertical flip (``vflip`` probability), 90-degree rotation (probability ``rot90``, then
    ``k`` uniform in 1..3), scale jitter (probability 1 when ``scale_jitter > 0``: ``scale`` uniform in
    ``[1 - a, 1 + a]``, the window uniform over the offsets that keep it inside the resized image, or
    centred on it when it is smaller), HSV jitter (``dh, ds, dv`` uniform in ``[-g, g]`` per gain of
    ``hsv``). Each enabled step draws its numbers whatever the outcome. Horizontal flips stay with the
    trainer's existing ``data.hflip`` draw.
    """

    vflip: float = 0.0
    rot90: float = 0.0
    scale_jitter: float = 0.0
    hsv: tuple[float, float, float] = (0.0, 0.0, 0.0)
    min_visible: float = 0.25

    def __post_init__(self) -> None:
        for name in ("vflip", "rot90", "min_visible"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.scale_jitter < 1.0:
            raise ValueError(f"scale_jitter must lie in [0, 1), got {self.scale_jitter}")
        if len(self.hsv) != 3 or not all(0.0 <= g <= 1.0 for g in self.hsv):
            raise ValueError(f"hsv must be three gains in [0, 1] (hue, saturation, value), got {self.hsv}")

    @property
    def enabled(self) -> bool:
        return bool(self.vflip or self.rot90 or self.scale_jitter or any(self.hsv))

    def __call__(self, sample: Mapping[str, Any], generator: torch.Generator) -> dict[str, Any]:
        def u() -> float:
            return float(torch.rand((), generator=generator, dtype=torch.float64))

        out = dict(sample)
        if self.vflip and u() < self.vflip:
            out = vflip(out)
        if self.rot90:
            turn, k = u() < self.rot90, 1 + min(int(u() * 3), 2)
            if turn:
                out = rot90(out, k)
        if self.scale_jitter:
            h, w = _image_hw(out)
            s = 1 + self.scale_jitter * (2 * u() - 1)
            nh, nw = max(round(h * s), 1), max(round(w * s), 1)
            fx, fy = u(), u()
            left = math.floor(fx * (nw - w + 1)) if nw >= w else (nw - w) // 2
            top = math.floor(fy * (nh - h + 1)) if nh >= h else (nh - h) // 2
            out = scale_crop(out, s, left, top, self.min_visible)
        if any(self.hsv):
            gh, gs, gv = self.hsv
            d = [g * (2 * u() - 1) for g in (gh, gs, gv)]
            out = hsv_jitter(out, *d)
        return out
