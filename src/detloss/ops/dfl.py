"""Decoding of DFL box distributions (GFL, Li et al. 2020): the one place a dense head's box logits
become distances.

A box side is predicted as logits over ``reg_max`` bins ``0, 1, ..., reg_max - 1`` (distances in stride
units); its value is the expectation of the softmax, its spread (:func:`dfl_entropy`) how unsure the head is
of that side. The element loss that trains these distributions,
``distribution_focal``, is in :mod:`detloss.functional.dfl`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from detloss.core.checks import as_float32

__all__ = ["dfl_decode", "dfl_entropy"]


def dfl_decode(pred_dist: torch.Tensor, reg_max: int | None = None, *, dim: int = -1) -> torch.Tensor:
    """Expected distances of four side distributions: ``softmax(logits) · (0, 1, ..., reg_max - 1)``.

    Dim ``dim`` holds the four sides one after the other (``[side0 bins, side1 bins, side2 bins, side3
    bins]``, as ultralytics' ``view(..., 4, reg_max)``); for YOLOv8 the sides are left, top, right, bottom
    distances from the anchor point in stride units. ``dim=-1`` decodes channels-last rows such as the
    positives' ``(P, 4 * reg_max)`` logits; ``dim=1`` one level of a head, ``(B, 4 * reg_max, HW)``.
    With ``reg_max == 1`` there is no distribution: the four channels are the distances themselves
    (a head trained with ``reg_max=1`` regresses them directly), returned in float32.

    Args:
        pred_dist: floating logits with ``4 * reg_max`` entries along ``dim``, e.g. ``(..., 4 * reg_max)``.
        reg_max: number of bins; inferred as ``pred_dist.shape[dim] // 4`` if ``None``.
        dim: the dimension holding the ``4 * reg_max`` logits.

    Returns:
        ``pred_dist``'s shape with ``4`` in place of ``4 * reg_max`` at ``dim``, float32 (float64 kept),
        each value in ``[0, reg_max - 1]`` when ``reg_max >= 2``.

    Example:
        >>> dfl_decode(torch.zeros(1, 4 * 16))  # uniform over 0..15
        tensor([[7.5000, 7.5000, 7.5000, 7.5000]])
        >>> dfl_decode(torch.zeros(2, 4 * 3, 5), dim=1).shape  # one level (B, 4R, HW) -> (B, 4, HW)
        torch.Size([2, 4, 5])
    """
    where = "(..., 4*reg_max)" if dim == -1 else f"4*reg_max entries in dim {dim}"
    if not isinstance(pred_dist, torch.Tensor):
        raise ValueError(f"pred_dist must be a torch.Tensor with {where}, got {type(pred_dist).__name__}")
    if not -pred_dist.dim() <= dim < pred_dist.dim():
        raise ValueError(f"pred_dist must have shape {where}, got {tuple(pred_dist.shape)}")
    if not pred_dist.is_floating_point():
        raise ValueError(f"pred_dist must be a floating-point tensor with {where}, got dtype {pred_dist.dtype}")
    d = dim % pred_dist.dim()
    n = pred_dist.shape[d]
    if reg_max is None:
        reg_max = n // 4
    if reg_max < 1 or n != 4 * reg_max:
        raise ValueError(
            f"pred_dist must have shape {where} with reg_max >= 1"
            + ("" if reg_max is None else f" (reg_max={reg_max})")
            + f", got {tuple(pred_dist.shape)}"
        )
    x = as_float32(pred_dist)
    if reg_max == 1:
        return x
    prob = x.unflatten(d, (4, reg_max)).softmax(d + 1)
    bins = torch.arange(reg_max, device=x.device, dtype=x.dtype).view((reg_max,) + (1,) * (x.dim() - 1 - d))
    return (prob * bins).sum(d + 1)  # elementwise, not matmul: stays float32 under autocast


def dfl_entropy(dfl_logits: Tensor, reg_max: int) -> Tensor:
    """Normalised entropy of the DFL side distributions: ``(...)`` in ``[0, 1]``.

    For each of the 4 sides ``l, t, r, b`` the entropy ``H = -sum_k p_k log p_k`` of ``softmax(logits)``
    is divided by ``log(reg_max)`` (its maximum), then the 4 sides are averaged: ``0`` when every side
    is one-hot (a certain box), ``1`` when every side is uniform.

    Terms with ``p_k == 0`` contribute exactly 0 (the limit of ``p log p``), so ``-inf`` logits (or
    logits so low that their softmax weight underflows) give no ``nan`` and a one-hot distribution
    gives exactly 0. A side whose logits are all ``-inf`` has no distribution and gives ``nan``.

    Args:
        dfl_logits: ``(..., 4, reg_max)`` or ``(..., 4 * reg_max)`` (side-major: channel
            ``side * reg_max + bin``, the dense head's layout). Float32 is used unless float64.
        reg_max: bins per side, ``>= 2`` (one bin is a direct distance, not a distribution).

    Example:
        >>> dfl_entropy(torch.tensor([[0.0, -1e4] * 4, [0.0, 0.0] * 4]), reg_max=2)
        tensor([0., 1.])
    """
    if not isinstance(reg_max, int) or reg_max < 2:
        raise ValueError(f"reg_max must be an int >= 2 (one bin has no distribution), got {reg_max!r}")
    if not isinstance(dfl_logits, Tensor) or not dfl_logits.is_floating_point():
        raise ValueError(
            f"dfl_logits must be a floating-point tensor of shape (..., 4, {reg_max}) or (..., {4 * reg_max})"
        )
    if dfl_logits.dim() >= 1 and dfl_logits.shape[-1] == 4 * reg_max:
        x = dfl_logits.unflatten(-1, (4, reg_max))
    elif dfl_logits.dim() >= 2 and tuple(dfl_logits.shape[-2:]) == (4, reg_max):
        x = dfl_logits
    else:
        raise ValueError(
            f"dfl_logits must have shape (..., 4, {reg_max}) or (..., {4 * reg_max}), got {tuple(dfl_logits.shape)}"
        )
    logp = torch.log_softmax(as_float32(x), dim=-1)
    p = logp.exp()
    # masked_fill (not where) so that the p == 0 terms are exactly 0 and also have a zero, not nan, gradient
    h = -(p * logp.masked_fill(p == 0, 0.0)).sum(-1)  # (..., 4)
    return h.mean(-1) / math.log(reg_max)
