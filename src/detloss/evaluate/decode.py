"""Decode the raw outputs of a dense (anchor-free, DFL) head into per-image detections.

The channel layout is exactly the one :class:`detloss.DenseCriterion` trains: per level
``(B, 4R + C [+ O] [+ 2K], H, W)``, box distributions, class logits, an objectness logit and polygon vertex
offsets, as
:class:`~detloss.ops.head_layout.HeadLayout` describes.

Post-processing follows ultralytics' ``non_max_suppression`` in single-label mode: one label per anchor
(its best class), kept when that class's sigmoid score is ``> conf``, at most ``max_nms`` candidates
by score, class-aware NMS, at most ``max_det`` per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from detloss.assign.anchors import dist2bbox, make_anchors
from detloss.ops.head_layout import HeadLayout
from detloss.ops.nms import batched_nms

__all__ = ["decode_dense"]


@torch.no_grad()
def decode_dense(
    feats: Sequence[torch.Tensor],
    strides: Sequence[int | float],
    num_classes: int,
    reg_max: int,
    num_vertices: int = 0,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    *,
    max_nms: int = 30000,
    return_index: bool = False,
    objectness: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Per-image detections from the per-level outputs of a dense head.

    Args:
        feats: one ``(B, 4R + C + O + 2K, H_l, W_l)`` tensor per level (``R = reg_max``, ``C = num_classes``,
            ``O = 1`` with ``objectness`` else 0, ``K = num_vertices``).
        strides: pixels per cell of each level, e.g. ``(8, 16, 32)``.
        num_classes: ``C``.
        reg_max: DFL bins per side (``1``: direct ``ltrb`` distances).
        num_vertices: ``K`` polygon vertices (0: no polygon branch).
        conf: keep anchors whose score (see Returns) is ``> conf``.
        iou: NMS IoU threshold (class-aware).
        max_det: detections kept per image, best first.
        max_nms: candidates entering NMS per image, best first.
        return_index: also return each kept detection's flat anchor index (see Returns).
        objectness: the head has an objectness channel; a detection's score is then its best class's
            sigmoid times the sigmoid of its objectness logit (the label is still the best class).

    Returns:
        One dict per image: ``boxes (N, 4)`` ``xyxy`` pixels, ``scores (N,)`` (sigmoid of the best class
        logit, times the objectness sigmoid with ``objectness``), ``labels (N,)`` int64, and with
        ``num_vertices > 0`` ``polygons (N, K, 2)`` pixels; sorted by decreasing score. With
        ``return_index`` also ``index (N,)`` int64: the flat anchor index of each detection, levels
        concatenated in order and row-major within a level (level ``l``'s cell ``(y, x)`` is
        ``sum(H_j * W_j for j < l) + y * W_l + x``), so a caller can read that anchor's raw outputs, e.g.
        its DFL logits. Computed in float32 without gradient.

    Example:
        >>> feats = [torch.full((1, 11, 2, 2), -10.0)]  # 4 sides x 2 bins + 3 classes
        >>> feats[0][0, 8 + 1, 0, 1] = 5.0  # class 1 at cell (y=0, x=1); DFL logits all equal -> 0.5
        >>> det = decode_dense(feats, strides=(8,), num_classes=3, reg_max=2)[0]
        >>> det["boxes"], det["labels"]
        (tensor([[ 8.,  0., 16.,  8.]]), tensor([1]))

        With an objectness channel (channel 11), the score is the product: sigmoid(5) * sigmoid(0) = 0.4967.

        >>> feats = [torch.cat((feats[0], torch.zeros(1, 1, 2, 2)), 1)]
        >>> det = decode_dense(feats, strides=(8,), num_classes=3, reg_max=2, objectness=True)[0]
        >>> det["scores"], det["labels"]
        (tensor([0.4967]), tensor([1]))
    """
    if num_classes < 1 or reg_max < 1 or num_vertices < 0:
        raise ValueError("num_classes and reg_max must be >= 1 and num_vertices >= 0")
    layout = HeadLayout(reg_max, num_classes, num_vertices, objectness)
    layout.check(feats)
    if not isinstance(strides, Sequence) or len(strides) != len(feats):
        raise ValueError(f"strides must have one entry per level of feats ({len(feats)}), got {strides!r}")
    device = feats[0].device
    sizes = [(f.shape[2], f.shape[3]) for f in feats]
    points, anchor_strides = make_anchors(sizes, strides, device=device)  # (A, 2), (A,)

    ltrb = layout.decode_boxes(layout.flatten(feats, "box").float())  # (B, A, 4)
    boxes = dist2bbox(ltrb * anchor_strides[:, None], points)  # (B, A, 4) pixels
    scores, labels = layout.flatten(feats, "cls").float().sigmoid().max(-1)  # (B, A)
    if objectness:
        scores = scores * layout.flatten(feats, "obj").float().sigmoid()[..., 0]
    polygons = None
    if num_vertices:
        offsets = layout.vertices(layout.flatten(feats, "poly").float())  # (B, A, K, 2)
        polygons = points[:, None, :] + offsets * anchor_strides[:, None, None]

    out = []
    for i in range(boxes.shape[0]):
        cand = (scores[i] > conf).nonzero().squeeze(1)
        if cand.numel() > max_nms:
            cand = cand[scores[i, cand].topk(max_nms).indices]
        keep = cand[batched_nms(boxes[i, cand], scores[i, cand], labels[i, cand], iou)[:max_det]]
        det = {"boxes": boxes[i, keep], "scores": scores[i, keep], "labels": labels[i, keep]}
        if polygons is not None:
            det["polygons"] = polygons[i, keep]
        if return_index:
            det["index"] = keep  # already flat anchor indices: cand indexes the concatenated anchors
        out.append(det)
    return out
