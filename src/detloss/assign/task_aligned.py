"""Task-aligned assignment (TOOD, Feng et al. 2021) exactly as YOLOv8 does it (ultralytics ``tal.py``).

Given, per image, ``M`` ground-truth slots (``gt_mask`` says which are real) and ``A`` anchor points with
their predicted class probabilities and boxes, each anchor is either background or assigned to one GT.

The rule, step by step (``b`` image, ``j`` GT slot, ``a`` anchor), replicating ultralytics 8.x
``TaskAlignedAssigner`` including its eps placements, tie-breaking and quirks:

1. **Candidates.** ``a`` is a candidate of ``j`` iff its point lies *strictly* inside the GT box:
   ``min(x - x1, y - y1, x2 - x, y2 - y) > 1e-9`` (a fixed eps, as ultralytics'
   ``select_candidates_in_gts``; an anchor exactly on the border is not a candidate).
   With ``min_candidate_size=(below, size)`` (ultralytics 8.4, see below) the box used *for this test
   only* is first rewritten as centre/size ``cx = (x1 + x2) / 2, w = x2 - x1`` (same for ``y``), every side
   ``< below`` is replaced by ``size``, and the box is rebuilt as ``cx - w / 2, cx + w / 2`` — exactly
   ultralytics' ``xyxy2xywh`` / ``xywh2xyxy`` arithmetic (so even unchanged boxes take that round trip,
   as in 8.4). IoUs and targets always use the original box.
2. **Alignment.** For candidate pairs only: ``IoU = CIoU(gt, pred).clamp(0)`` (ultralytics ``bbox_iou``
   conventions, ``eps = 1e-7``, GT box first) and ``t = s^alpha * IoU^beta`` with ``s`` the predicted
   probability of the GT's class. Non-candidate pairs have ``t = IoU = 0``.
3. **Top-k.** For each real GT, ``torch.topk`` over *all* ``A`` values of its row of ``t`` (zeros
   included), ``k = min(topk, A)``; positives = top-k indices that are candidates. So a GT with fewer
   than ``k`` candidates keeps all its candidates with ``t > 0``, plus whichever zero-``t`` candidates
   ``torch.topk``'s tie-breaking among equal zeros happens to pick (this is what ultralytics does;
   it only matters for positives of target score 0). Padding slots never take part (ultralytics'
   ``topk_mask`` / ``count > 1`` trick has exactly this effect).
4. **One GT per anchor.** An anchor that is a positive of several GTs goes to the GT with the highest
   ``IoU`` — the argmax over *all* GT slots of the image (ultralytics ``overlaps.argmax(1)``), so the winner
   can be a GT for which the anchor is a candidate but not in its top-k. Ties go to the lowest slot; if
   all of the anchor's IoUs are 0 the winner is the image's first real GT slot (ultralytics: slot 0,
   which is its first real slot since it packs GTs first).
5. **Soft targets.** With ``P_j`` the positives of ``j`` after step 4:
   ``score[a] = t[j,a] * max_{P_j} IoU / (max_{P_j} t + eps)`` (ultralytics' order of operations), placed
   on the one-hot of ``j``'s class; background rows are all zero.

**ultralytics 8.4 minimum candidate size.** From 8.4.0 (YOLO26) ``v8DetectionLoss`` passes the model
strides to the assigner, with ``stride_val = stride[1] if len(stride) > 1 else stride[0]``, and
``select_candidates_in_gts`` rewrites the real GT boxes before the inside test::

    xywh = xyxy2xywh(gt_bboxes)
    wh_mask = xywh[..., 2:] < THRESHOLD                 # each side separately
    xywh[..., 2:] = where(wh_mask & mask_gt, stride_val, xywh[..., 2:])
    gt_bboxes = xywh2xyxy(xywh)

with ``THRESHOLD = stride_val`` from 8.4.128 on (checked up to 8.4.190: a plain floor, "so the pool grows
monotonically") and ``THRESHOLD = stride[0]`` in 8.4.0–8.4.127 (a side shorter than the first stride, 8 px,
jumps to the second, 16 px, while a 10 px side is left alone). Reproduce either with
``min_candidate_size=ultralytics_min_candidate_size(strides)`` (current: the number ``stride_val``) or
``ultralytics_min_candidate_size(strides, legacy=True)`` (``(stride[0], stride_val)``). A number ``m``
means "every side shorter than ``m`` becomes ``m``"; a pair ``(below, size)`` means "every side shorter than
``below`` becomes ``size``". ``None`` (default) is the classic 8.0–8.3 rule: no enlargement and no round trip.

**Memory.** Two interchangeable paths; ``path="auto"`` takes the chunked one on CPU (faster there at every
size measured) and the dense one on GPU while ``B × M × A <= max_pairs``:

* *dense* — ultralytics' layout: ``(B, M, A)`` tensors (padding slots included).
* *chunked* — only the real GTs, ``N = Σ n_i`` rows, processed ``max(1, max_pairs // A)`` rows at a time
  (candidates, then top-k); anchor-level bookkeeping (claims, winners, per-GT maxima) is done with scatters
  over the candidate pairs, block by block. Each candidate pair keeps 17 bytes (int32 GT row / anchor,
  later anchor key / GT slot; IoU; ``t``; top-k flag), so the peak is about ``5 · max_pairs`` bytes (one chunk
  of rows) plus ``17 · P`` bytes, ``P`` the number of candidate pairs, plus one block of pairs: one crowded
  image no longer inflates every other image of the batch to ``max_gt × A``.

Both paths compute IoU and ``t`` on the *same* flat list of candidate pairs (ordered ``(b, j, a)``, like
ultralytics' boolean-mask indexing), cut into the same fixed blocks (``2**16`` pairs on CPU, ``2**20``
elsewhere: they depend on the device only, not on the path or ``max_pairs``, and bound the CIoU temporaries),
and use only correctly rounded or exact operations afterwards, so they return bit-identical results
(``torch.topk`` on identical rows is deterministic per row; checked on CPU). The common layout matters:
PyTorch's CPU ``pow`` rounds differently in the vectorized body and the scalar tail of a kernel, so the same
value can differ by an ulp depending on its position in a tensor.

On CPU (one thread) the chunked path measured faster than the dense one except on tiny problems
(``A = 84, B = 2, M = 2``: 0.5 vs 0.7 ms; ``A = 8400, B = 16, M = 4``: 77 vs 36 ms; ``M = 60``: 490 vs 68 ms).

**Reproducibility.** Against ultralytics 8.4.190's assigner the results (fg mask, GT index, labels, boxes
and soft targets) are bit-identical when both use the same CIoU function. ultralytics' own ``bbox_iou``
changed its CIoU ``alpha`` from ``v / (v - iou + (1 + eps))`` (8.4.100 and before, and
:func:`detloss.ops.boxes.box_ciou`) to ``v / (1 - iou + v + eps)`` (8.4.150, 8.4.190), which moves
about 3% of IoUs by one ulp; soft targets then agree to float32 precision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from detloss.core.checks import check_same, check_tensor
from detloss.ops.boxes import box_ciou

__all__ = [
    "BACKGROUND_LABEL",
    "AssignResult",
    "TaskAlignedAssigner",
    "ultralytics_min_candidate_size",
]

#: ``AssignResult.labels`` value of background anchors (not a class index: background is "no class").
BACKGROUND_LABEL = -1

#: ultralytics' fixed eps of the strict "centre inside box" test.
_INSIDE_EPS = 1e-9
#: ultralytics' ``bbox_iou`` default eps.
_IOU_EPS = 1e-7
#: Candidate pairs per block of the pair metrics and of the per-pair bookkeeping, on CPU and on other devices:
#: a function of the device only, never of the path or of ``max_pairs`` (see ``TaskAlignedAssigner._pair_metrics``).
_PAIR_BLOCK_CPU = 2**16
_PAIR_BLOCK_OTHER = 2**20


def _blocks(n: int, device: torch.device) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of the fixed blocks of a list of ``n`` candidate pairs."""
    size = _PAIR_BLOCK_CPU if device.type == "cpu" else _PAIR_BLOCK_OTHER
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


