"""How good are the pseudo-labels? Precision and recall against the ground truth of (labelled) images.

Matching is class-aware and greedy by score, as in COCO evaluation at one IoU threshold: per image, the
pseudo-labels are visited in decreasing score order (ties: the lower index first) and each takes the
unmatched ground-truth box of its own class (any class with ``class_aware=False``) with the highest IoU,
provided that IoU is ``>= iou`` (ties: the lower ground-truth index). Each ground-truth box is matched
at most once, so

* a matched pseudo-label is a true positive (TP);
* an unmatched one is a false positive (FP): background, a wrong class, or a duplicate of a box
  already matched by a higher-scored pseudo-label;
* an unmatched ground-truth box is a false negative (FN). A box with the right place but the wrong
  class therefore counts as one FP *and* one FN.

Zero-area boxes never match (their IoU is ``0 / 0 = nan``, see
:func:`detloss.ops.boxes.box_iou_matrix`).

``precision = TP / (TP + FP)`` is ``nan`` when there are no pseudo-labels (nothing was claimed, so no
claim can be right or wrong; reporting 1 or 0 would bias averages over batches), and
``recall = TP / (TP + FN)`` is ``nan`` when there is no ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from detloss.core.checks import check_same, check_tensor
from detloss.ops.boxes import box_iou_matrix

__all__ = ["pseudo_label_quality"]


def _check(name: str, dets: object, need_scores: bool) -> None:
    if not isinstance(dets, Sequence) or isinstance(dets, (str, bytes)):
        raise ValueError(f"{name} must be a list of per-image dicts with boxes (N, 4) and labels (N,)")
    for i, d in enumerate(dets):
        keys = ("boxes", "labels", "scores") if need_scores else ("boxes", "labels")
        if not isinstance(d, Mapping) or any(k not in d for k in keys):
            raise ValueError(f"{name}[{i}] must be a dict with keys {', '.join(keys)}")
        check_tensor(f"{name}[{i}]['boxes']", d["boxes"], ("N", 4), floating=True)
        check_tensor(f"{name}[{i}]['labels']", d["labels"], ("N",))
        check_same(f"{name}[{i}]['boxes']", d["boxes"], f"{name}[{i}]['labels']", d["labels"], dims=(0,))
        if d["labels"].is_floating_point():
            raise ValueError(f"{name}[{i}]['labels'] must be an integer tensor of shape (N,)")
        if need_scores:
            check_tensor(f"{name}[{i}]['scores']", d["scores"], ("N",))
            check_same(f"{name}[{i}]['boxes']", d["boxes"], f"{name}[{i}]['scores']", d["scores"], dims=(0,))


def _match(
    boxes: Tensor, scores: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou: float, class_aware: bool
) -> int:
    """Number of true positives of one image (greedy, see the module docstring)."""
    if boxes.shape[0] == 0 or gt_boxes.shape[0] == 0:
        return 0
    a, b = boxes.detach(), gt_boxes.detach().to(boxes.device)
    if a.dtype != b.dtype:
        a, b = a.double(), b.double()
    ious = box_iou_matrix(a, b)  # (N, M); nan for degenerate pairs, which never pass the threshold
    # -1 marks pairs that can never match: wrong class or below the threshold (nan included)
    can_match = ious >= iou
    if class_aware:
        can_match &= labels[:, None] == gt_labels.to(labels.device)[None, :]
    ious = torch.where(can_match, ious, -1.0)
    matched = torch.zeros(b.shape[0], dtype=torch.bool, device=a.device)
    tp = 0
    for i in torch.sort(scores.detach(), descending=True, stable=True).indices.tolist():
        row = ious[i].masked_fill(matched, -1.0)
        j = int(row.argmax())  # first maximum: the lower ground-truth index on ties
        if row[j] >= 0:
            matched[j] = True
            tp += 1
    return tp


def pseudo_label_quality(
    pseudo: Sequence[Mapping[str, Any]], gts: Sequence[Mapping[str, Any]], iou: float = 0.5, class_aware: bool = True
) -> dict[str, Any]:
    """Precision and recall of pseudo-labels against ground truth (see the module docstring).

    Args:
        pseudo: one dict per image with ``boxes (N, 4)`` ``xyxy``, ``scores (N,)``, ``labels (N,)`` int
            (other keys are ignored), e.g. the output of a :class:`~detloss.semi.PseudoLabelFilter`.
        gts: one dict per image with ``boxes (M, 4)`` ``xyxy`` in the same unit and ``labels (M,)`` int.
        iou: a pair matches when its IoU is ``>= iou``, in ``(0, 1]``.
        class_aware: ``False`` lets a box match ground truth of any class: the boxes' quality alone.
            A class-aware precision far below the class-agnostic one means the pseudo-boxes are in the
            right places with the wrong classes (then train the unlabelled box terms, not ``u_cls``).

    Returns:
        ``precision`` and ``recall`` (float, ``nan`` when undefined), ``tp``, ``fp``, ``fn`` (int totals)
        and ``per_image``: one ``{"tp", "fp", "fn"}`` dict of ints per image.

    Example:
        >>> box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
        >>> q = pseudo_label_quality([{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}],
        ...                          [{"boxes": box, "labels": torch.tensor([2])}])
        >>> q["tp"], q["fp"], q["fn"], q["precision"], q["recall"]
        (0, 1, 1, 0.0, 0.0)
    """
    _check("pseudo", pseudo, need_scores=True)
    _check("gts", gts, need_scores=False)
    if len(pseudo) != len(gts):
        raise ValueError(f"pseudo and gts must have one dict per image each, got {len(pseudo)} and {len(gts)}")
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    per_image = []
    for p, g in zip(pseudo, gts, strict=True):
        tp = _match(p["boxes"], p["scores"], p["labels"], g["boxes"], g["labels"], iou, class_aware)
        per_image.append({"tp": tp, "fp": p["boxes"].shape[0] - tp, "fn": g["boxes"].shape[0] - tp})
    tp, fp, fn = (sum(c[k] for c in per_image) for k in ("tp", "fp", "fn"))
    return {
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / (tp + fn) if tp + fn else math.nan,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "per_image": per_image,
    }
