"""Distribution focal loss (GFL, Li et al. 2020); decoding the distributions is :func:`detloss.ops.dfl.dfl_decode`.

A box side is predicted as logits over ``reg_max`` bins ``0, 1, ..., reg_max - 1`` (distances in stride
units); its value is the expectation of the softmax. DFL pushes the probability mass onto the two bins
around the continuous target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detloss.core.checks import as_float32, check_same, check_trailing

__all__ = ["distribution_focal"]

#: Upper margin of the target clamp: targets are clamped to ``[0, reg_max - 1 - DFL_TARGET_MARGIN]``.
DFL_TARGET_MARGIN = 0.01


def distribution_focal(pred_dist: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss of one distribution per element.

    The target is first clamped to ``[0, reg_max - 1 - 0.01]`` (the ultralytics clamp). This clamp is part
    of the definition, not a NaN guard: a target at or beyond the last bin has no right neighbour, so it is
    represented by the bins ``reg_max - 2`` and ``reg_max - 1`` with weights ``0.01`` and ``0.99``; a negative
    target is represented by bin 0. Then, with ``l = floor(t)``, ``r = l + 1``, ``w_l = r - t``,
    ``w_r = 1 - w_l``::

        ℓ = w_l · CE(pred_dist, l) + w_r · CE(pred_dist, r)

    The loss is minimal (equal to the entropy of ``(w_l, w_r)``) when the softmax puts ``w_l`` on ``l``
    and ``w_r`` on ``r``, whose expectation is ``t``. Gradients flow to ``pred_dist`` only.

    Args:
        pred_dist: ``(..., reg_max)`` floating logits, ``reg_max >= 2``; typically ``(N, reg_max)``.
        target: ``(...)`` floating continuous targets in bin units, same leading shape; typically ``(N,)``.

    Returns:
        ``(...)`` float32 (float64 if ``pred_dist`` is float64), e.g. ``(N,)``.

    Example:
        >>> distribution_focal(torch.zeros(1, 4), torch.tensor([2.3])).round(decimals=4)  # log 4
        tensor([1.3863])
    """
    check_trailing("pred_dist", pred_dist, ("reg_max",), floating=True)
    assert isinstance(pred_dist, torch.Tensor)
    reg_max = pred_dist.shape[-1]
    lead = tuple(pred_dist.shape[:-1])
    expected = "(" + ", ".join(str(s) for s in lead) + ("," if len(lead) == 1 else "") + ")"
    if not isinstance(target, torch.Tensor) or tuple(target.shape) != lead:
        got = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must have shape pred_dist.shape[:-1] = {expected}, got {got}")
    if not target.is_floating_point():
        raise ValueError(f"target must be a floating-point tensor of shape {expected}, got dtype {target.dtype}")
    check_same("pred_dist", pred_dist, "target", target, dims=())
    if reg_max < 2:
        raise ValueError(f"pred_dist must have shape (..., reg_max) with reg_max >= 2, got {tuple(pred_dist.shape)}")
    logp = F.log_softmax(as_float32(pred_dist), dim=-1)
    t = as_float32(target).detach().to(logp.dtype).clamp(0, reg_max - 1 - DFL_TARGET_MARGIN)
    left = t.long()  # floor, as t >= 0
    right = left + 1
    wl = right - t
    wr = 1 - wl
    ce_left = -logp.gather(-1, left.unsqueeze(-1)).squeeze(-1)
    ce_right = -logp.gather(-1, right.unsqueeze(-1)).squeeze(-1)
    return ce_left * wl + ce_right * wr
