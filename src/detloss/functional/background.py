"""Penalties on background anchors (against confident false positives in teacher-student training):
per-anchor values, reduced by the core."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detloss.core.checks import as_float32, check_tensor


def _logits(logits: object, logit_clamp: float | None) -> torch.Tensor:
    check_tensor("logits", logits, ("N", "C"), floating=True)
    x = as_float32(logits)
    # Opt-in: beyond the bound the penalty has zero gradient, so it is off by default.
    return x if logit_clamp is None else x.clamp(-logit_clamp, logit_clamp)


def max_score_penalty(logits: torch.Tensor, logit_clamp: float | None = None) -> torch.Tensor:
    """``max_c sigmoid(logit_c)`` per background anchor: the most confident wrong class.

    Args:
        logits: ``(N, C)`` class logits of N background anchors.
        logit_clamp: optional bound ``b``; logits are clamped to ``[-b, b]`` first (zero gradient beyond).

    Returns:
        ``(N,)`` in ``[0, 1]``. ``(0, C)`` gives ``(0,)``.

    Example:
        >>> max_score_penalty(torch.tensor([[0.0, 2.0], [-3.0, -1.0]]))
        tensor([0.8808, 0.2689])
    """
    x = _logits(logits, logit_clamp)
    if x.shape[1] == 0:
        raise ValueError("logits must have at least one class column, got shape (N, 0)")
    return x.amax(dim=1).sigmoid()  # sigmoid is monotone: max of sigmoids = sigmoid of max


def focal_background(logits: torch.Tensor, gamma: float = 2.0, logit_clamp: float | None = None) -> torch.Tensor:
    """Focal loss of background anchors against the all-zero target, summed over classes.

    ``sum_c p_c^gamma * -log(1 - p_c)`` with ``p_c = sigmoid(logit_c)``. Report 004 writes the
    modulating factor as ``(1 - p)^gamma``, which down-weights exactly the confident false positives it
    means to target; for a target of 0 the focal factor ``(1 - p_t)^gamma`` is ``p^gamma``.

    Returns:
        ``(N,)``, non-negative.

    Example:
        >>> focal_background(torch.tensor([[0.0]]), gamma=2.0)  # 0.25 * log 2
        tensor([0.1733])
    """
    x = _logits(logits, logit_clamp)
    return (x.sigmoid().pow(gamma) * F.softplus(x)).sum(dim=1)  # -log(1 - sigmoid(x)) = softplus(x)
