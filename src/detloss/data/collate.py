"""Batch samples into images and the flat, normalized YOLO-layout targets :class:`DenseCriterion` takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["collate"]


def collate(samples: Sequence[Mapping[str, Any]]) -> tuple[Tensor, dict[str, Any]]:
    """Stack ``B`` samples into ``images (B, 3, H, W)`` and YOLO targets in normalized coordinates.

    Each sample holds ``image (3, H, W)`` (the same size in every sample; letterbox first), ``labels (n,)``,
    ``boxes (n, 4)`` pixel ``xyxy`` and optionally ``polygons (n, K, 2)`` pixel with
    ``polygon_counts (n,)``, and ``masks (H, W)``. Polygons and masks must be in all samples or in none.

    Returns:
        ``images`` and a dict with ``batch_idx (N,)`` int64, ``cls (N,)`` int64, ``bboxes (N, 4)`` float32
        ``cx, cy, w, h`` divided by ``(W, H, W, H)``; with polygons ``polygons (N, K, 2)`` float32 divided
        by ``(W, H)`` (``K`` the largest in the batch; padded vertices are 0) and ``polygon_counts (N,)``
        int64; with masks ``masks``, the list of the ``B`` ``(H, W)`` instance masks. Objects a sample flags
        ``ignore`` (VOC ``difficult``, tiles' cut objects) are not targets: their boxes come as
        ``ignore_bboxes (M, 4)`` (normalized ``cx, cy, w, h``) with ``ignore_batch_idx (M,)``, present when a
        sample has an ``ignore`` entry. Other sample keys are not collected.

    >>> s = {"image": torch.zeros(3, 10, 20), "labels": torch.tensor([1]),
    ...      "boxes": torch.tensor([[0.0, 0.0, 10.0, 5.0]])}
    >>> images, t = collate([s, s])
    >>> images.shape, t["batch_idx"].tolist(), t["bboxes"][0].tolist()
    (torch.Size([2, 3, 10, 20]), [0, 1], [0.25, 0.25, 0.5, 0.5])
    """
    if len(samples) == 0:
        raise ValueError("collate needs at least one sample")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"all images of a batch must have one shape (letterbox them first), got {sorted(shapes)}")
    images = torch.stack([s["image"] for s in samples]).float()
    h, w = images.shape[-2], images.shape[-1]
    device = images.device

    has_poly = ["polygons" in s for s in samples]
    if any(has_poly) and not all(has_poly):
        raise ValueError("samples must all have 'polygons' or none of them")
    has_mask = ["masks" in s for s in samples]
    if any(has_mask) and not all(has_mask):
        raise ValueError("samples must all have 'masks' or none of them")

    ignored = None
    if any("ignore" in s for s in samples):
        samples, ignored = _split_ignored(samples)

    counts = []
    for i, s in enumerate(samples):
        n = s["boxes"].shape[0]
        if s["boxes"].dim() != 2 or s["boxes"].shape[1] != 4 or s["labels"].reshape(-1).shape[0] != n:
            raise ValueError(
                f"sample {i}: 'boxes' must be (n, 4) and 'labels' (n,), got {tuple(s['boxes'].shape)} and "
                f"{tuple(s['labels'].shape)}"
            )
        counts.append(n)
    batch_idx = torch.repeat_interleave(torch.arange(len(samples)), torch.tensor(counts, dtype=torch.long))
    cls = torch.cat([s["labels"].reshape(-1).long() for s in samples])
    xyxy = torch.cat([s["boxes"].float().reshape(-1, 4) for s in samples])
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=xyxy.device)
    targets: dict[str, Any] = {
        "batch_idx": batch_idx.to(device),
        "cls": cls.to(device),
        "bboxes": _normalized_cxcywh(xyxy, scale).to(device),
    }

    if all(has_poly):
        k = max(s["polygons"].shape[1] for s in samples)
        polys, pcounts = [], []
        for s in samples:
            p = s["polygons"].float()
            n, kk = p.shape[0], p.shape[1]
            if "polygon_counts" in s:
                c = s["polygon_counts"].long().to(p.device)
            else:
                c = torch.full((n,), kk, dtype=torch.long, device=p.device)
            valid = torch.arange(kk, device=p.device) < c.view(-1, 1)
            p = torch.where(valid[..., None], p / scale[:2].to(p.device), p.new_zeros(()))
            polys.append(torch.cat((p, p.new_zeros(n, k - kk, 2)), 1).to(device))
            pcounts.append(c.to(device))
        targets["polygons"] = torch.cat(polys)
        targets["polygon_counts"] = torch.cat(pcounts)
    if all(has_mask):
        targets["masks"] = [s["masks"] for s in samples]
    if ignored is not None:
        idx = torch.cat([torch.full((len(b),), i, dtype=torch.long) for i, b in enumerate(ignored)])
        xyxy = torch.cat([b.float().reshape(-1, 4) for b in ignored]).to(scale.device)
        targets["ignore_bboxes"], targets["ignore_batch_idx"] = _normalized_cxcywh(xyxy, scale).to(device), idx.to(device)
    return images, targets


#: the per-object entries of a sample (one row per object); transforms keep or drop them together
OBJECT_KEYS = ("labels", "boxes", "polygons", "polygon_counts", "is_polygon", "ignore")


def _normalized_cxcywh(xyxy: Tensor, scale: Tensor) -> Tensor:
    """``(N, 4)`` pixel ``xyxy`` -> ``cx, cy, w, h`` divided by ``scale = (W, H, W, H)``."""
    return torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1) / scale


def _split_ignored(samples: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[Tensor]]:
    """The samples without their ``ignore`` objects, and each sample's ignored boxes ``(m, 4)``."""
    kept, ignored = [], []
    for i, s in enumerate(samples):
        flag = s.get("ignore")
        if flag is None:
            kept.append(s)
            ignored.append(s["boxes"].new_zeros(0, 4))
            continue
        if "masks" in s and bool(flag.any()):
            raise ValueError(f"sample {i}: 'masks' with 'ignore' objects are not supported (mask ids would shift)")
        out = dict(s)
        for key in OBJECT_KEYS:
            if key in s:
                out[key] = s[key][~flag]
        kept.append(out)
        ignored.append(s["boxes"][flag])
    return kept, ignored
