"""Property suites for the corner term over degenerate, tiny, huge and far-from-origin polygons: agreement
with a plain numpy implementation, finite values and gradients, none on padding, zero against itself
(strategies: ``polygon_strategies``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import settings
from polygon_strategies import PROPERTY, Pairs, polygon_pairs

from detloss.functional.polygon_corner import corner_loss

BETA = 0.05
#: a quarter of the MGIoU suites' examples (the numpy reference is a Python loop); still 500+ pairs each
CORNER = settings(PROPERTY, max_examples=max(PROPERTY.max_examples // 4, 1))


def huber(r: np.ndarray) -> np.ndarray:
    return np.where(r < BETA, r * r / (2 * BETA), r - BETA / 2)


def segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    e = b - a
    len2 = float(e @ e)
    t = 0.0 if len2 == 0 else min(max(float((p - a) @ e) / len2, 0.0), 1.0)
    return float(np.hypot(*(p - a - t * e)))


def numpy_corner(p: np.ndarray, g: np.ndarray) -> float:
    """The documented loss, directly: ``s`` the target's box diagonal (the joint box's for a point
    target), each target corner to its nearest vertex, each vertex to the nearest target edge."""
    s = float(np.hypot(*np.ptp(g, 0)))
    if s == 0:
        s = float(np.hypot(*np.ptp(np.concatenate([p, g]), 0)))
    if s == 0:
        return 0.0
    corner = huber(np.array([np.hypot(*(p - c).T).min() for c in g]) / s).mean()
    edges = list(zip(g, np.roll(g, -1, 0), strict=True))
    edge = huber(np.array([min(segment_distance(v, a, b) for a, b in edges) for v in p]) / s).mean()
    return float(corner + edge)


@CORNER
@given(polygon_pairs(dtypes=(torch.float64,)))
def test_float64_matches_numpy_far_from_the_origin(pairs: Pairs) -> None:
    """Every kind (points, segments, repeats, subnormal steps) at offsets up to 1e6: the numpy value of the
    local coordinates, to 1e-9."""
    loss = corner_loss(pairs.a, pairs.b, pairs.na, pairs.nb)
    for i in range(len(loss)):
        la, lb = pairs.local(i)
        ref = numpy_corner(la, lb)
        assert loss[i].item() == pytest.approx(ref, rel=1e-9, abs=1e-9), (pairs.kind_a[i], pairs.kind_b[i])


@CORNER
@given(polygon_pairs())
def test_finite_values_and_gradients_none_on_padding_zero_against_itself(pairs: Pairs) -> None:
    """float32 and float64, nan padding: the loss is finite and >= 0, its gradients finite and exactly 0 on
    padded slots; float32 is within 1e-4 of the float64 numpy value. A polygon's own vertices as the
    prediction (any kind): 0, up to the rounding of the local frame."""
    a = pairs.a.clone().requires_grad_()
    b = pairs.b.clone().requires_grad_()
    loss = corner_loss(a, b, pairs.na, pairs.nb)
    assert loss.dtype == pairs.a.dtype and torch.isfinite(loss).all() and (loss >= 0).all(), loss
    for grad, count in zip(torch.autograd.grad(loss.sum(), (a, b)), (pairs.na, pairs.nb), strict=True):
        assert torch.isfinite(grad).all(), grad
        assert (grad[torch.arange(grad.shape[1]) >= count[:, None]] == 0).all()
    if pairs.a.dtype == torch.float32:
        for i in range(len(loss)):
            ref = numpy_corner(*pairs.local(i))
            assert loss[i].item() == pytest.approx(ref, rel=1e-4, abs=1e-4), (pairs.kind_a[i], pairs.kind_b[i])
    itself = corner_loss(pairs.b, pairs.b, pairs.nb, pairs.nb)
    assert (itself <= (1e-5 if pairs.b.dtype == torch.float32 else 1e-12)).all(), itself
