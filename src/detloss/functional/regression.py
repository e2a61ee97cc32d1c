"""Elementwise regression losses: L1, smooth L1 (Huber / beta), squared error.

Each returns one value per element, same shape as the inputs, in float32 (float64 kept), also under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detloss.core.checks import check_float_pair

__all__ = ["l1", "mse", "smooth_l1"]


def _pair(pred: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
    return check_float_pair("pred", pred, "target", target)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Absolute error ``|pred - target|``, elementwise.

    Args:
        pred: ``(...)`` floating.
        target: same shape as ``pred``.

    Returns:
        ``(...)`` float32, same shape.

    Example:
        >>> l1(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0]))
        tensor([0.5000, 3.0000])
    """
    p, t = _pair(pred, target)
    return F.l1_loss(p, t, reduction="none")


def smooth_l1(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth L1 with transition ``beta``, elementwise.

    With ``d = |pred - target|``: ``0.5·d²/beta`` where ``d < beta``, else ``d - 0.5·beta``.
    ``beta = 0`` gives :func:`l1`.

    Args:
        pred: ``(...)`` floating.
        target: same shape as ``pred``.
        beta: transition point, ``>= 0``.

    Returns:
        ``(...)`` float32, same shape.

    Example:
        >>> smooth_l1(torch.tensor([0.5, 3.0]), torch.zeros(2))
        tensor([0.1250, 2.5000])
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    p, t = _pair(pred, target)
    if beta == 0:
        return F.l1_loss(p, t, reduction="none")
    return F.smooth_l1_loss(p, t, reduction="none", beta=beta)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error ``(pred - target)²``, elementwise.

    Args:
        pred: ``(...)`` floating.
        target: same shape as ``pred``.

    Returns:
        ``(...)`` float32, same shape.

    Example:
        >>> mse(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0]))
        tensor([0.2500, 9.0000])
    """
    p, t = _pair(pred, target)
    return F.mse_loss(p, t, reduction="none")
