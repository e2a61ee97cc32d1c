"""Classification element losses: BCE, sigmoid focal, varifocal, quality focal, softmax cross-entropy.

Every function returns one loss value per element (never reduced) and computes in float32 (float64 is
kept, for gradcheck), also under autocast. Targets of the sigmoid losses may be soft scores in ``[0, 1]``
(background is an all-zero target row: no class channel for it); their values are not checked, since that would
need a device synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from detloss.core.checks import as_float32, check_float_pair, check_same, check_tensor

__all__ = ["bce_with_logits", "quality_focal", "sigmoid_focal", "softmax_cross_entropy", "varifocal"]


def _logits_targets(logits: object, targets: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a logits/targets pair of one (any) shape and return both as float32 (float64 kept)."""
    return check_float_pair("logits", logits, "targets", targets)


def _bce(x: torch.Tensor, t: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight, reduction="none")


def bce_with_logits(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Binary cross-entropy on logits, per element.

    ``ℓ = -[pw·t·log σ(x) + (1 - t)·log(1 - σ(x))]``, computed stably (log-sum-exp form).

    Args:
        logits: ``(...)`` floating, e.g. ``(N, C)`` class logits.
        targets: same shape as ``logits``, soft targets in ``[0, 1]``.
        pos_weight: optional weight of the positive term, a number, a 0-d tensor or a ``(C,)`` tensor
            broadcast over the last dim of ``logits`` (as in torch's ``binary_cross_entropy_with_logits``).

    Returns:
        ``(...)`` float32 (float64 if ``logits`` is float64), same shape as ``logits``.

    Example:
        >>> x = torch.tensor([[0.0, 2.0]])
        >>> bce_with_logits(x, torch.tensor([[1.0, 0.0]])).round(decimals=4)
        tensor([[0.6931, 2.1269]])
    """
    x, t = _logits_targets(logits, targets)
    pw = None
    if pos_weight is not None:
        if not isinstance(pos_weight, torch.Tensor):
            if isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float)):
                raise ValueError(
                    f"pos_weight must be a number or a tensor of shape () or (C,), got {type(pos_weight).__name__}"
                )
            pos_weight = torch.tensor(float(pos_weight), device=x.device)
        c = x.shape[-1] if x.dim() > 0 else 1
        if pos_weight.dim() > 1 or pos_weight.numel() not in (1, c):
            raise ValueError(
                f"pos_weight must have shape () or (C,) with C = logits.shape[-1] = {c}, got {tuple(pos_weight.shape)}"
            )
        if not pos_weight.is_floating_point():
            raise ValueError(f"pos_weight must be a floating-point tensor of shape (C,), got dtype {pos_weight.dtype}")
        check_same("logits", x, "pos_weight", pos_weight, dims=())
        pw = pos_weight.to(x.dtype)
    return _bce(x, t, pw)


def sigmoid_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet, Lin et al. 2017), per element.

    ``ℓ = α_t · (1 - p_t)^γ · BCE(x, t)`` with ``p = σ(x)``, ``p_t = p·t + (1 - p)·(1 - t)`` and
    ``α_t = α·t + (1 - α)·(1 - t)``; soft targets are allowed. ``alpha < 0`` disables the α weighting.
    ``1 - p_t`` is evaluated as ``p·(1 - t) + σ(-x)·t`` (the same value, without cancellation when ``p``
    saturates). The modulating factor is not detached (as in torchvision and mmdet).

    Args:
        logits: ``(...)`` floating, e.g. ``(N, C)``.
        targets: same shape, in ``[0, 1]``.
        alpha: positive-class weight in ``[0, 1]``, or negative to disable.
        gamma: focusing exponent, ``>= 0`` (``0`` gives α-weighted BCE).

    Returns:
        ``(...)`` float32, same shape as ``logits``.

    Example:
        >>> sigmoid_focal(torch.tensor([0.0]), torch.tensor([1.0])).round(decimals=4)  # .25 * .5**2 * log 2
        tensor([0.0433])
    """
    x, t = _logits_targets(logits, targets)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    loss = _bce(x, t)
    if gamma != 0:
        one_minus_pt = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
        loss = loss * one_minus_pt.pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss


def varifocal(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.75, gamma: float = 2.0) -> torch.Tensor:
    """Varifocal loss (VarifocalNet, Zhang et al. 2021), per element.

    ``ℓ = w · BCE(x, q)`` with ``w = q`` where ``q > 0`` (positives, weighted by their IoU-aware score) and
    ``w = α·σ(x)^γ`` where ``q <= 0`` (negatives, down-weighted as in focal loss). ``w`` is not detached
    (as in mmdet's implementation).

    Args:
        logits: ``(...)`` floating, e.g. ``(N, C)``.
        targets: same shape, IoU-aware classification scores ``q`` in ``[0, 1]`` (0 for background).
        alpha: weight of the negatives.
        gamma: focusing exponent of the negatives, ``>= 0``.

    Returns:
        ``(...)`` float32, same shape as ``logits``.

    Example:
        >>> varifocal(torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.0])).round(decimals=4)
        tensor([0.3466, 0.1300])
    """
    x, q = _logits_targets(logits, targets)
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    weight = torch.where(q > 0, q, alpha * torch.sigmoid(x).pow(gamma))
    return _bce(x, q) * weight


def quality_focal(logits: torch.Tensor, targets: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Quality focal loss (Generalized Focal Loss, Li et al. 2020), per element.

    ``ℓ = |q - σ(x)|^β · BCE(x, q)``, where ``q`` is the joint quality (IoU) score of the target class
    and ``0`` elsewhere. The modulating factor is not detached (as in mmdet).

    Args:
        logits: ``(...)`` floating, e.g. ``(N, C)``.
        targets: same shape, soft scores ``q`` in ``[0, 1]``.
        beta: focusing exponent, ``>= 0``.

    Returns:
        ``(...)`` float32, same shape as ``logits``.

    Example:
        >>> quality_focal(torch.tensor([0.0]), torch.tensor([1.0])).round(decimals=4)  # .5**2 * log 2
        tensor([0.1733])
    """
    x, q = _logits_targets(logits, targets)
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    return _bce(x, q) * (q - torch.sigmoid(x)).abs().pow(beta)


def softmax_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy over ``C`` classes, one value per row.

    With ``ε = label_smoothing``, ``w = class_weight`` (ones if ``None``) and ``log p = log_softmax(x)``:
    ``ℓ_i = (1 - ε)·w[y_i]·(-log p_{i,y_i}) + (ε / C)·Σ_c w_c·(-log p_{i,c})``, which is
    :func:`torch.nn.functional.cross_entropy` with ``reduction="none"``. Note that class weights are *not*
    normalised here; a weighted mean divides by ``Σ w[y_i]``, which is the
    normalizer's job (one named ``D`` per term), not the element loss's.

    Args:
        logits: ``(N, C)`` floating.
        targets: ``(N,)`` int64 class indices in ``[0, C)`` (not checked on device: torch raises on CPU).
        label_smoothing: ``ε`` in ``[0, 1]``.
        class_weight: optional ``(C,)`` floating per-class weights.

    Returns:
        ``(N,)`` float32.

    Example:
        >>> softmax_cross_entropy(torch.zeros(1, 4), torch.tensor([2])).round(decimals=4)  # log 4
        tensor([1.3863])
    """
    check_tensor("logits", logits, ("N", "C"), floating=True)
    check_tensor("targets", targets, ("N",))
    check_same("logits", logits, "targets", targets, dims=(0,))
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be an int64 tensor of shape (N,), got dtype {targets.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    x = as_float32(logits)
    w = None
    if class_weight is not None:
        check_tensor("class_weight", class_weight, (logits.shape[1],), floating=True)
        check_same("logits", logits, "class_weight", class_weight, dims=())
        w = class_weight.to(x.dtype)
    return F.cross_entropy(x, targets, weight=w, reduction="none", label_smoothing=label_smoothing)
