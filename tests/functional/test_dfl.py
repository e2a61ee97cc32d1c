"""Distribution focal loss against hand values (decoding: tests/ops/test_dfl.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detloss.functional import distribution_focal

LOGITS = [0.1, -0.3, 0.7, 1.2, 0.0]  # reg_max = 5


def _neg_log_softmax(row: list[float], k: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[k]


def test_hand_case():
    out = distribution_focal(torch.tensor([LOGITS], dtype=torch.float64), torch.tensor([2.3], dtype=torch.float64))
    expected = 0.7 * _neg_log_softmax(LOGITS, 2) + 0.3 * _neg_log_softmax(LOGITS, 3)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, rel=1e-12)


def test_integer_target_uses_one_bin():
    out = distribution_focal(torch.tensor([LOGITS, LOGITS], dtype=torch.float64), torch.tensor([2.0, 0.0]))
    assert out.tolist() == pytest.approx([_neg_log_softmax(LOGITS, 2), _neg_log_softmax(LOGITS, 0)], rel=1e-12)


def test_target_clamp_is_part_of_the_definition():
    # reg_max = 5: targets are clamped to [0, 3.99]; 3.99 -> bins 3 (weight 0.01) and 4 (weight 0.99)
    x = torch.tensor([LOGITS] * 3, dtype=torch.float64)
    out = distribution_focal(x, torch.tensor([10.0, 4.0, -1.0], dtype=torch.float64))
    at_end = 0.01 * _neg_log_softmax(LOGITS, 3) + 0.99 * _neg_log_softmax(LOGITS, 4)
    assert out.tolist() == pytest.approx([at_end, at_end, _neg_log_softmax(LOGITS, 0)], rel=1e-9)


def test_minimum_is_entropy_at_matching_distribution():
    t, wl, wr = 1.25, 0.75, 0.25
    best = torch.log(torch.tensor([[1e-12, wl, wr, 1e-12]], dtype=torch.float64))
    entropy = -(wl * math.log(wl) + wr * math.log(wr))
    assert distribution_focal(best, torch.tensor([t])).item() == pytest.approx(entropy, rel=1e-9)
    other = torch.log(torch.tensor([[0.05, 0.6, 0.3, 0.05]], dtype=torch.float64))
    assert distribution_focal(other, torch.tensor([t])).item() > entropy


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-20, 20, width=32), min_size=16, max_size=16),
    st.floats(-5, 25, width=32),
)
def test_finite_and_at_least_the_entropy(logits, target):
    x = torch.tensor([logits], requires_grad=True)
    out = distribution_focal(x, torch.tensor([target]))
    t = min(max(target, 0.0), 16 - 1 - 0.01)
    wl = math.floor(t) + 1 - t
    entropy = -sum(w * math.log(w) for w in (wl, 1 - wl) if w > 0)
    assert torch.isfinite(out).all() and out.item() >= entropy - 1e-4
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_leading_dims():
    x = torch.randn(3, 4, 16)
    t = torch.rand(3, 4) * 15
    out = distribution_focal(x, t)
    assert out.shape == (3, 4)
    assert torch.allclose(out.reshape(-1), distribution_focal(x.reshape(-1, 16), t.reshape(-1)))


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.3, 1.7, 2.5, 5.2, 6.9, 4.01], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: distribution_focal(p, t), (x,))


def test_no_gradient_to_target():
    x = torch.randn(2, 8, requires_grad=True)
    t = torch.tensor([1.5, 2.5], requires_grad=True)
    distribution_focal(x, t).sum().backward()
    assert t.grad is None and x.grad is not None


def test_empty():
    x = torch.zeros(0, 16, requires_grad=True)
    out = distribution_focal(x, torch.zeros(0))
    assert out.shape == (0,)
    out.sum().backward()
    assert x.grad.shape == (0, 16)


def test_bad_input():
    with pytest.raises(ValueError, match="target"):
        distribution_focal(torch.zeros(3, 16), torch.zeros(4))
    with pytest.raises(ValueError, match="target"):
        distribution_focal(torch.zeros(3, 16), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="target"):
        distribution_focal(torch.zeros(3, 16), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="pred_dist"):
        distribution_focal(torch.zeros(3, 16, dtype=torch.int64), torch.zeros(3))
    with pytest.raises(ValueError, match="reg_max >= 2"):
        distribution_focal(torch.zeros(3, 1), torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gives_float32(dtype):
    x = torch.randn(4, 16).to(dtype)
    assert distribution_focal(x, torch.rand(4).to(dtype) * 10).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.linear(torch.randn(4, 64), torch.eye(64))
        assert h.dtype == torch.bfloat16
        assert distribution_focal(h.reshape(16, 16), torch.rand(16) * 10).dtype == torch.float32
