"""Box <-> delta encoding of two-stage detectors (R-CNN parameterisation, mmdet ``DeltaXYWHBBoxCoder``).

For a reference box ``p`` (anchor or proposal) and a target box ``g``, both pixel ``xyxy`` with
``w = x2 - x1``, ``h = y2 - y1`` (no ``+1``) and centres ``cx = (x1 + x2) / 2``::

    dx = (gcx - pcx) / pw,   dy = (gcy - pcy) / ph,   dw = log(gw / pw),   dh = log(gh / ph)
    delta = ((dx, dy, dw, dh) - means) / stds

RPN uses ``stds = (1, 1, 1, 1)``; R-CNN heads usually ``(0.1, 0.1, 0.2, 0.2)`` (detectron2's weights
``(10, 10, 5, 5)``). Decoding inverts this, with ``dw, dh`` clamped to ``log(1000 / 16)`` as in
detectron2 and mmdet, so an untrained head cannot overflow ``exp``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detloss.core.checks import check_float_pair, check_trailing, common_float

__all__ = ["decode_deltas", "encode_deltas"]

#: Largest ``dw``/``dh`` used when decoding (detectron2 ``_DEFAULT_SCALE_CLAMP``).
SCALE_CLAMP = math.log(1000.0 / 16)


def _stats(x: Tensor, means: Sequence[float], stds: Sequence[float]) -> tuple[Tensor, Tensor]:
    m = torch.as_tensor(means, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(stds, dtype=x.dtype, device=x.device)
    if m.shape != (4,) or s.shape != (4,):
        raise ValueError(f"means and stds must have 4 entries, got {tuple(m.shape)} and {tuple(s.shape)}")
    return m, s


def _cxcywh(b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = b.unbind(-1)
    return (x1 + x2) * 0.5, (y1 + y2) * 0.5, x2 - x1, y2 - y1


def encode_deltas(
    boxes: Tensor,
    targets: Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> Tensor:
    """Deltas ``(..., 4)`` that turn reference ``boxes`` into ``targets`` (module docstring).

    Args:
        boxes: ``(..., 4)`` pixel ``xyxy`` reference boxes (positive width and height).
        targets: same shape, pixel ``xyxy`` target boxes (positive width and height).
        means, stds: 4 numbers each.

    Returns:
        ``(..., 4)`` float32 ``(dx, dy, dw, dh)``.

    Example:
        >>> encode_deltas(torch.tensor([0.0, 0.0, 10.0, 10.0]), torch.tensor([5.0, 0.0, 15.0, 20.0]))
        tensor([0.5000, 0.5000, 0.0000, 0.6931])
    """
    p, g = check_float_pair("boxes", boxes, "targets", targets, (4,))
    m, s = _stats(p, means, stds)
    pcx, pcy, pw, ph = _cxcywh(p)
    gcx, gcy, gw, gh = _cxcywh(g)
    d = torch.stack([(gcx - pcx) / pw, (gcy - pcy) / ph, (gw / pw).log(), (gh / ph).log()], -1)
    return (d - m) / s


def decode_deltas(
    boxes: Tensor,
    deltas: Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    scale_clamp: float = SCALE_CLAMP,
) -> Tensor:
    """Boxes ``(..., 4)`` pixel ``xyxy`` from reference ``boxes`` and ``deltas``; inverse of :func:`encode_deltas`.

    Args:
        boxes: ``(..., 4)`` pixel ``xyxy`` reference boxes.
        deltas: ``(..., 4)`` broadcastable against ``boxes``, ``(dx, dy, dw, dh)``.
        means, stds: as used to encode.
        scale_clamp: upper bound on ``dw``, ``dh`` after de-normalisation.

    Returns:
        ``(..., 4)`` float32 pixel ``xyxy`` (differentiable in ``deltas``).

    Example:
        >>> decode_deltas(torch.tensor([0.0, 0.0, 10.0, 10.0]), torch.tensor([0.5, 0.0, 0.0, math.log(2)]))
        tensor([ 5., -5., 15., 15.])
    """
    check_trailing("boxes", boxes, (4,), floating=True)
    check_trailing("deltas", deltas, (4,), floating=True)
    p, d = common_float(boxes, deltas)
    m, s = _stats(d, means, stds)
    d = d * s + m
    pcx, pcy, pw, ph = _cxcywh(p)
    dx, dy, dw, dh = d.unbind(-1)
    cx, cy = pcx + dx * pw, pcy + dy * ph
    w, h = pw * dw.clamp(max=scale_clamp).exp(), ph * dh.clamp(max=scale_clamp).exp()
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
