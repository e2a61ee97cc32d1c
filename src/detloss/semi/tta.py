"""A teacher's class scores averaged over the eight flips and quarter turns (the dihedral group D4) of its
input: test-time augmentation of a dense head, for pseudo-labels whose class does not depend on the view.

Each view's dense outputs are moved back onto the input's anchor grid (exact for flips and quarter turns
of a square image whose side is a multiple of every stride, :meth:`GeometricView.apply_grid`), and the
class sigmoids (and objectness sigmoids) are averaged per anchor. Box, DFL and polygon channels stay the
input view's: moving a box's ``l, t, r, b`` or a polygon's vertices between views is a different map.

:func:`upscale` and :func:`downscale_detections` give the teacher a zoomed view (``semi.teacher_zoom``): the
weak view resized up, its detections scaled back onto the weak view's pixels. Its anchor grid is another
one, so a zoomed view joins by its detections (:func:`~detloss.evaluate.tta.merge_views`), not per anchor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from detloss.ops.head_layout import HeadLayout
from detloss.semi.views import GeometricView

__all__ = ["D4_VIEWS", "downscale_detections", "ensemble_class_scores", "undo_grid", "upscale"]

#: The eight elements of D4 as views: a horizontal flip or not, then 0-3 quarter turns.
D4_VIEWS: tuple[GeometricView, ...] = tuple(GeometricView(hflip=f, turns=k) for f in (False, True) for k in range(4))


def undo_grid(maps: Tensor, view: GeometricView) -> Tensor:
    """One level's map ``(..., H_l, W_l)`` in ``view``'s anchor order back in the input's (the inverse of
    :meth:`GeometricView.apply_grid` for flips and quarter turns)."""
    if view.crops:
        raise ValueError("undo_grid needs a view without a scale-crop (flips and quarter turns only)")
    out = maps
    if view.turns % 4:
        out = out.rot90(-(view.turns % 4), (-2, -1))
    if view.vflip:
        out = out.flip(-2)
    if view.hflip:
        out = out.flip(-1)
    return out


@torch.no_grad()
def ensemble_class_scores(
    model: Callable[[Tensor], Sequence[Tensor]],
    images: Tensor,
    layout: HeadLayout,
    views: Sequence[GeometricView] = D4_VIEWS,
) -> list[Tensor]:
    """``model``'s per-level outputs on ``images`` with the class (and objectness) logits replaced by the logit
    of their sigmoids averaged over ``views``.

    Args:
        model: ``images (B, 3, H, W) -> [(B, layout.num_channels, H_l, W_l), ...]``.
        images: ``(B, 3, H, W)``, square when ``views`` turn it, sides a multiple of every stride.
        layout: the head's channel layout.
        views: flips and quarter turns (no scale-crop); the identity among them or not.

    Returns:
        One float32 ``(B, layout.num_channels, H_l, W_l)`` tensor per level: the identity view's box and
        polygon channels, the averaged class (and objectness) channels as logits. No gradient.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not views:
        raise ValueError("views must hold at least one view")
    if any(v.crops for v in views):
        raise ValueError("views must be flips and quarter turns only (no scale-crop)")
    base = [f.float() for f in model(images)]
    parts = [layout.cls] + ([layout.obj] if layout.objectness else [])
    sums = [[torch.zeros_like(f[:, p]) for p in parts] for f in base]
    for view in views:
        # an image is a map on the pixel grid: apply_grid moves it as apply would
        outputs = base if view == GeometricView() else [f.float() for f in model(view.apply_grid(images))]
        for level, f in enumerate(outputs):
            if f.shape[-2:] != base[level].shape[-2:]:
                raise ValueError(f"view {view} changes level {level}'s grid {tuple(base[level].shape[-2:])}")
            for i, p in enumerate(parts):
                sums[level][i] += undo_grid(f[:, p].sigmoid(), view)
    out = []
    for level, f in enumerate(base):
        f = f.clone()
        for i, p in enumerate(parts):
            f[:, p] = torch.logit(sums[level][i] / len(views), eps=1e-6)
        out.append(f)
    return out


def upscale(images: Tensor, scale: float, multiple: int) -> tuple[Tensor, float, float]:
    """``images (B, 3, H, W)`` resized (bilinear) to the multiples of ``multiple`` nearest ``scale`` times their
    sides (a tie rounds up), and the factors ``(sx, sy)`` that size has against ``(W, H)``."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if scale <= 0 or multiple < 1:
        raise ValueError(f"scale must be > 0 and multiple >= 1, got {scale} and {multiple}")
    h, w = images.shape[-2:]
    size = tuple(max(1, math.floor(side * scale / multiple + 0.5)) * multiple for side in (h, w))  # ties up
    out = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False).to(images.dtype)
    return out, size[1] / w, size[0] / h


def downscale_detections(det: dict[str, Tensor], sx: float, sy: float) -> dict[str, Tensor]:
    """One image's detections on a view upscaled by ``(sx, sy)`` (:func:`upscale`) in the input's pixels:
    ``boxes (N, 4)`` ``xyxy`` and ``polygons (N, K, 2)`` divided by the factors, the other keys as they are."""
    out = dict(det)
    out["boxes"] = det["boxes"] / det["boxes"].new_tensor([sx, sy, sx, sy])
    if "polygons" in det:
        out["polygons"] = det["polygons"] / det["polygons"].new_tensor([sx, sy])
    return out
