"""Elementwise regression losses against hand values."""

from __future__ import annotations

import pytest
import torch

from detloss.functional import l1, mse, smooth_l1

PRED = [1.0, -2.0, 0.3, 5.0, 0.0]
TARGET = [0.5, 1.0, 0.0, 5.0, -0.9]


def _t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def test_l1_and_mse_hand():
    assert l1(_t(PRED), _t(TARGET)).tolist() == pytest.approx([0.5, 3.0, 0.3, 0.0, 0.9])
    assert mse(_t(PRED), _t(TARGET)).tolist() == pytest.approx([0.25, 9.0, 0.09, 0.0, 0.81])


@pytest.mark.parametrize("beta", [1.0, 2.0, 0.5])
def test_smooth_l1_hand(beta):
    expected = []
    for p, t in zip(PRED, TARGET, strict=True):
        d = abs(p - t)
        expected.append(0.5 * d * d / beta if d < beta else d - 0.5 * beta)
    assert smooth_l1(_t(PRED), _t(TARGET), beta=beta).tolist() == pytest.approx(expected, rel=1e-12)


def test_smooth_l1_beta_zero_is_l1():
    assert smooth_l1(_t(PRED), _t(TARGET), beta=0.0).tolist() == pytest.approx([0.5, 3.0, 0.3, 0.0, 0.9])


def test_shape_is_kept():
    p = torch.randn(2, 3, 4)
    for fn in (l1, smooth_l1, mse):
        assert fn(p, torch.zeros(2, 3, 4)).shape == (2, 3, 4)


@pytest.mark.parametrize("fn", [l1, smooth_l1, mse])
def test_empty(fn):
    p = torch.zeros(0, 4, requires_grad=True)
    out = fn(p, torch.zeros(0, 4))
    assert out.shape == (0, 4)
    out.sum().backward()
    assert p.grad.shape == (0, 4)


@pytest.mark.parametrize("fn", [l1, smooth_l1, mse])
def test_bad_input(fn):
    with pytest.raises(ValueError, match="target"):
        fn(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="pred"):
        fn(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="target"):
        fn(torch.zeros(3, 4), None)


def test_smooth_l1_negative_beta():
    with pytest.raises(ValueError, match="beta"):
        smooth_l1(torch.zeros(2), torch.zeros(2), beta=-1.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", [l1, smooth_l1, mse])
def test_low_precision_gives_float32(fn, dtype):
    out = fn(torch.tensor([1.0, 2.0], dtype=dtype), torch.tensor([0.0, 0.5], dtype=dtype))
    assert out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fn(torch.ones(2, dtype=torch.bfloat16), torch.zeros(2)).dtype == torch.float32
