"""YOLO-layout targets (flat ``batch_idx``/``cls``/``bboxes``) to padded per-image pixel tensors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from detloss.core.checks import check_tensor
from detloss.criteria.target_checks import ValueChecks


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


def _vertex_mask(targets: Mapping[str, Tensor], n: int, k: int, device: torch.device, checks: ValueChecks) -> Tensor:
    if "polygon_valid" in targets:
        valid = targets["polygon_valid"]
        check_tensor("targets['polygon_valid']", valid, (n, k))
        checks.bool_mask("targets['polygon_valid']", valid.to(device))
        return valid.to(device=device, dtype=torch.bool)
    if "polygon_counts" in targets:
        check_tensor("targets['polygon_counts']", targets["polygon_counts"], (n,))
        counts = targets["polygon_counts"].to(device)
        checks.integers("targets['polygon_counts']", counts, 0, k, closed=True)
        return torch.arange(k, device=device) < counts.view(-1, 1)
    return torch.ones(n, k, dtype=torch.bool, device=device)


def pad_targets(
    targets: Mapping[str, Tensor],
    batch_size: int,
    image_hw: tuple[float, float],
    device: torch.device,
    num_classes: int | None = None,
) -> PaddedTargets:
    """Scatter flat YOLO targets into padded per-image tensors in pixels.

    Args:
        targets: ``batch_idx (N,)`` image index, ``cls (N,)`` or ``(N, 1)`` class, ``bboxes (N, 4)``
            normalized ``cx, cy, w, h``; optionally ``polygons (N, K, 2)`` normalized ``x, y`` with
            ``polygon_valid (N, K)`` bool or ``polygon_counts (N,)`` (valid vertices first).
        batch_size: ``B``; ``batch_idx`` must lie in ``[0, B)``.
        image_hw: image ``(height, width)`` in pixels.
        device: where the outputs live.
        num_classes: ``C``, if known: ``cls`` must lie in ``[0, C)``.

    Raises:
        ValueError: naming the key, the first bad row and the expected range, for a ``batch_idx`` or
            ``cls`` that is not an integer in range (float values are accepted if integral), a box
            that is not finite or has ``w < 0`` or ``h < 0``, a ``polygon_counts`` outside ``[0, K]``,
            a ``polygon_valid`` that is not 0/1, or a non-finite valid polygon vertex. Every check
            and the padded size are read from the device together, in one sync.
    """
    for key in ("batch_idx", "cls", "bboxes"):
        if key not in targets:
            raise ValueError(f"targets must contain 'batch_idx' (N,), 'cls' (N,) and 'bboxes' (N, 4); missing {key!r}")
    check_tensor("targets['bboxes']", targets["bboxes"], ("N", 4), floating=True)
    n = targets["bboxes"].shape[0]
    check_tensor("targets['batch_idx']", targets["batch_idx"].reshape(-1), (n,))
    check_tensor("targets['cls']", targets["cls"].reshape(-1), (n,))
    raw_idx = targets["batch_idx"].reshape(-1).to(device)
    raw_cls = targets["cls"].reshape(-1).to(device)
    raw_boxes = targets["bboxes"].to(device)
    checks = ValueChecks()
    bad_idx = checks.integers("targets['batch_idx']", raw_idx, 0, batch_size)
    checks.integers("targets['cls']", raw_cls, 0, num_classes)
    checks.boxes("targets['bboxes']", raw_boxes, "cxcywh")
    k = 0
    if "polygons" in targets:
        check_tensor("targets['polygons']", targets["polygons"], (n, "K", 2), floating=True)
        k = targets["polygons"].shape[1]
        raw_polygons = targets["polygons"].to(device)
        vertex_valid = _vertex_mask(targets, n, k, device, checks)
        checks.finite_points("targets['polygons']", raw_polygons, where=vertex_valid)

    # Rows with a bad index are counted in an extra bucket, so the counts exist before the one read
    # that both checks every row and fetches the padded size.
    idx = torch.where(bad_idx, batch_size, raw_idx.long())
    buckets = torch.zeros(batch_size + 1, dtype=torch.long, device=device)
    per_image = buckets.index_add_(0, idx, torch.ones_like(idx))[:batch_size]
    (m,) = checks.verify(per_image.max() if batch_size else per_image.new_zeros(()))

    cls = raw_cls.long()
    h, w = image_hw
    scale = torch.tensor([w, h, w, h], device=device, dtype=torch.float32)
    cxcywh = raw_boxes.float() * scale
    xyxy = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), 1)
    order = torch.argsort(idx, stable=True)
    starts = torch.cumsum(per_image, 0) - per_image
    slot = torch.empty_like(idx)
    slot[order] = torch.arange(n, device=device) - starts[idx[order]]

    labels = torch.zeros(batch_size, m, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, m, 4, device=device)
    mask = torch.zeros(batch_size, m, dtype=torch.bool, device=device)
    labels[idx, slot] = cls
    boxes[idx, slot] = xyxy
    mask[idx, slot] = True

    polygons = polygon_valid = None
    if "polygons" in targets:
        polygons = torch.zeros(batch_size, m, k, 2, device=device)
        polygon_valid = torch.zeros(batch_size, m, k, dtype=torch.bool, device=device)
        polygons[idx, slot] = raw_polygons.float() * scale[:2]
        polygon_valid[idx, slot] = vertex_valid
    return PaddedTargets(labels, boxes, mask, polygons, polygon_valid)