@dataclass(frozen=True)
class AssignResult:
    """Per-anchor targets produced by an assigner.

    Attributes:
        labels: ``(B, A)`` int64 class of the assigned GT; :data:`BACKGROUND_LABEL` (``-1``) on background.
        boxes: ``(B, A, 4)`` assigned GT box (pixel ``xyxy``, dtype of the computation); zeros on background.
        score: ``(B, A)`` soft target on the assigned class (the normalized alignment); 0 on background.
        fg_mask: ``(B, A)`` bool, True for anchors assigned to a GT.
        gt_index: ``(B, A)`` int64 index of the assigned GT among the image's ``M`` slots; 0 on background.
        num_classes: C.

    :attr:`scores` builds the dense ``(B, A, C)`` soft targets on demand: at 8400 anchors and 80
    classes that is 43 MB per image batch of 16, which a loss that only needs the positives skips.
    """

    labels: torch.Tensor
    boxes: torch.Tensor
    score: torch.Tensor
    fg_mask: torch.Tensor
    gt_index: torch.Tensor
    num_classes: int

    @property
    def scores(self) -> torch.Tensor:
        """``(B, A, C)`` soft classification targets: :attr:`score` on the assigned class, 0 elsewhere."""
        B, A = self.score.shape
        out = torch.zeros(B, A, self.num_classes, dtype=self.score.dtype, device=self.score.device)
        cls = self.labels.clamp(0, self.num_classes - 1).unsqueeze(-1)
        return out.scatter_(2, cls, torch.where(self.fg_mask, self.score, torch.zeros_like(self.score)).unsqueeze(-1))


