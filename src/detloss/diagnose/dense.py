"""What the gradient accounting needs to know about a :class:`~detloss.criteria.dense.DenseCriterion`:
which head-output elements each term depends on (for the ``dead`` fraction), and how saturated the
per-axis GIoUs of its MGIoU polygon term are. Channels are read through the criterion's
:class:`~detloss.ops.head_layout.HeadLayout`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from detloss.criteria.dense import DenseCriterion, DenseTargets
from detloss.functional.polygon import axis_giou

__all__ = ["AXIS_GIOU_TOL", "axis_giou_saturation", "dense_dependencies", "polygon_axis_saturation"]

#: A per-axis GIoU within this of ``±1`` counts as saturated.
AXIS_GIOU_TOL = 1e-6


def axis_giou_saturation(giou: Tensor, valid: Tensor, tol: float = AXIS_GIOU_TOL) -> tuple[float, float]:
    """Fractions of the valid entries of ``giou`` with ``giou >= 1 - tol`` and with ``giou <= -1 + tol``.

    Args:
        giou: ``(N, A)`` per-axis 1-D GIoU (:func:`~detloss.functional.polygon.axis_giou`).
        valid: ``(N, A)`` bool, the axes that exist.
        tol: distance from ``±1`` that counts as saturated, in ``[0, 1)``.

    Returns:
        ``(at_plus_one, at_minus_one)``; both NaN when no axis is valid.
    """
    if not 0 <= tol < 1:
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    if not isinstance(giou, Tensor) or giou.dim() != 2:
        raise ValueError(f"giou must be a tensor of shape (N, A), got {getattr(giou, 'shape', type(giou))}")
    if not isinstance(valid, Tensor) or tuple(valid.shape) != tuple(giou.shape):
        got = getattr(valid, "shape", type(valid))
        raise ValueError(f"valid must be a bool tensor of shape {tuple(giou.shape)}, got {got}")
    g, v = giou.detach(), valid.to(torch.bool)
    counts = torch.stack([v.sum(), ((g >= 1 - tol) & v).sum(), ((g <= -1 + tol) & v).sum()]).tolist()
    total, plus, minus = counts
    if total == 0:
        return float("nan"), float("nan")
    return plus / total, minus / total


def polygon_axis_saturation(
    crit: DenseCriterion,
    feats: Sequence[Tensor],
    targets: Mapping[str, Tensor],
    assigned: DenseTargets | None = None,
    tol: float = AXIS_GIOU_TOL,
) -> dict[str, float]:
    """Per-axis GIoU saturation of a :class:`~detloss.criteria.dense.DenseCriterion`'s MGIoU ``poly`` term.

    The predicted polygons are those the criterion compares: for each positive with a nonzero soft target
    (the ones the term depends on), the anchor point plus the ``K`` predicted offsets read from the ``2K``
    polygon channels of ``feats`` (grid units); the target, its assigned polygon with its valid vertices.
    Pairs whose target is degenerate (trained by the L1 fallback of
    :func:`~detloss.functional.polygon.mgiou_loss`) are counted too.

    Args:
        crit: the criterion (``num_vertices > 0`` and ``polygon_loss`` ``"mgiou"`` / ``"mgiou+"``, else
            ``{}`` is returned: no per-axis GIoU in the loss).
        feats: its head outputs, list of ``(B, 4R + C + 2K, H, W)``.
        targets: its targets.
        assigned: ``crit.assign(feats, targets)`` if already computed.
        tol: as in :func:`axis_giou_saturation`.

    Returns:
        ``{"poly_axis_giou_pos": fraction at +1, "poly_axis_giou_neg": fraction at -1}`` over the
        (positive, valid axis) pairs; NaN without positives.
    """
    if not crit.num_vertices or crit.polygon_loss not in ("mgiou", "mgiou+"):
        return {}
    t = crit.assign(feats, targets) if assigned is None else assigned
    keep = t.weight != 0
    image, anchor = t.image[keep], t.anchor[keep]
    with torch.no_grad():
        poly = crit.layout.flatten([f.detach() for f in feats], "poly")  # (B, A, 2K)
        offsets = crit.layout.vertices(poly[image, anchor].float())  # (P, K, 2)
        pred = t.points[keep][:, None, :] + offsets
        giou, valid = axis_giou(pred, t.polygons[keep], target_valid=t.polygon_valid[keep])
    plus, minus = axis_giou_saturation(giou, valid, tol)
    return {"poly_axis_giou_pos": plus, "poly_axis_giou_neg": minus}


def dense_dependencies(
    crit: DenseCriterion,
    feats: Sequence[Tensor],
    targets: Mapping[str, Tensor],
    assigned: DenseTargets | None = None,
) -> dict[str, list[Tensor]]:
    """Per-term masks of the ``feats`` elements a :class:`~detloss.criteria.dense.DenseCriterion` term
    depends on, for :func:`gradient_accounting` with ``wrt=feats``.

    Args:
        crit: the criterion.
        feats: the head outputs given to ``crit`` (list of ``(B, 4R + C [+ O] [+ 2K], H, W)``).
        targets: the targets given to ``crit``.
        assigned: ``crit.assign(feats, targets)`` if already computed (else it is computed here: the
            assignment is deterministic, so it is the one the report was computed with).

    Returns:
        term -> one bool mask per level, shaped like ``feats[l]``:

        - ``box``, ``dfl``: the ``4R`` box channels of the positive anchors whose soft target
          (``DenseTargets.weight``, the weight of their elements) is nonzero: a positive with target 0
          is multiplied by 0, so the term does not depend on it (the same holds for ``poly``);
        - ``cls``: every class channel of every anchor;
        - ``poly``: the ``2K`` polygon channels of the positives (MGIoU uses all K predicted vertices);
          with ``polygon_loss="l1"`` / ``"l2"``, only the channels of the vertices valid in the
          assigned target (the only vertices those losses compare);
        - ``corner``: the ``2K`` polygon channels of the positives (every predicted vertex is a candidate
          corner and is pulled to the target's boundary);
        - ``bg``: for ``kind="focal"`` every class channel of the background anchors; for
          ``kind="max"`` the channel of the top class of each background anchor (the max selects one
          logit per anchor, so the other channels are unused by construction, not dead). Then ``dead``
          measures what ``logit_clamp`` or saturation kills;
        - ``obj``: the objectness channel of every anchor (BCE against 0 or the positive's target).
    """
    k = crit.num_vertices
    t = crit.assign(feats, targets) if assigned is None else assigned
    fg = t.fg  # (B, A)
    b = fg.shape[0]
    weighted = torch.zeros_like(fg)  # positives whose elements carry a nonzero weight
    weighted[t.image, t.anchor] = t.weight != 0
    sizes = [f.shape[2] * f.shape[3] for f in feats]
    box, cls, obj, poly = crit.layout.box, crit.layout.cls, crit.layout.obj, crit.layout.poly

    def empty() -> list[Tensor]:
        return [
            torch.zeros(f.shape[0], f.shape[1], s, dtype=torch.bool, device=f.device)
            for f, s in zip(feats, sizes, strict=True)
        ]

    def per_level(anchor_mask: Tensor) -> list[Tensor]:
        return list(anchor_mask.split(sizes, 1))  # (B, A) -> per level (B, HW_l)

    out: dict[str, list[Tensor]] = {}
    fg_levels = per_level(fg)
    weighted_levels = per_level(weighted)
    pos = empty()
    for m, f in zip(pos, weighted_levels, strict=True):
        m[:, box] = f[:, None, :]
    out["box"] = pos
    out["dfl"] = [m.clone() for m in pos]
    every = empty()
    for m in every:
        m[:, cls] = True
    out["cls"] = every
    if k:
        pm = empty()
        if crit.polygon_loss in ("l1", "l2"):
            vertex = torch.zeros(b, fg.shape[1], k, 2, dtype=torch.bool, device=fg.device)  # (B, A, K, xy)
            valid = t.polygon_valid.to(fg.device) & (t.weight != 0)[:, None]
            vertex[t.image, t.anchor] = valid[:, :, None]
            vertex = vertex.flatten(2)  # (B, A, 2K): x and y channel of each vertex
            for m, v in zip(pm, vertex.split(sizes, 1), strict=True):
                m[:, poly] = v.transpose(1, 2)
        else:
            for m, f in zip(pm, weighted_levels, strict=True):
                m[:, poly] = f[:, None, :]
        out["poly"] = pm
        if getattr(crit, "polygon_corner", False):  # all K predicted vertices of the weighted positives
            cm = empty()
            for m, f in zip(cm, weighted_levels, strict=True):
                m[:, poly] = f[:, None, :]
            out["corner"] = cm
    if crit.background is not None:
        bgm = empty()
        for m, f, feat in zip(bgm, fg_levels, feats, strict=True):
            background = ~f  # (B, HW)
            if crit.background.kind == "max":
                logits = feat.detach().flatten(2)[:, cls]  # (B, C, HW)
                top = torch.zeros_like(logits, dtype=torch.bool)
                top.scatter_(1, logits.argmax(1, keepdim=True), True)
                m[:, cls] = top & background[:, None, :]
            else:
                m[:, cls] = background[:, None, :]
        out["bg"] = bgm
    if getattr(crit, "objectness", False):
        om = empty()
        for m in om:
            m[:, obj] = True
        out["obj"] = om
    return {name: [m.view_as(f) for m, f in zip(masks, feats, strict=True)] for name, masks in out.items()}
