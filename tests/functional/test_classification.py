"""Classification element losses against hand-computed closed forms (plain ``math``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detloss.functional import (
    bce_with_logits,
    quality_focal,
    sigmoid_focal,
    softmax_cross_entropy,
    varifocal,
)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bce_hand(x: float, t: float, pw: float = 1.0) -> float:
    p = sig(x)
    return -(pw * t * math.log(p) + (1 - t) * math.log(1 - p))


XS = [-2.0, -0.5, 0.0, 0.7, 3.0]
TS = [1.0, 0.0, 0.3, 1.0, 0.6]

SIGMOID_LOSSES = [bce_with_logits, sigmoid_focal, varifocal, quality_focal]


def _t(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def test_bce_matches_hand_formula():
    out = bce_with_logits(_t(XS), _t(TS))
    expected = [bce_hand(x, t) for x, t in zip(XS, TS, strict=True)]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    # second check: torch's own implementation
    assert torch.allclose(out, F.binary_cross_entropy_with_logits(_t(XS), _t(TS), reduction="none"))


def test_bce_pos_weight_over_last_dim():
    x = _t([[0.5, -1.0, 2.0], [-0.2, 0.0, 1.5]])
    t = _t([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]])
    pw = _t([2.0, 3.0, 0.5])
    out = bce_with_logits(x, t, pos_weight=pw)
    expected = [[bce_hand(x[i, j].item(), t[i, j].item(), pw[j].item()) for j in range(3)] for i in range(2)]
    assert out.tolist() == [pytest.approx(row, rel=1e-12) for row in expected]
    scalar = bce_with_logits(x, t, pos_weight=2.0)
    expected = [[bce_hand(x[i, j].item(), t[i, j].item(), 2.0) for j in range(3)] for i in range(2)]
    assert scalar.tolist() == [pytest.approx(row, rel=1e-12) for row in expected]


@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [2.0, 1.5, 0.0])
def test_sigmoid_focal_matches_hand_formula(alpha, gamma):
    out = sigmoid_focal(_t(XS), _t(TS), alpha=alpha, gamma=gamma)
    expected = []
    for x, t in zip(XS, TS, strict=True):
        p = sig(x)
        p_t = p * t + (1 - p) * (1 - t)
        a_t = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else 1.0
        expected.append(a_t * (1 - p_t) ** gamma * bce_hand(x, t))
    assert out.tolist() == pytest.approx(expected, rel=1e-10, abs=1e-15)


def test_varifocal_matches_hand_formula():
    qs = [0.9, 0.0, 0.3, 0.0, 0.6]
    out = varifocal(_t(XS), _t(qs), alpha=0.75, gamma=2.0)
    expected = []
    for x, q in zip(XS, qs, strict=True):
        w = q if q > 0 else 0.75 * sig(x) ** 2
        expected.append(w * bce_hand(x, q))
    assert out.tolist() == pytest.approx(expected, rel=1e-12)


def test_quality_focal_matches_hand_formula():
    qs = [0.9, 0.0, 0.3, 0.0, 0.6]
    out = quality_focal(_t(XS), _t(qs), beta=2.0)
    expected = [abs(q - sig(x)) ** 2 * bce_hand(x, q) for x, q in zip(XS, qs, strict=True)]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    out = quality_focal(_t(XS), _t(qs), beta=1.0)
    expected = [abs(q - sig(x)) * bce_hand(x, q) for x, q in zip(XS, qs, strict=True)]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)


def _log_softmax_hand(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def test_softmax_cross_entropy_matches_hand_formula():
    logits = [[1.0, 2.0, 0.5, -1.0], [0.0, 0.0, 0.0, 0.0], [3.0, -2.0, 1.0, 0.2]]
    y = [1, 3, 0]
    w = [0.5, 1.0, 2.0, 1.5]
    eps = 0.1
    x = _t(logits)
    out = softmax_cross_entropy(x, torch.tensor(y))
    expected = [-_log_softmax_hand(r)[c] for r, c in zip(logits, y, strict=True)]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    assert out[1].item() == pytest.approx(math.log(4))

    out = softmax_cross_entropy(x, torch.tensor(y), label_smoothing=eps, class_weight=_t(w))
    expected = []
    for r, c in zip(logits, y, strict=True):
        lp = _log_softmax_hand(r)
        expected.append((1 - eps) * w[c] * -lp[c] + eps / 4 * sum(wk * -lk for wk, lk in zip(w, lp, strict=True)))
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    ref = F.cross_entropy(x, torch.tensor(y), weight=_t(w), label_smoothing=eps, reduction="none")
    assert torch.allclose(out, ref)


@pytest.mark.parametrize("fn", SIGMOID_LOSSES)
def test_sigmoid_losses_finite_for_saturated_logits(fn):
    x = torch.tensor([-200.0, -30.0, 30.0, 200.0], requires_grad=True)
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = fn(x, t)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # correct confident predictions cost (almost) nothing; wrong ones cost about |x| times a weight
    assert out[1].item() < 1e-10 and out[2].item() < 1e-10


@pytest.mark.parametrize("fn", SIGMOID_LOSSES)
def test_sigmoid_losses_empty(fn):
    x = torch.zeros(0, 5, requires_grad=True)
    out = fn(x, torch.zeros(0, 5))
    assert out.shape == (0, 5)
    out.sum().backward()
    assert x.grad.shape == (0, 5)


def test_softmax_cross_entropy_empty():
    x = torch.zeros(0, 5, requires_grad=True)
    out = softmax_cross_entropy(x, torch.zeros(0, dtype=torch.int64), label_smoothing=0.1)
    assert out.shape == (0,)
    out.sum().backward()
    assert x.grad.shape == (0, 5)


@pytest.mark.parametrize("fn", SIGMOID_LOSSES)
def test_sigmoid_losses_bad_input(fn):
    with pytest.raises(ValueError, match="targets"):
        fn(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="targets"):
        fn(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="logits"):
        fn(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="logits"):
        fn([0.0, 1.0], torch.zeros(2))


def test_bce_bad_pos_weight():
    with pytest.raises(ValueError, match="pos_weight"):
        bce_with_logits(torch.zeros(3, 4), torch.zeros(3, 4), pos_weight=torch.ones(3))
    with pytest.raises(ValueError, match="pos_weight"):
        bce_with_logits(torch.zeros(3, 4), torch.zeros(3, 4), pos_weight=torch.ones(4, dtype=torch.int64))


def test_softmax_cross_entropy_bad_input():
    with pytest.raises(ValueError, match="logits"):
        softmax_cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="targets"):
        softmax_cross_entropy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="targets"):
        softmax_cross_entropy(torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="targets"):
        softmax_cross_entropy(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="class_weight"):
        softmax_cross_entropy(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), class_weight=torch.ones(3))
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_cross_entropy(torch.zeros(3, 4), torch.zeros(3, dtype=torch.int64), label_smoothing=1.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn", SIGMOID_LOSSES)
def test_sigmoid_losses_low_precision_inputs_give_float32(fn, dtype):
    x = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=dtype)
    t = torch.tensor([[1.0, 0.0], [0.5, 0.0]], dtype=dtype)
    out = fn(x, t)
    assert out.dtype == torch.float32
    assert torch.allclose(out, fn(x.float(), t.float()))


def test_autocast_bfloat16_gives_float32():
    x = torch.randn(6, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        xa = torch.nn.functional.linear(x, torch.eye(3))  # a bfloat16 activation, as in a real head
        assert xa.dtype == torch.bfloat16
        for fn in SIGMOID_LOSSES:
            assert fn(xa, torch.rand(6, 3)).dtype == torch.float32
        ce = softmax_cross_entropy(xa, torch.zeros(6, dtype=torch.int64), class_weight=torch.ones(3))
        assert ce.dtype == torch.float32


def test_float64_is_kept():
    x = torch.zeros(2, 3, dtype=torch.float64)
    assert bce_with_logits(x, torch.zeros(2, 3)).dtype == torch.float64
    assert softmax_cross_entropy(x, torch.zeros(2, dtype=torch.int64)).dtype == torch.float64
