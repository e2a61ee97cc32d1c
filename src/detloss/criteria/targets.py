"""YOLO-layout targets (flat ``batch_idx``/``cls``/``bboxes``) to padded per-image pixel tensors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from detloss._checks import check_tensor


@dataclass(frozen=True)
class PaddedTargets:
    """Ground truth padded to ``M`` (the most objects in one image) slots per image.

    Attributes:
        labels: ``(B, M)`` int64 class ids (0 in empty slots).
        boxes: ``(B, M, 4)`` pixel ``xyxy`` (0 in empty slots).
        mask: ``(B, M)`` bool, real objects.
        polygons: ``(B, M, K, 2)`` pixel vertices, or ``None``.
        polygon_valid: ``(B, M, K)`` bool valid vertices, or ``None``.
    """

    labels: Tensor
    boxes: Tensor
    mask: Tensor
    polygons: Tensor | None = None
    polygon_valid: Tensor | None = None


def _vertex_mask(targets: Mapping[str, Tensor], n: int, k: int, device: torch.device) -> Tensor:
    if "polygon_valid" in targets:
        valid = targets["polygon_valid"]
        check_tensor("targets['polygon_valid']", valid, (n, k))
        return valid.to(device=device, dtype=torch.bool)
    if "polygon_counts" in targets:
        counts = targets["polygon_counts"]
        check_tensor("targets['polygon_counts']", counts, (n,))
        return torch.arange(k, device=device) < counts.to(device).view(-1, 1)
    return torch.ones(n, k, dtype=torch.bool, device=device)


def pad_targets(
    targets: Mapping[str, Tensor], batch_size: int, image_hw: tuple[float, float], device: torch.device
) -> PaddedTargets:
    """Scatter flat YOLO targets into padded per-image tensors in pixels.

    Args:
        targets: ``batch_idx (N,)`` image index, ``cls (N,)`` or ``(N, 1)`` class, ``bboxes (N, 4)``
            normalized ``cx, cy, w, h``; optionally ``polygons (N, K, 2)`` normalized ``x, y`` with
            ``polygon_valid (N, K)`` bool or ``polygon_counts (N,)`` (valid vertices first).
        batch_size: ``B``; ``batch_idx`` must lie in ``[0, B)``.
        image_hw: image ``(height, width)`` in pixels.
        device: where the outputs live.
    """
    for key in ("batch_idx", "cls", "bboxes"):
        if key not in targets:
            raise ValueError(f"targets must contain 'batch_idx' (N,), 'cls' (N,) and 'bboxes' (N, 4); missing {key!r}")
    check_tensor("targets['bboxes']", targets["bboxes"], ("N", 4), floating=True)
    n = targets["bboxes"].shape[0]
    check_tensor("targets['batch_idx']", targets["batch_idx"].reshape(-1), (n,))
    check_tensor("targets['cls']", targets["cls"].reshape(-1), (n,))
    idx = targets["batch_idx"].reshape(-1).to(device=device, dtype=torch.long)
    cls = targets["cls"].reshape(-1).to(device=device, dtype=torch.long)
    h, w = image_hw
    scale = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
    cxcywh = targets["bboxes"].to(device=device, dtype=torch.float32) * scale
    xyxy = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)

    per_image = torch.bincount(idx, minlength=batch_size) if n else torch.zeros(batch_size, dtype=torch.long)
    if per_image.numel() > batch_size:
        raise ValueError(f"targets['batch_idx'] must lie in [0, {batch_size}) for a batch of {batch_size} images")
    m = int(per_image.max()) if n else 0  # one host sync: the padded size must be known
    order = torch.argsort(idx, stable=True)
    starts = torch.cumsum(per_image, 0) - per_image
    slot = torch.empty_like(idx)
    slot[order] = torch.arange(n, device=device) - starts.to(device)[idx[order]]

    labels = torch.zeros(batch_size, m, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, m, 4, device=device)
    mask = torch.zeros(batch_size, m, dtype=torch.bool, device=device)
    labels[idx, slot] = cls
    boxes[idx, slot] = xyxy
    mask[idx, slot] = True

    polygons = polygon_valid = None
    if "polygons" in targets:
        check_tensor("targets['polygons']", targets["polygons"], (n, "K", 2), floating=True)
        k = targets["polygons"].shape[1]
        polygons = torch.zeros(batch_size, m, k, 2, device=device)
        polygon_valid = torch.zeros(batch_size, m, k, dtype=torch.bool, device=device)
        polygons[idx, slot] = targets["polygons"].to(device=device, dtype=torch.float32) * scale[:2]
        polygon_valid[idx, slot] = _vertex_mask(targets, n, k, device)
    return PaddedTargets(labels, boxes, mask, polygons, polygon_valid)
