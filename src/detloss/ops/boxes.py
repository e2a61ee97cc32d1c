"""IoU of axis-aligned boxes: every pair of two sets (:func:`box_iou_matrix`), and the IoU family
(IoU, GIoU, DIoU, CIoU) of *aligned* pairs (:func:`box_overlap` and its named forms).

Boxes are pixel ``xyxy`` tensors. For the aligned family they have shape ``(..., 4)`` and ``a[i]`` is
compared with ``b[i]`` (not all pairs); each function returns ``(...)`` in float32 (float64 kept, for
gradcheck), also under autocast. The loss ``1 - similarity`` is :func:`detloss.functional.iou.iou_loss`.

The ``eps`` conventions are those of ultralytics ``bbox_iou(xywh=False)`` (YOLOv5/v8), so that a
YOLOv8 preset reproduces its numbers to float32 precision, except GIoU's enclosing term on the default
path (``preset=None``)::

    w = x2 - x1,  h = y2 - y1 + eps                       (per box; eps only on the height)
    inter = clamp(min(x2) - max(x1), 0) * clamp(min(y2) - max(y1), 0)
    union = w1*h1 + w2*h2 - inter + eps
    iou   = inter / union
    cw, ch = max(x2) - min(x1), max(y2) - min(y1)        (enclosing box, no eps)
    GIoU  = iou - (cw*ch - U0) / (cw*ch + eps)           U0 = union of the boxes' true areas (no eps)
    GIoU  = iou - (cw*ch + eps - union) / (cw*ch + eps)  (preset="ultralytics")
    DIoU  = iou - rho2 / c2,  c2 = cw² + ch² + eps,  rho2 = |centre_b - centre_a|²
    CIoU  = DIoU - alpha*v,  v = 4/π² (atan(w2/h2) - atan(w1/h1))²,  alpha = v / (v - iou + 1 + eps)

``alpha`` is computed under :func:`torch.no_grad` (as ultralytics and torchvision do): it is a weight,
not a path for gradient. There is no ``iou > 0.5`` gate on ``alpha`` unless ``min_iou`` is given.

Ranges, for valid boxes (``x1 <= x2``, ``y1 <= y2``; not checked, as that would need a device sync) and
``eps > 0``, in exact arithmetic (float32 rounding adds a few ulp; identical boxes reach 1 exactly):

* IoU in ``[0, 1]``: ``inter <= min(w1*h1, w2*h2)`` and ``union >= inter + eps``.
* DIoU in ``(-1, 1]``: the centre offset per axis is at most the enclosing size, so ``rho2 < c2``.
* CIoU in ``(-1.5, 1]``: ``0 <= v < 1`` because both ``atan`` lie in ``[0, π/2)``; with ``iou <= 1``,
  ``alpha*v = v² / (v + 1 - iou + eps) <= v² / (v + 1 - iou)``, and ``iou - v² / (v + 1 - iou)`` grows with
  ``iou``, so it is at least ``-v² / (v + 1) > -1/2``; with ``rho2 / c2 < 1``, ``CIoU > -1 - 1/2``. The
  bound is approached by a very wide and a very tall box far apart.
* GIoU in ``[-1, 1]``: the enclosing box contains both boxes, so ``0 <= cw*ch - U0 <= cw*ch`` and the
  penalty lies in ``[0, 1)``. Two boxes of zero height on one line have ``cw*ch = U0 = 0``: GIoU = IoU = 0.
* GIoU with ``preset="ultralytics"`` in ``[-1, 1 + min(2*eps/ch, w1 + w2)]``:
  ``GIoU = iou - 1 + union/(cw*ch + eps)`` and ``union/(cw*ch + eps) <= 1 + eps*(w1 + w2)/(cw*ch + eps)``
  because the eps on the heights enters the union but not the enclosing area. For boxes of height >= 1 px
  this is ``[-1, 1]`` to float32 precision; two overlapping boxes of zero height give a GIoU up to
  ``w1 + w2`` (so a negative loss: ``[0, 5, 4, 5]`` and ``[2, 5, 8, 5]`` give loss -9). Kept for
  bit-compatibility with ultralytics only.

``eps = 0`` is accepted (exact closed forms in tests) but divides by zero on degenerate input, e.g. CIoU's
``alpha`` is ``0/0`` for identical boxes.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from detloss.core.checks import check_float_pair

__all__ = ["IOU_KINDS", "box_ciou", "box_diou", "box_giou", "box_iou", "box_iou_matrix", "box_overlap"]

IoUKind = Literal["iou", "giou", "diou", "ciou"]
IOU_KINDS = ("iou", "giou", "diou", "ciou")
Preset = Literal["ultralytics"] | None


def box_iou_matrix(
    a: torch.Tensor, b: torch.Tensor, area_a: torch.Tensor | None = None, area_b: torch.Tensor | None = None
) -> torch.Tensor:
    """IoU ``(N, M)`` of every ``xyxy`` box of ``a`` ``(N, 4)`` with every box of ``b`` ``(M, 4)``:
    ``inter / (area_a + area_b - inter)``, no ``eps`` and no ``+1`` on the sides.

    Degenerate pairs (both areas zero, no overlap) give ``nan`` (``0 / 0``), which never exceeds a
    threshold, so such boxes never suppress or match each other. ``area_a (N,)`` / ``area_b (M,)``:
    the areas when the caller has them already (NMS computes them once for all its blocks; COCO takes
    them from its ``xywh`` boxes). No gradient is meant to flow (NMS, matching, evaluation): the
    ``(N, M)`` steps run in place, so fewer ``(N, M)`` temporaries are made.

    >>> box_iou_matrix(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]]))
    tensor([[0.1429]])
    """
    if area_a is None:
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    if area_b is None:
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = torch.minimum(a[:, 2, None], b[None, :, 2]).sub_(torch.maximum(a[:, 0, None], b[None, :, 0])).clamp_(min=0)
    h = torch.minimum(a[:, 3, None], b[None, :, 3]).sub_(torch.maximum(a[:, 1, None], b[None, :, 1])).clamp_(min=0)
    inter = w.mul_(h)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _check_preset(preset: object) -> None:
    if preset not in (None, "ultralytics"):
        raise ValueError(f"preset must be None or 'ultralytics', got {preset!r}")


def _coords(name_a: str, a: object, name_b: str, b: object) -> tuple[tuple[torch.Tensor, ...], ...]:
    a, b = check_float_pair(name_a, a, name_b, b, (4,))
    return a.unbind(-1), b.unbind(-1)


class _Parts:
    """Intermediate quantities shared by the IoU family (one place for the eps conventions)."""

    def __init__(self, name_a: str, a: object, name_b: str, b: object, eps: float) -> None:
        (self.ax1, self.ay1, self.ax2, self.ay2), (self.bx1, self.by1, self.bx2, self.by2) = _coords(
            name_a, a, name_b, b
        )
        self.eps = eps
        self.w1, self.h1 = self.ax2 - self.ax1, self.ay2 - self.ay1 + eps
        self.w2, self.h2 = self.bx2 - self.bx1, self.by2 - self.by1 + eps
        iw = (self.ax2.minimum(self.bx2) - self.ax1.maximum(self.bx1)).clamp(min=0)
        ih = (self.ay2.minimum(self.by2) - self.ay1.maximum(self.by1)).clamp(min=0)
        self.inter = iw * ih
        self.union = self.w1 * self.h1 + self.w2 * self.h2 - self.inter + eps
        self.iou = self.inter / self.union

    def enclosing(self) -> tuple[torch.Tensor, torch.Tensor]:
        cw = self.ax2.maximum(self.bx2) - self.ax1.minimum(self.bx1)
        ch = self.ay2.maximum(self.by2) - self.ay1.minimum(self.by1)
        return cw, ch

    def distance_penalty(self) -> torch.Tensor:
        """``rho2 / c2``: squared centre distance over squared enclosing diagonal."""
        cw, ch = self.enclosing()
        c2 = cw.pow(2) + ch.pow(2) + self.eps
        rho2 = (
            (self.bx1 + self.bx2 - self.ax1 - self.ax2).pow(2) + (self.by1 + self.by2 - self.ay1 - self.ay2).pow(2)
        ) / 4
        return rho2 / c2


def _giou(p: _Parts, preset: Preset) -> torch.Tensor:
    cw, ch = p.enclosing()
    if preset == "ultralytics":
        c_area = cw * ch + p.eps
        return p.iou - (c_area - p.union) / c_area
    # Enclosing area and union both without the eps on the heights: then C >= U0 (the enclosing box
    # contains both boxes), which the eps-padded union breaks for boxes of zero height.
    enclosing = cw * ch
    union = p.w1 * (p.ay2 - p.ay1) + p.w2 * (p.by2 - p.by1) - p.inter
    denom = enclosing + p.eps
    positive = denom > 0  # only with eps = 0: no enclosing area, no penalty
    penalty = (enclosing - union) / torch.where(positive, denom, denom.new_ones(()))
    return p.iou - torch.where(positive, penalty, penalty.new_zeros(()))


def _diou(p: _Parts) -> torch.Tensor:
    return p.iou - p.distance_penalty()


def _ciou(p: _Parts, min_iou: float | None) -> torch.Tensor:
    v = (4 / math.pi**2) * ((p.w2 / p.h2).atan() - (p.w1 / p.h1).atan()).pow(2)
    with torch.no_grad():
        alpha = v / (v - p.iou + (1 + p.eps))
        if min_iou is not None:
            alpha = torch.where(p.iou >= min_iou, alpha, torch.zeros_like(alpha))
    return p.iou - (p.distance_penalty() + v * alpha)


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of aligned box pairs.

    Args:
        a: ``(..., 4)`` floating, pixel ``xyxy``.
        b: ``(..., 4)``, same shape as ``a``.
        eps: stabiliser, see the module docstring for where it enters.

    Returns:
        ``(...)`` float32, in ``[0, 1]``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> box_iou(a, a + torch.tensor([0.5, 0.0, 0.5, 0.0])).round(decimals=4)
        tensor([0.3333])
    """
    return _Parts("a", a, "b", b, eps).iou