def ultralytics_min_candidate_size(
    strides: Sequence[int | float], *, legacy: bool = False
) -> float | tuple[float, float]:
    """The ``min_candidate_size`` that reproduces ultralytics 8.4 for a head with these strides.

    ``stride_val`` is the second stride (the first if there is one level). From 8.4.128 on, sides shorter
    than ``stride_val`` become ``stride_val``: returns ``stride_val``. With ``legacy=True``, the 8.4.0–8.4.127
    rule, sides shorter than the *first* stride become ``stride_val``: returns ``(strides[0], stride_val)``.

    Example:
        >>> ultralytics_min_candidate_size([8, 16, 32])
        16.0
        >>> ultralytics_min_candidate_size([8, 16, 32], legacy=True)
        (8.0, 16.0)
    """
    if len(strides) == 0:
        raise ValueError("strides must list at least one stride")
    stride_val = _positive("strides[1]" if len(strides) > 1 else "strides[0]", strides[1 if len(strides) > 1 else 0])
    return (_positive("strides[0]", strides[0]), stride_val) if legacy else stride_val


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


class TaskAlignedAssigner:
    """YOLOv8 task-aligned assigner (see the module docstring for the exact rule).

    Args:
        num_classes: number of classes ``C``.
        topk: positives kept per GT (ultralytics' ``v8DetectionLoss`` uses 10).
        alpha: exponent of the class score in the alignment metric (YOLOv8: 0.5).
        beta: exponent of the IoU in the alignment metric (YOLOv8: 6.0).
        eps: added to each GT's max alignment before normalizing (ultralytics 1e-9); must be > 0.
        min_candidate_size: ``None`` (no enlargement), a size ``m`` (sides ``< m`` become ``m``), or a pair
            ``(below, size)`` (sides ``< below`` become ``size``); used for candidate selection only. For
            ultralytics 8.4 pass :func:`ultralytics_min_candidate_size` of the head's strides (the module
            docstring spells out the rule and its two 8.4 variants).
        max_pairs: budget, in elements of ``B × M × A``, for the dense path; above it the chunked path runs
            with chunks of ``max(1, max_pairs // A)`` GT rows. Default ``2**22``.

    Call with ``(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask)`` to get an
    :class:`AssignResult`; see :meth:`__call__`.

    Example:
        >>> assigner = TaskAlignedAssigner(num_classes=2, topk=2)
        >>> points = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]])
        >>> pred_boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 16.0, 8.0], [16.0, 0.0, 24.0, 8.0]]])
        >>> pred_scores = torch.full((1, 3, 2), 0.5)
        >>> gt_boxes = torch.tensor([[[0.0, 0.0, 16.0, 8.0]]])
        >>> r = assigner(pred_scores, pred_boxes, points, torch.tensor([[1]]), gt_boxes, torch.tensor([[True]]))
        >>> r.fg_mask
        tensor([[ True,  True, False]])
        >>> r.labels
        tensor([[ 1,  1, -1]])
    """

    def __init__(
        self,
        num_classes: int,
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
        eps: float = 1e-9,
        min_candidate_size: float | tuple[float, float] | None = None,
        max_pairs: int | None = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk must be a positive int, got {topk!r}")
        for name, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.num_classes = num_classes
        self.topk = topk
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.eps = _positive("eps", eps)
        if min_candidate_size is None:
            self.min_candidate_size: tuple[float, float] | None = None
        elif isinstance(min_candidate_size, tuple | list):
            if len(min_candidate_size) != 2:
                raise ValueError(
                    f"min_candidate_size must be a number or a pair (below, size), got {min_candidate_size!r}"
                )
            self.min_candidate_size = (
                _positive("min_candidate_size[0]", min_candidate_size[0]),
                _positive("min_candidate_size[1]", min_candidate_size[1]),
            )
        else:
            size = _positive("min_candidate_size", min_candidate_size)
            self.min_candidate_size = (size, size)
        if max_pairs is None:
            max_pairs = 2**22
        if isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1:
            raise ValueError(f"max_pairs must be a positive int, got {max_pairs!r}")
        self.max_pairs = max_pairs
        self._logits = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, topk={self.topk}, alpha={self.alpha}, "
            f"beta={self.beta}, eps={self.eps}, min_candidate_size={self.min_candidate_size}, "
            f"max_pairs={self.max_pairs})"
        )

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def __call__(
        self,
        pred_scores: torch.Tensor,
        pred_boxes: torch.Tensor,
        anchor_points: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_mask: torch.Tensor,
        *,
        path: Literal["auto", "dense", "chunked"] = "auto",
        scores_are_logits: bool = False,
    ) -> AssignResult:
        """Assign every anchor of every image to a GT or to background.

        Args:
            pred_scores: ``(B, A, C)`` predicted class *probabilities* (after sigmoid), detached.
            pred_boxes: ``(B, A, 4)`` predicted boxes, pixel ``xyxy``.
            anchor_points: ``(A, 2)`` anchor points, pixels (see :func:`~detloss.assign.anchors.make_anchors`).
            gt_labels: ``(B, M)`` integer classes in ``[0, C)`` (checked on real slots only).
            gt_boxes: ``(B, M, 4)`` GT boxes, pixel ``xyxy``.
            gt_mask: ``(B, M)`` bool, True on real GT slots (padding slots may hold anything).
            path: ``"auto"`` (chunked on CPU, where it is faster at every size measured; dense on GPU
                within ``max_pairs``), or force ``"dense"`` / ``"chunked"``; results are identical.
            scores_are_logits: ``pred_scores`` holds logits; the sigmoid is applied only to the
                candidate pairs' scores (same values, without a full ``(B, A, C)`` sigmoid).

        Returns:
            :class:`AssignResult`. Computation is in float32 (float64 if any floating input is float64)
            under :func:`torch.no_grad`. Images without real GTs, ``B = 0``, ``A = 0`` and ``M = 0`` give
            all background.
        """
        C = self.num_classes
        check_tensor("pred_scores", pred_scores, ("B", "A", C), floating=True)
        B, A, _ = pred_scores.shape
        check_tensor("pred_boxes", pred_boxes, (B, A, 4), floating=True)
        check_tensor("anchor_points", anchor_points, (A, 2), floating=True)
        check_tensor("gt_labels", gt_labels, (B, "M"))
        M = gt_labels.shape[1]
        check_tensor("gt_boxes", gt_boxes, (B, M, 4), floating=True)
        check_tensor("gt_mask", gt_mask, (B, M))
        for name, t in (
            ("pred_boxes", pred_boxes),
            ("anchor_points", anchor_points),
            ("gt_labels", gt_labels),
            ("gt_boxes", gt_boxes),
            ("gt_mask", gt_mask),
        ):
            check_same("pred_scores", pred_scores, name, t, dims=())
        if gt_labels.is_floating_point() or gt_labels.is_complex() or gt_labels.dtype == torch.bool:
            raise ValueError(f"gt_labels must be an integer tensor of shape (B, M), got dtype {gt_labels.dtype}")
        if gt_mask.dtype != torch.bool:
            raise ValueError(f"gt_mask must be a bool tensor of shape (B, M), got dtype {gt_mask.dtype}")
        if path not in ("auto", "dense", "chunked"):
            raise ValueError(f"path must be 'auto', 'dense' or 'chunked', got {path!r}")

        dtype = (
            torch.float64
            if torch.float64 in (pred_scores.dtype, pred_boxes.dtype, anchor_points.dtype, gt_boxes.dtype)
            else torch.float32
        )
        scores = pred_scores.detach().to(dtype)
        pboxes = pred_boxes.detach().to(dtype)
        points = anchor_points.detach().to(dtype)
        gboxes = gt_boxes.detach().to(dtype)
        labels = gt_labels.detach().long()

        bad_labels = gt_mask & ((labels < 0) | (labels >= C))
        any_gt, any_bad = torch.stack((gt_mask.any(), bad_labels.any())).tolist()  # one host sync for both
        if B == 0 or A == 0 or M == 0 or not any_gt:
            return self._background(B, A, scores)
        if any_bad:
            raise ValueError(f"gt_labels must lie in [0, {C}) on real GT slots (gt_mask True)")

        if path == "auto":
            path = "dense" if scores.is_cuda and self.max_pairs >= B * M * A else "chunked"
        self._logits = scores_are_logits
        if path == "dense":
            fg, gt_index, norm = self._assign_dense(scores, pboxes, points, labels, gboxes, gt_mask)
        else:
            fg, gt_index, norm = self._assign_chunked(scores, pboxes, points, labels, gboxes, gt_mask)
        return self._finalize(fg, gt_index, norm, labels, gboxes)

    # ------------------------------------------------------------------ shared steps

    def _background(self, B: int, A: int, scores: torch.Tensor) -> AssignResult:
        device, dtype = scores.device, scores.dtype
        return AssignResult(
            labels=torch.full((B, A), BACKGROUND_LABEL, dtype=torch.long, device=device),
            boxes=torch.zeros(B, A, 4, dtype=dtype, device=device),
            score=torch.zeros(B, A, dtype=dtype, device=device),
            fg_mask=torch.zeros(B, A, dtype=torch.bool, device=device),
            gt_index=torch.zeros(B, A, dtype=torch.long, device=device),
            num_classes=self.num_classes,
        )

    def _candidate_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes ``(..., 4)`` used for the inside test (8.4 enlargement when configured)."""
        if self.min_candidate_size is None:
            return boxes
        below, size = self.min_candidate_size
        x1, y1, x2, y2 = boxes.unbind(-1)
        c = torch.stack(((x1 + x2) / 2, (y1 + y2) / 2), -1)
        wh = torch.stack((x2 - x1, y2 - y1), -1)
        wh = torch.where(wh < below, torch.tensor(size, dtype=wh.dtype, device=wh.device), wh)
        half = wh / 2
        return torch.cat((c - half, c + half), -1)

    @staticmethod
    def _inside(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """``(..., A)`` bool: point strictly inside box (all four deltas ``> 1e-9``). ``boxes (..., 4)``, nonempty.

        Each delta involves one coordinate of the point, so the tests run on the *distinct* anchor ``x`` (and
        ``y``) values only (a pyramid of grids has ``Σ w`` of them for ``A = Σ w·h`` anchors): the same
        subtractions and comparisons on the same values, without ``(..., A)`` float temporaries. They are laid
        out ``(U, R)`` (``R`` boxes) so that spreading them to the anchors copies whole rows; the result is the
        transposed view of an ``(A, R)`` tensor (``nonzero`` still lists it in ``(..., a)`` order).
        """
        ux, ix = points[:, 0].unique(return_inverse=True)
        uy, iy = points[:, 1].unique(return_inverse=True)
        x1, y1, x2, y2 = boxes.reshape(-1, 4).unbind(-1)  # (R,) each
        ux, uy = ux.unsqueeze(-1), uy.unsqueeze(-1)
        in_x = ((ux - x1) > _INSIDE_EPS) & ((x2 - ux) > _INSIDE_EPS)  # (Ux, R)
        in_y = ((uy - y1) > _INSIDE_EPS) & ((y2 - uy) > _INSIDE_EPS)  # (Uy, R)
        inside = in_x.index_select(0, ix) & in_y.index_select(0, iy)  # (A, R)
        return inside.t().view(*boxes.shape[:-1], points.shape[0])

    def _pair_metrics(
        self,
        prow: torch.Tensor,
        pa: torch.Tensor,
        row_b: torch.Tensor,
        row_boxes: torch.Tensor,
        row_labels: torch.Tensor,
        scores: torch.Tensor,
        pboxes: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clamped CIoU and alignment metric ``(P,)`` of the candidate pairs.

        Pair ``i`` is anchor ``pa[i]`` of GT row ``r = prow[i]``: image ``row_b[r]``, box ``row_boxes[r]``, class
        ``row_labels[r]``. Both paths pass the same flat list (``(b, j, a)`` order), and it is processed in fixed
        blocks of :data:`_PAIR_BLOCK_CPU` pairs (:data:`_PAIR_BLOCK_OTHER` off CPU), so every elementwise op sees
        the same tensors in both paths: CPU kernels may round differently in their vectorized body and scalar
        tail, so the layout must depend neither on the path nor on ``max_pairs``. The blocks also bound the
        temporaries (gathered boxes and CIoU's intermediates, ~170 bytes per pair) to one block.
        """
        B, A, _ = scores.shape
        P = pa.numel()
        iou = torch.empty(P, dtype=scores.dtype, device=scores.device)
        metric = torch.empty_like(iou)
        flat_pboxes = pboxes.reshape(B * A, 4)
        for lo, hi in _blocks(P, scores.device):
            r, a = prow[lo:hi].long(), pa[lo:hi].long()
            b = row_b.index_select(0, r)
            block_iou = box_ciou(
                row_boxes.index_select(0, r), flat_pboxes.index_select(0, b * A + a), eps=_IOU_EPS
            ).clamp_(0)
            s = scores[b, a, row_labels.index_select(0, r)]
            del r, a, b
            if self._logits:
                s = s.sigmoid()
            torch.mul(s.pow(self.alpha), block_iou.pow(self.beta), out=metric[lo:hi])
            iou[lo:hi] = block_iou
        return iou, metric

    def _finalize(
        self,
        fg: torch.Tensor,
        gt_index: torch.Tensor,
        norm: torch.Tensor,
        labels: torch.Tensor,
        gboxes: torch.Tensor,
    ) -> AssignResult:
        """Build the result from ``fg (B, A)``, ``gt_index (B, A)`` and ``norm (B, A)`` (soft target value)."""
        B, A = fg.shape
        gt_index = torch.where(fg, gt_index, torch.zeros_like(gt_index))
        assigned_labels = labels.gather(1, gt_index)
        out_labels = torch.where(fg, assigned_labels, torch.full_like(assigned_labels, BACKGROUND_LABEL))
        boxes = gboxes.gather(1, gt_index.unsqueeze(-1).expand(B, A, 4))
        boxes = torch.where(fg.unsqueeze(-1), boxes, torch.zeros_like(boxes))
        score = torch.where(fg, norm, torch.zeros_like(norm))
        return AssignResult(out_labels, boxes, score, fg, gt_index, self.num_classes)

    # ------------------------------------------------------------------ dense path (ultralytics layout)

    def _assign_dense(
        self,
        scores: torch.Tensor,
        pboxes: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        gboxes: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, A, _ = scores.shape
        M = gboxes.shape[1]
        k = min(self.topk, A)
        dtype = scores.dtype

        in_gts = (self._inside(points, self._candidate_boxes(gboxes)) & gt_mask.unsqueeze(-1)).contiguous()
        prow, pa = in_gts.view(B * M, A).nonzero(as_tuple=True)  # (B, M, A) seen as rows b * M + j
        row_b = torch.arange(B, device=scores.device).repeat_interleave(M)
        iou, metric = self._pair_metrics(
            prow, pa, row_b, gboxes.reshape(B * M, 4), labels.reshape(B * M), scores, pboxes
        )
        overlaps = torch.zeros(B, M, A, dtype=dtype, device=scores.device)
        overlaps.view(B * M, A)[prow, pa] = iou
        align = torch.zeros(B, M, A, dtype=dtype, device=scores.device)
        align.view(B * M, A)[prow, pa] = metric
        del prow, pa, iou, metric

        topk_idx = align.topk(k, dim=-1, largest=True).indices  # (B, M, k)
        mask_topk = torch.zeros(B, M, A, dtype=torch.bool, device=scores.device).scatter_(-1, topk_idx, True)
        mask_pos = mask_topk & in_gts  # in_gts already excludes padding slots

        # One GT per anchor: several claims -> argmax of IoU over the image's GT slots (first real slot on ties).
        claims = mask_pos.sum(1)  # (B, A)
        ov_real = torch.where(gt_mask.unsqueeze(-1), overlaps, torch.full_like(overlaps, -1.0))
        winner = ov_real.argmax(1)  # (B, A)
        is_winner = torch.zeros_like(mask_pos).scatter_(1, winner.unsqueeze(1), True)
        mask_pos = torch.where((claims > 1).unsqueeze(1), is_winner, mask_pos)
        fg = mask_pos.any(1)
        gt_index = mask_pos.to(torch.uint8).argmax(1)

        posf = mask_pos.to(dtype)
        align = align * posf
        pos_align = align.amax(-1, keepdim=True)  # (B, M, 1)
        pos_overlaps = (overlaps * posf).amax(-1, keepdim=True)
        norm = (align * pos_overlaps / (pos_align + self.eps)).amax(1)  # (B, A)
        return fg, gt_index, norm

    # ------------------------------------------------------------------ chunked path (real GTs only)

    def _assign_chunked(
        self,
        scores: torch.Tensor,
        pboxes: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        gboxes: torch.Tensor,
        gt_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, A, _ = scores.shape
        M = gboxes.shape[1]
        k = min(self.topk, A)
        dtype, device = scores.dtype, scores.device
        rows = max(1, self.max_pairs // A)

        # Real GT rows in (b, j) order; candidates chunk by chunk -> flat pairs in (b, j, a) order, stored as
        # (GT row, anchor) in int32 where everything fits (8 bytes per pair; every later pass goes by blocks).
        vb, vj = gt_mask.nonzero(as_tuple=True)
        n_rows = vb.numel()
        itype = torch.int32 if max(n_rows, M, B * A) <= torch.iinfo(torch.int32).max else torch.long
        cand_boxes = self._candidate_boxes(gboxes[vb, vj])  # (N, 4)
        pair_row, pair_a, bounds = [], [], [0]
        for r0 in range(0, n_rows, rows):
            r, a = self._inside(points, cand_boxes[r0 : r0 + rows]).nonzero(as_tuple=True)
            pair_row.append((r + r0).to(itype))
            pair_a.append(a.to(itype))
            bounds.append(bounds[-1] + r.numel())
            del r, a
        prow = torch.cat(pair_row)
        pa = torch.cat(pair_a)
        del pair_row, pair_a, cand_boxes
        P = pa.numel()
        iou, metric = self._pair_metrics(prow, pa, vb, gboxes[vb, vj], labels[vb, vj], scores, pboxes)

        # Top-k per GT row over all A anchors (zeros included), one chunk of rows at a time. Once a chunk is
        # done its pairs are re-identified, in the same storage, by anchor key b * A + a and GT slot j.
        pos = torch.empty(P, dtype=torch.bool, device=device)
        pkey, pj = pa, prow
        for c, r0 in enumerate(range(0, n_rows, rows)):
            lo, hi = bounds[c], bounds[c + 1]
            n = min(rows, n_rows - r0)
            r, a = prow[lo:hi].long(), pa[lo:hi].long()
            flat = (r - r0) * A + a  # position in the chunk's (n, A) rows
            dense = torch.zeros(n * A, dtype=dtype, device=device)
            dense[flat] = metric[lo:hi]
            idx = dense.view(n, A).topk(k, dim=-1, largest=True).indices
            del dense
            chosen = torch.zeros(n, A, dtype=torch.bool, device=device).scatter_(-1, idx, True)
            pos[lo:hi] = chosen.view(-1)[flat]
            key, slot = vb[r] * A + a, vj[r]  # read r and a before overwriting their storage
            pkey[lo:hi] = key
            pj[lo:hi] = slot
            del r, a, flat, idx, chosen, key, slot
        del prow, pa

        # Anchor-level bookkeeping over keys b * A + a, by blocks of pairs, in three passes: claims and the
        # anchors' max IoU; winners (need the final max); kept pairs (need the final winners).
        blocks = _blocks(P, device)
        claims = torch.zeros(B * A, dtype=torch.int32, device=device)
        col_max = torch.zeros(B * A, dtype=dtype, device=device)
        for lo, hi in blocks:
            key = pkey[lo:hi].long()
            claimed = key[pos[lo:hi]]
            claims.index_add_(0, claimed, torch.ones_like(claimed, dtype=torch.int32))
            col_max.scatter_reduce_(0, key, iou[lo:hi], reduce="amax", include_self=True)
        multi = claims > 1
        fg = claims > 0
        single = fg & ~multi  # claims == 1
        del claims
        winner = torch.full((B * A,), M, dtype=torch.long, device=device)
        for lo, hi in blocks:
            key = pkey[lo:hi].long()
            best = (iou[lo:hi] == col_max[key]).nonzero().squeeze(1)
            winner.scatter_reduce_(0, key[best], pj[lo:hi][best].long(), reduce="amin", include_self=True)
        first_real = gt_mask.to(torch.uint8).argmax(1).repeat_interleave(A)  # (B * A,)
        winner = torch.where(col_max > 0, winner, first_real)
        del col_max, first_real
        # A pair is kept if it is its anchor's only claim, or the winner of a multiply-claimed anchor.
        gt_index = torch.where(multi, winner, torch.zeros_like(winner))
        anchor_align = torch.zeros(B * A, dtype=dtype, device=device)
        anchor_iou = torch.zeros(B * A, dtype=dtype, device=device)
        for lo, hi in blocks:
            key, j = pkey[lo:hi].long(), pj[lo:hi].long()
            keep = ((pos[lo:hi] & single[key]) | (multi[key] & (j == winner[key]))).nonzero().squeeze(1)
            kept = key[keep]
            gt_index[kept] = j[keep]
            anchor_align[kept] = metric[lo:hi][keep]
            anchor_iou[kept] = iou[lo:hi][keep]
        del pkey, pj, iou, metric, pos, winner, single, multi

        # Per-GT maxima over the final positives, then the normalized target.
        b_of_anchor = torch.arange(B, device=device).repeat_interleave(A)
        gt_id = (b_of_anchor * M + gt_index)[fg]
        pos_align = torch.zeros(B * M, dtype=dtype, device=device).scatter_reduce_(
            0, gt_id, anchor_align[fg], reduce="amax", include_self=True
        )
        pos_overlaps = torch.zeros(B * M, dtype=dtype, device=device).scatter_reduce_(
            0, gt_id, anchor_iou[fg], reduce="amax", include_self=True
        )
        norm = torch.zeros(B * A, dtype=dtype, device=device)
        norm[fg] = anchor_align[fg] * pos_overlaps[gt_id] / (pos_align[gt_id] + self.eps)
        return fg.view(B, A), gt_index.view(B, A), norm.view(B, A)
