"""Tiled inference: detections of one large image from a detector run on its overlapping grid tiles.

1. The image is cut into the grid tiles of :func:`~detloss.ops.tiles.grid_windows` (``size x size``,
   overlap at least ``overlap``; a short axis padded right / bottom with ``fill``, never resized); the
   tiles go through ``predict`` in batches of ``batch``, each tile once.
2. Each tile's detections are shifted back to image pixels (``x + x0``, ``y + y0``, polygons too) and
   boxes are clipped to the image (a padded tile can place a box over the padding).
3. **Border rule** (``drop_cut=True``): a detection lying within ``margin`` pixels of an *inner* edge of
   its tile (an edge that is not the image border) may be a cut-off piece of an object. It is dropped when
   another tile sees the same box whole: the box lies inside that tile, at least ``margin`` from that
   tile's inner edges. With ``overlap`` larger than the largest object, every object is whole in some tile,
   so the pieces go and the whole views remain.
4. The whole views of an object in the overlap of two tiles are merged by class-aware NMS
   (:func:`~detloss.ops.nms.batched_nms`, ``IoU > iou``) over all tiles at once, so an object in an overlap
   is reported once; then the ``max_det`` highest scores are kept.

An object larger than ``overlap`` may be seen whole by no tile: its pieces are then all kept (they are the
only evidence), and NMS merges only those that overlap enough.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from detloss.ops.nms import batched_nms
from detloss.ops.tiles import check_tiling, grid_windows

__all__ = ["tiled_predict"]

Predict = Callable[[Tensor], list[dict[str, Tensor]]]


def _tiles(image: Tensor, windows: list[tuple[int, int]], size: int, fill: float) -> Tensor:
    h, w = image.shape[-2:]
    out = []
    for x0, y0 in windows:
        t = image[:, y0 : y0 + size, x0 : x0 + size]
        if t.shape[-2:] != (size, size):
            t = F.pad(t, (0, size - t.shape[-1], 0, size - t.shape[-2]), value=fill)
        out.append(t)
    return torch.stack(out)


def _inside(boxes: Tensor, win: Tensor, inner: Tensor, margin: float) -> Tensor:
    """``(D, T)``: box ``d`` lies in window ``t`` at least ``margin`` away from its inner edges.

    ``win`` ``(T, 4)`` xyxy windows, ``inner`` ``(T, 4)`` bool: which edges are not the image border.
    """
    m = inner.to(boxes.dtype) * margin
    lo = win[:, :2] + m[:, :2]
    hi = win[:, 2:] - m[:, 2:]
    return (boxes[:, None, :2] >= lo).all(-1) & (boxes[:, None, 2:] <= hi).all(-1)


@torch.no_grad()
def tiled_predict(
    predict: Predict,
    image: Tensor,
    size: int,
    overlap: int,
    iou: float = 0.6,
    max_det: int = 300,
    drop_cut: bool = True,
    margin: float = 2.0,
    batch: int = 8,
    fill: float = 0.5,
) -> dict[str, Tensor]:
    """One image's detections in image pixels (rules in the module docstring).

    Args:
        predict: tiles ``(B, 3, size, size)`` -> ``B`` dicts with ``boxes (N, 4)`` xyxy tile pixels,
            ``scores (N,)``, ``labels (N,)`` and optionally other per-detection tensors (``polygons
            (N, K, 2)`` are shifted too; others, e.g. ``polygon_valid``, follow their detection).
        image: ``(3, H, W)``.
        size, overlap: tile side and minimum overlap in pixels, ``0 <= overlap < size``.
        iou: NMS threshold of the merge; max_det: detections kept after it.
        drop_cut, margin: the border rule and its distance in pixels.

    Returns:
        a dict like one of ``predict``'s, sorted by decreasing score, on ``image``'s device.
    """
    check_tiling(size, overlap)
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise ValueError(f"image must be a (C, H, W) tensor, got {getattr(image, 'shape', type(image))}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    h, w = image.shape[-2:]
    windows = grid_windows(h, w, size, overlap)
    parts: list[dict[str, Tensor]] = []
    for start in range(0, len(windows), batch):
        chunk = windows[start : start + batch]
        for (x0, y0), p in zip(chunk, predict(_tiles(image, chunk, size, fill)), strict=True):
            p = dict(p)
            shift = torch.tensor([x0, y0], dtype=p["boxes"].dtype, device=p["boxes"].device)
            p["boxes"] = p["boxes"] + shift.repeat(2)
            if "polygons" in p:
                p["polygons"] = p["polygons"] + shift
            parts.append(p)
    for t, p in enumerate(parts):
        p["_tile"] = torch.full((p["boxes"].shape[0],), t, dtype=torch.long, device=p["boxes"].device)
    keys = [k for k in parts[0] if isinstance(parts[0][k], Tensor)]
    out = {k: torch.cat([p[k] for p in parts]) for k in keys}
    bound = torch.tensor([w, h], dtype=out["boxes"].dtype, device=out["boxes"].device).repeat(2)
    out["boxes"] = torch.minimum(out["boxes"].clamp(min=0), bound)

    if drop_cut and out["boxes"].shape[0]:
        win = torch.tensor([[x0, y0, x0 + size, y0 + size] for x0, y0 in windows], dtype=out["boxes"].dtype)
        win = win.to(out["boxes"].device)
        inner = torch.stack([win[:, 0] > 0, win[:, 1] > 0, win[:, 2] < w, win[:, 3] < h], 1)
        inside = _inside(out["boxes"], win, inner, margin)  # (D, T)
        own = inside.gather(1, out["_tile"][:, None]).squeeze(1)
        keep = own | ~inside.any(1)  # cut in its own tile: kept only when no tile sees it whole
        out = {k: v[keep] for k, v in out.items()}
    order = batched_nms(out["boxes"], out["scores"], out["labels"], iou)[:max_det]
    out = {k: v[order] for k, v in out.items()}
    del out["_tile"]
    return {k: v.to(image.device) for k, v in out.items()}
