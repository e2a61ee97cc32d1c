"""The student's geometric strong view: flips, quarter turns and a scale-crop of an unlabelled image, with
its pseudo-labels (boxes, polygons) and the teacher's dense score maps moved with it.

The teacher labels the weak view; the student sees :meth:`GeometricView.apply` of it, so its targets are
the pseudo-labels mapped by the same transform. The maps are those of :mod:`detloss.data.transforms` and
:mod:`detloss.data.augment` (no second copy): ``x -> W - x`` (hflip), ``y -> H - y`` (vflip), ``k`` quarter
turns ``(x, y) -> (y, W - x)`` each, then :func:`~detloss.data.augment.scale_crop` (objects cut by the
window follow its crop rule; dropped ones leave the pseudo-labels).

A per-level grid of anchors at cell centres ``((j + 1/2) s, (i + 1/2) s)`` maps onto itself under the flips
and quarter turns when the image side is a multiple of the stride, so the teacher's dense maps move with
:meth:`GeometricView.apply_grid` exactly; a scale-crop does not map the grid onto itself (each view anchor
then takes its nearest weak-view cell).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from detloss.data.augment import rot90, scale_crop
from detloss.data.transforms import hflip, vflip

__all__ = ["GeometricView", "draw_view"]


@dataclass(frozen=True)
class GeometricView:
    """One drawn geometric transform, applied in this order: ``hflip``, ``vflip``, ``turns`` quarter turns
    (counter-clockwise as drawn, :func:`~detloss.data.augment.rot90`), then the ``scale`` crop at
    ``(left, top)`` (``scale=1, left=top=0``: none)."""

    hflip: bool = False
    vflip: bool = False
    turns: int = 0
    scale: float = 1.0
    left: int = 0
    top: int = 0
    min_visible: float = 0.25

    @property
    def crops(self) -> bool:
        return self.scale != 1.0 or self.left != 0 or self.top != 0

    def apply(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """``sample`` (``image (C, H, W)``, optional pixel ``boxes (n, 4)`` xyxy, ``polygons (n, K, 2)``
        with ``polygon_counts (n,)``, per-object tensors such as ``labels``/``scores``) in the view."""
        out = dict(sample)
        if self.hflip:
            out = hflip(out)
        if self.vflip:
            out = vflip(out)
        if self.turns % 4:
            out = rot90(out, self.turns)
        if self.crops:
            out = scale_crop(out, self.scale, self.left, self.top, self.min_visible)
        return out

    def apply_grid(self, maps: Tensor, stride: float | None = None, fill: float = 0.0) -> Tensor:
        """One level's per-anchor map ``(..., H_l, W_l)`` of the weak view in the view's anchor order (the
        teacher's dense scores, its ignore mask). Exact for flips and quarter turns. After a scale-crop
        (``stride`` needed) a view anchor takes the value of the weak-view cell that contains its centre's
        pre-image, ``fill`` where that lies outside the image: the nearest cell, not an exact map."""
        out = maps
        if self.hflip:
            out = out.flip(-1)
        if self.vflip:
            out = out.flip(-2)
        if self.turns % 4:
            out = out.rot90(self.turns % 4, (-2, -1))
        if not self.crops:
            return out
        if stride is None:
            raise ValueError("apply_grid after a scale-crop needs the level's stride")
        hl, wl = out.shape[-2:]
        h, w = hl * stride, wl * stride
        sx, sy = max(round(w * self.scale), 1) / w, max(round(h * self.scale), 1) / h

        def source(n: int, s: float, offset: int) -> Tensor:  # weak cell of each view cell's centre
            centre = (torch.arange(n, dtype=torch.float64) + 0.5) * stride
            return torch.floor((centre + offset) / s / stride).long()

        rows, cols = source(hl, sy, self.top), source(wl, sx, self.left)
        inside = ((rows >= 0) & (rows < hl))[:, None] & ((cols >= 0) & (cols < wl))[None, :]
        picked = out[..., rows.clamp(0, hl - 1)[:, None], cols.clamp(0, wl - 1)[None, :]]
        return torch.where(inside.to(out.device), picked, torch.full_like(picked, fill))


def draw_view(
    generator: torch.Generator,
    image_hw: tuple[int, int],
    *,
    hflip: float = 0.0,
    vflip: float = 0.0,
    rot90: float = 0.0,
    scale_jitter: float = 0.0,
    min_visible: float = 0.25,
) -> GeometricView:
    """Draw a :class:`GeometricView`: each flip with its probability, a quarter turn ``k`` uniform in 1..3
    with probability ``rot90`` (square images only: the batch keeps its shape), a scale uniform in
    ``[1 - a, 1 + a]`` for ``scale_jitter = a`` with the window uniform over the offsets that keep it inside
    the resized image (centred when it is smaller). Every enabled step draws its numbers whatever the
    outcome, so the stream of draws does not depend on the outcomes.

    >>> v = draw_view(torch.Generator().manual_seed(0), (8, 8), hflip=1.0)
    >>> v.hflip, v.vflip, v.turns
    (True, False, 0)
    """
    for name, p in (("hflip", hflip), ("vflip", vflip), ("rot90", rot90), ("min_visible", min_visible)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {p}")
    if not 0.0 <= scale_jitter < 1.0:
        raise ValueError(f"scale_jitter must lie in [0, 1), got {scale_jitter}")
    h, w = image_hw
    if rot90 > 0 and h != w:
        raise ValueError(f"rot90 > 0 needs square images (the batch keeps its shape), got image_hw={image_hw}")

    def u() -> float:
        return float(torch.rand((), generator=generator, dtype=torch.float64))

    flip_h = bool(hflip) and u() < hflip
    flip_v = bool(vflip) and u() < vflip
    turns = 0
    if rot90:
        turn, k = u() < rot90, 1 + min(int(u() * 3), 2)
        turns = k if turn else 0
    scale, left, top = 1.0, 0, 0
    if scale_jitter:
        scale = 1 + scale_jitter * (2 * u() - 1)
        nh, nw = max(round(h * scale), 1), max(round(w * scale), 1)
        fx, fy = u(), u()
        left = math.floor(fx * (nw - w + 1)) if nw >= w else (nw - w) // 2
        top = math.floor(fy * (nh - h + 1)) if nh >= h else (nh - h) // 2
    return GeometricView(flip_h, flip_v, turns, scale, left, top, min_visible)
