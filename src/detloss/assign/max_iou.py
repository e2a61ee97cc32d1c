"""Max-IoU assignment of anchors or proposals to ground truth (mmdet ``MaxIoUAssigner`` semantics).

For each box ``i`` (anchor or proposal) and the ground-truth boxes ``j`` of its image, with
``iou[i, j]`` their IoU (``box_iou_matrix``, ``w = x2 - x1``, no ``+1``):

1. ``max_iou[i] = max_j iou[i, j]`` and ``argmax[i]`` (ties: the lowest ``j``). Without GT, ``max_iou = 0``.
2. **Negative** (``gt_index = -1``) where ``max_iou < neg_iou``.
3. **Positive** (``gt_index = argmax``) where ``max_iou >= pos_iou``.
4. Otherwise **ignored** (``gt_index = -2``): ``neg_iou <= max_iou < pos_iou``.
5. **Low-quality matches** (``allow_low_quality=True``): every GT ``j`` whose best IoU
   ``gt_max[j] = max_i iou[i, j]`` is ``>= min_pos_iou`` (and ``> 0``) claims *all* boxes that reach
   it (``iou[i, j] == gt_max[j]``, ties included), overriding steps 2–4. A box that is the best of
   several GTs goes to the last of them (highest ``j``), as mmdet's loop over GTs does. This keeps
   a GT that no box overlaps by ``pos_iou`` (small or thin objects) from having no positive at all.

Differences from the references, on purpose: a GT that overlaps no box at all (``gt_max = 0``) gets no
low-quality match even when ``min_pos_iou = 0`` (mmdet would then make every zero-IoU box positive);
detectron2's ``Matcher`` keeps ``argmax`` as the matched GT of a low-quality match where mmdet (and
this code) takes the GT the box is best for. Degenerate pairs whose IoU is ``0 / 0`` count as ``0``.

Everything is batched: an ``(..., N, M)`` IoU matrix with a validity mask handles padded per-image
GTs (``(B, A, M)``, shared anchors) and flat proposals of several images (``(R, N_total)``, a pair is
valid only if proposal and GT belong to the same image) alike, without host synchronisation; above a
budget of pairs (``max_pairs``) the assigner goes one image at a time instead, with the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from detloss.core.checks import check_tensor
from detloss.ops.boxes import box_iou_matrix

__all__ = ["MaxIoUAssigner", "MaxIoUAssignment"]

NEGATIVE = -1
IGNORED = -2


@dataclass(frozen=True)
class MaxIoUAssignment:
    """Per box (anchor or proposal) result of :class:`MaxIoUAssigner`; all shaped ``(..., N)``.

    Attributes:
        gt_index: int64 GT index (within the box's image) of positives, ``-1`` negative, ``-2`` ignored.
        max_iou: float IoU with the best GT of its image (``0`` without GT).
        labels: int64 class of the assigned GT for positives, ``-1`` elsewhere (``-1`` without labels).
    """

    gt_index: Tensor
    max_iou: Tensor
    labels: Tensor

    @property
    def pos(self) -> Tensor:
        """Bool positives."""
        return self.gt_index >= 0

    @property
    def neg(self) -> Tensor:
        """Bool negatives."""
        return self.gt_index == NEGATIVE


class MaxIoUAssigner:
    """Assign boxes to GTs by IoU thresholds with optional low-quality matches (module docstring).

    Args:
        pos_iou: ``max_iou >= pos_iou`` makes a positive.
        neg_iou: ``max_iou < neg_iou`` makes a negative; in between is ignored. Needs ``neg_iou <= pos_iou``.
        min_pos_iou: a GT's best boxes become positives (low-quality matches) if their IoU is at least this.
        allow_low_quality: enable the low-quality matches.
        max_pairs: budget of IoU pairs for the vectorized batch path (``B x A x max n_i`` padded for
            shared anchors, ``R x sum n_i`` for proposals); above it :meth:`__call__` goes one image at a
            time (``A x n_i`` pairs, as mmdet and detectron2 do). Both give identical results.

    RPN defaults are ``(0.7, 0.3, 0.3)``; mmdet's ROI head uses ``(0.5, 0.5, 0.5)``.

    Example:
        >>> iou = torch.tensor([[0.8, 0.1], [0.5, 0.2], [0.1, 0.35], [0.0, 0.0]])
        >>> MaxIoUAssigner().assign_iou(iou).gt_index
        tensor([ 0, -2,  1, -1])
    """

    def __init__(
        self,
        pos_iou: float = 0.7,
        neg_iou: float = 0.3,
        min_pos_iou: float = 0.3,
        allow_low_quality: bool = True,
        max_pairs: int = 2**24,
    ) -> None:
        if not 0.0 <= neg_iou <= pos_iou <= 1.0:
            raise ValueError(f"need 0 <= neg_iou <= pos_iou <= 1, got neg_iou={neg_iou}, pos_iou={pos_iou}")
        if not 0.0 <= min_pos_iou <= 1.0:
            raise ValueError(f"min_pos_iou must be in [0, 1], got {min_pos_iou}")
        self.pos_iou = float(pos_iou)
        self.neg_iou = float(neg_iou)
        self.min_pos_iou = float(min_pos_iou)
        self.allow_low_quality = bool(allow_low_quality)
        self.max_pairs = int(max_pairs)

    def __repr__(self) -> str:
        return (
            f"MaxIoUAssigner(pos_iou={self.pos_iou}, neg_iou={self.neg_iou}, "
            f"min_pos_iou={self.min_pos_iou}, allow_low_quality={self.allow_low_quality})"
        )

    @torch.no_grad()
    def assign_iou(self, iou: Tensor, valid: Tensor | None = None, gt_labels: Tensor | None = None) -> MaxIoUAssignment:
        """Assign from an IoU matrix.

        Args:
            iou: ``(..., N, M)`` IoU of ``N`` boxes with ``M`` GT slots.
            valid: bool, broadcastable to ``iou``: which pairs count (padding slots, other images'
                GTs are ``False``); ``None``: all.
            gt_labels: ``(..., M)`` int class of each GT slot, or ``None``.

        Returns:
            :class:`MaxIoUAssignment` with ``(..., N)`` tensors; ``gt_index`` indexes the ``M`` slots.
        """
        if not isinstance(iou, Tensor) or iou.dim() < 2:
            raise ValueError(f"iou must be a tensor of shape (..., N, M), got {getattr(iou, 'shape', type(iou))}")
        iou = torch.nan_to_num(iou.float(), nan=0.0)
        if valid is None:
            valid = torch.ones((), dtype=torch.bool, device=iou.device)
        valid = valid.to(device=iou.device, dtype=torch.bool).expand_as(iou)
        n, m = iou.shape[-2], iou.shape[-1]
        if m == 0:  # no GT slot: one invalid column keeps the reductions defined
            iou = iou.new_zeros((*iou.shape[:-1], 1))
            valid = valid.new_zeros((*valid.shape[:-1], 1))
            if gt_labels is not None:
                gt_labels = gt_labels.new_zeros((*gt_labels.shape[:-1], 1))
        masked = torch.where(valid, iou, torch.full_like(iou, -1.0))
        max_iou, argmax = masked.max(-1)  # (..., N); first maximum on ties
        gt_index = torch.full_like(argmax, IGNORED)
        gt_index = torch.where(max_iou < self.neg_iou, torch.full_like(argmax, NEGATIVE), gt_index)
        gt_index = torch.where(max_iou >= self.pos_iou, argmax, gt_index)
        if self.allow_low_quality and n > 0:
            gt_max = masked.amax(-2, keepdim=True)  # (..., 1, M) best IoU of each GT
            claims = (masked == gt_max) & (gt_max >= self.min_pos_iou) & (gt_max > 0) & valid
            slots = torch.arange(masked.shape[-1], device=iou.device)
            last = torch.where(claims, slots, torch.full_like(slots, -1)).amax(-1)  # (..., N)
            gt_index = torch.where(last >= 0, last, gt_index)
        if gt_labels is None:
            labels = torch.full_like(gt_index, -1)
        else:
            labels = torch.gather(gt_labels.long().expand(*iou.shape[:-2], -1), -1, gt_index.clamp_min(0))
            labels = torch.where(gt_index >= 0, labels, torch.full_like(labels, -1))
        return MaxIoUAssignment(gt_index=gt_index, max_iou=max_iou.clamp_min(0.0), labels=labels)

    @torch.no_grad()
    def __call__(
        self,
        boxes: Tensor,
        gt_boxes: Sequence[Tensor],
        gt_labels: Sequence[Tensor] | None = None,
        box_image: Tensor | None = None,
    ) -> MaxIoUAssignment:
        """Assign boxes of a batch of images to each image's GTs.

        Args:
            boxes: ``(A, 4)`` pixel ``xyxy`` anchors shared by every image, or, with ``box_image``,
                ``(R, 4)`` proposals of all images together.
            gt_boxes: per image ``(n_i, 4)`` pixel ``xyxy``.
            gt_labels: per image ``(n_i,)`` int classes, or ``None``.
            box_image: ``(R,)`` int image of each proposal, in ``[0, len(gt_boxes))``; ``None`` for shared anchors.

        Returns:
            :class:`MaxIoUAssignment`: ``(B, A)`` for shared anchors, ``(R,)`` for proposals;
            ``gt_index`` is the index within the box's image's ``gt_boxes``.

        Example:
            >>> anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
            >>> r = MaxIoUAssigner()(anchors, [torch.tensor([[0.0, 0.0, 10.0, 9.0]]), torch.zeros(0, 4)])
            >>> r.gt_index
            tensor([[ 0, -1],
                    [-1, -1]])
        """
        check_tensor("boxes", boxes, ("N", 4), floating=True)
        b = len(gt_boxes)
        for i, g in enumerate(gt_boxes):
            check_tensor(f"gt_boxes[{i}]", g, ("n", 4), floating=True)
        if gt_labels is not None:
            if len(gt_labels) != b:
                raise ValueError(f"gt_labels must have one entry per image ({b}), got {len(gt_labels)}")
            for i, (g, lab) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
                check_tensor(f"gt_labels[{i}]", lab, (g.shape[0],))
        device = boxes.device
        gts = [g.to(device, boxes.dtype) for g in gt_boxes]
        labels = None if gt_labels is None else [lab.to(device).long() for lab in gt_labels]
        if box_image is None:
            return self._shared(boxes, gts, labels)
        check_tensor("box_image", box_image, (boxes.shape[0],))
        if box_image.is_floating_point():
            raise ValueError(f"box_image must be an integer tensor of shape ({boxes.shape[0]},), got {box_image.dtype}")
        return self._flat(boxes, gts, labels, box_image.to(device).long())

    def _shared(self, anchors: Tensor, gts: list[Tensor], labels: list[Tensor] | None) -> MaxIoUAssignment:
        b, a, device = len(gts), anchors.shape[0], anchors.device
        counts = [int(g.shape[0]) for g in gts]
        m = max(counts, default=0)
        if b * a * max(m, 1) > self.max_pairs:  # one image at a time: A x n_i pairs
            parts = [
                self.assign_iou(box_iou_matrix(anchors, g), None, None if labels is None else labels[i])
                for i, g in enumerate(gts)
            ]
            return MaxIoUAssignment(
                *(torch.stack([getattr(p, f) for p in parts]) for f in ("gt_index", "max_iou", "labels"))
            )
        padded = anchors.new_zeros(b, m, 4)
        slot_labels = torch.zeros(b, m, dtype=torch.long, device=device)
        for i, g in enumerate(gts):
            padded[i, : counts[i]] = g
            if labels is not None:
                slot_labels[i, : counts[i]] = labels[i]
        iou = box_iou_matrix(anchors, padded.view(-1, 4)).view(a, b, m).transpose(0, 1)  # (B, A, M)
        valid = torch.arange(m, device=device)[None, None, :] < torch.tensor(counts, device=device).view(b, 1, 1)
        return self.assign_iou(iou, valid, None if labels is None else slot_labels)

    def _flat(
        self, rois: Tensor, gts: list[Tensor], labels: list[Tensor] | None, roi_image: Tensor
    ) -> MaxIoUAssignment:
        b, r, device = len(gts), rois.shape[0], rois.device
        counts = [int(g.shape[0]) for g in gts]
        total = sum(counts)
        if r * max(total, 1) > self.max_pairs:  # one image at a time: R_i x n_i pairs (syncs per image)
            gt_index = torch.full((r,), NEGATIVE, dtype=torch.long, device=device)
            max_iou = torch.zeros(r, device=device)
            out_labels = torch.full((r,), -1, dtype=torch.long, device=device)
            for i, g in enumerate(gts):
                rows = torch.nonzero(roi_image == i).squeeze(1)
                part = self.assign_iou(box_iou_matrix(rois[rows], g), None, None if labels is None else labels[i])
                gt_index[rows], max_iou[rows], out_labels[rows] = part.gt_index, part.max_iou, part.labels
            return MaxIoUAssignment(gt_index, max_iou, out_labels)
        flat = torch.cat(gts) if b else rois.new_zeros(0, 4)
        image = torch.repeat_interleave(
            torch.arange(b, device=device), torch.tensor(counts, device=device, dtype=torch.long)
        )
        valid = roi_image[:, None] == image[None, :]
        result = self.assign_iou(
            box_iou_matrix(rois, flat), valid, None if labels is None or not b else torch.cat(labels)
        )
        offsets = torch.tensor([0, *counts], device=device).cumsum(0)[:-1]
        start = offsets[roi_image] if b else torch.zeros_like(result.gt_index)
        local = torch.where(result.gt_index >= 0, result.gt_index - start, result.gt_index)
        return MaxIoUAssignment(gt_index=local, max_iou=result.max_iou, labels=result.labels)