def box_giou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7, *, preset: Preset = None) -> torch.Tensor:
    """Generalised IoU (Rezatofighi et al. 2019) of aligned box pairs: ``iou - (C - union) / C``.

    ``C`` is the area of the smallest enclosing box (plus ``eps`` in the denominator).

    Args:
        a: ``(..., 4)`` floating, pixel ``xyxy``.
        b: ``(..., 4)``, same shape as ``a``.
        eps: stabiliser.
        preset: ``None``, or ``"ultralytics"`` for ultralytics' eps placement in the enclosing term.

    Returns:
        ``(...)`` float32, in ``[-1, 1]``; with ``preset="ultralytics"`` only for boxes of positive
        height (see the module docstring).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> box_giou(a, a + 2.0).round(decimals=4)  # disjoint: 0 - (9 - 2) / 9
        tensor([-0.7778])
    """
    _check_preset(preset)
    return _giou(_Parts("a", a, "b", b, eps), preset)


def box_diou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Distance IoU (Zheng et al. 2020) of aligned box pairs: ``iou - rho² / c²``.

    ``rho`` is the distance between the box centres, ``c`` the diagonal of the smallest enclosing box.

    Args:
        a: ``(..., 4)`` floating, pixel ``xyxy``.
        b: ``(..., 4)``, same shape as ``a``.
        eps: stabiliser.

    Returns:
        ``(...)`` float32, in ``(-1, 1]``.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> box_diou(a, a + 2.0).round(decimals=4)  # 0 - 8 / 18
        tensor([-0.4444])
    """
    return _diou(_Parts("a", a, "b", b, eps))


def box_ciou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7, min_iou: float | None = None) -> torch.Tensor:
    """Complete IoU (Zheng et al. 2020) of aligned box pairs: ``iou - rho² / c² - alpha·v``.

    ``v = 4/π² (atan(w_b/h_b) - atan(w_a/h_a))²`` measures aspect-ratio disagreement and
    ``alpha = v / (v - iou + 1 + eps)`` is computed without gradient. If ``min_iou`` is given, ``alpha`` is
    zero where ``iou < min_iou`` (the original paper's gate uses 0.5); by default there is no gate, as in
    ultralytics.

    Args:
        a: ``(..., 4)`` floating, pixel ``xyxy``.
        b: ``(..., 4)``, same shape as ``a``.
        eps: stabiliser.
        min_iou: optional IoU below which the aspect-ratio term is dropped.

    Returns:
        ``(...)`` float32, in ``(-1.5, 1]`` (proof in the module docstring).

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
        >>> box_ciou(a, a).round(decimals=4)
        tensor([1.])
    """
    return _ciou(_Parts("a", a, "b", b, eps), min_iou)


def box_overlap(
    a: torch.Tensor,
    b: torch.Tensor,
    kind: IoUKind = "iou",
    eps: float = 1e-7,
    min_iou: float | None = None,
    *,
    preset: Preset = None,
    names: tuple[str, str] = ("a", "b"),
) -> torch.Tensor:
    """The IoU-family similarity ``kind`` of aligned box pairs (:func:`box_iou`, :func:`box_giou`,
    :func:`box_diou` or :func:`box_ciou`), chosen by name.

    Args:
        a, b: ``(..., 4)`` floating, pixel ``xyxy``, one shape.
        kind: ``"iou"``, ``"giou"``, ``"diou"`` or ``"ciou"``.
        eps: stabiliser (ultralytics conventions, see the module docstring).
        min_iou: CIoU only: drop the aspect-ratio term where ``iou < min_iou``.
        preset: ``None``, or ``"ultralytics"`` (GIoU's eps placement, the only kind that differs).
        names: what to call ``a`` and ``b`` in error messages (a loss calls them ``pred`` and ``target``).

    Returns:
        ``(...)`` float32, in the range of the chosen kind.

    Example:
        >>> a = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
        >>> box_overlap(a, a + 2.0, kind="giou").round(decimals=4)
        tensor([-0.7778])
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of 'iou', 'giou', 'diou', 'ciou', got {kind!r}")
    if min_iou is not None and kind != "ciou":
        raise ValueError(f"min_iou only applies to kind='ciou', got kind={kind!r}")
    _check_preset(preset)
    p = _Parts(names[0], a, names[1], b, eps)
    if kind == "iou":
        return p.iou
    if kind == "giou":
        return _giou(p, preset)
    if kind == "diou":
        return _diou(p)
    return _ciou(p, min_iou)
