"""Test-time augmentation: a detector run on flipped / transposed copies of the images, its detections mapped
back and merged.

**Views.** A view is ``(transpose, hflip, vflip)``, applied to the image in that order (transpose swaps the
height and width axes). ``"flips"`` is the 4 flips, ``"d4"`` the 8 symmetries of the square (the flips with
and without the transpose; overhead imagery has no "up"). Each view's detections are mapped back by undoing
the steps in reverse order: ``x -> W' - x`` for a flip of a frame ``W'`` wide, then ``x <-> y``.

**Merging** (:func:`merge_views`): the detections of all views go through class-aware NMS (``IoU > iou``);
each kept detection's box becomes the score-weighted mean of the boxes it suppressed and itself (box voting),
its score stays the highest of them. Other per-detection tensors (polygons) are the kept detection's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from detloss.ops.boxes import box_iou_matrix
from detloss.ops.nms import batched_nms

__all__ = ["VIEWS", "merge_views", "restore", "transform", "tta_predict"]

View = tuple[bool, bool, bool]  # transpose, hflip, vflip
#: The views of each TTA mode; the identity first.
VIEWS: dict[str, list[View]] = {
    "flips": [(False, h, v) for h in (False, True) for v in (False, True)],
    "d4": [(t, h, v) for t in (False, True) for h in (False, True) for v in (False, True)],
}
Predict = Callable[[Tensor], list[dict[str, Tensor]]]


def transform(images: Tensor, view: View) -> Tensor:
    """``images (B, C, H, W)`` as the view sees them (``(B, C, W, H)`` when transposed)."""
    transpose, hflip, vflip = view
    x = images.transpose(-1, -2) if transpose else images
    x = x.flip(-1) if hflip else x
    return x.flip(-2) if vflip else x


def restore(det: dict[str, Tensor], view: View, height: int, width: int) -> dict[str, Tensor]:
    """One image's detections of ``view`` in the original frame (``height x width``): ``boxes (N, 4)`` xyxy
    and, when present, ``polygons (N, K, 2)`` xy; other keys unchanged."""
    transpose, hflip, vflip = view
    w, h = (height, width) if transpose else (width, height)  # the view's frame
    out = dict(det)
    b = det["boxes"].clone()
    if vflip:
        b[:, [1, 3]] = h - b[:, [3, 1]]
    if hflip:
        b[:, [0, 2]] = w - b[:, [2, 0]]
    out["boxes"] = b[:, [1, 0, 3, 2]] if transpose else b
    if "polygons" in det:
        p = det["polygons"].clone()
        if vflip:
            p[..., 1] = h - p[..., 1]
        if hflip:
            p[..., 0] = w - p[..., 0]
        out["polygons"] = p.flip(-1) if transpose else p
    return out


def merge_views(dets: list[dict[str, Tensor]], iou: float, max_det: int) -> dict[str, Tensor]:
    """One image's detections from several views, merged by NMS with box voting (module docstring)."""
    keys = [k for k in dets[0] if isinstance(dets[0][k], Tensor)]
    d = {k: torch.cat([x[k] for x in dets]) for k in keys}
    keep = batched_nms(d["boxes"], d["scores"], d["labels"], iou)[:max_det]
    out = {k: v[keep] for k, v in d.items()}
    if keep.numel():
        members = (box_iou_matrix(out["boxes"], d["boxes"]) > iou) & (out["labels"][:, None] == d["labels"][None])
        members[torch.arange(keep.numel()), keep] = True  # a zero-area box has IoU 0 with itself
        w = members * d["scores"][None]
        out["boxes"] = (w @ d["boxes"]) / w.sum(1, keepdim=True)
    return out


@torch.no_grad()
def tta_predict(predict: Predict, images: Tensor, views: str = "d4", iou: float = 0.6, max_det: int = 300) -> list[dict]:
    """Per-image detections of ``predict`` merged over the TTA ``views`` (``"flips"`` or ``"d4"``).

    Args:
        predict: images ``(B, C, H', W')`` -> ``B`` dicts with ``boxes (N, 4)`` xyxy pixels, ``scores (N,)``,
            ``labels (N,)`` and optionally ``polygons (N, K, 2)`` and other per-detection tensors.
        images: ``(B, C, H, W)``; with ``"d4"`` the model must accept ``(W, H)`` images too.
        iou, max_det: the merge's NMS threshold and the detections kept per image.
    """
    if views not in VIEWS:
        raise ValueError(f"views must be one of {tuple(VIEWS)}, got {views!r}")
    h, w = images.shape[-2:]
    per_image: list[list[dict]] = [[] for _ in range(images.shape[0])]
    for view in VIEWS[views]:
        for i, det in enumerate(predict(transform(images, view))):
            per_image[i].append(restore(det, view, h, w))
    return [merge_views(dets, iou, max_det) for dets in per_image]
