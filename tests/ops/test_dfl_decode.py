"""DFL decoding and entropy of the side distributions against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.ops.dfl import dfl_decode, dfl_entropy

OFF = -1e4  # a logit whose softmax weight is exactly 0 in float32
INF = float("inf")


def test_decode_hand():
    # side 0: logits (0, log 3) over 2 bins -> p = (1/4, 3/4) -> 0.75; others one-hot-ish / uniform
    x = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0, 0.0, math.log(9.0), -100.0, 100.0]], dtype=torch.float64)
    out = dfl_decode(x, reg_max=2)
    assert out.tolist()[0] == pytest.approx([0.75, 0.5, 0.9, 1.0], rel=1e-12)
    uniform = dfl_decode(torch.zeros(2, 5, 4 * 16))
    assert uniform.shape == (2, 5, 4)
    assert torch.allclose(uniform, torch.full((2, 5, 4), 7.5))


def test_decode_layout_is_side_major():
    x = torch.full((1, 4 * 16), -50.0)
    for side, k in enumerate([3, 0, 15, 7]):
        x[0, side * 16 + k] = 50.0
    assert dfl_decode(x).tolist()[0] == pytest.approx([3.0, 0.0, 15.0, 7.0], abs=1e-4)


def test_decode_empty():
    d = torch.zeros(0, 64, requires_grad=True)
    dec = dfl_decode(d)
    assert dec.shape == (0, 4)
    dec.sum().backward()
    assert d.grad.shape == (0, 64)


def test_decode_bad_input():
    with pytest.raises(ValueError, match=r"pred_dist must have shape \(\.\.\., 4\*reg_max\)"):
        dfl_decode(torch.zeros(2, 63))
    with pytest.raises(ValueError, match="pred_dist"):
        dfl_decode(torch.zeros(2, 64), reg_max=8)
    with pytest.raises(ValueError, match="pred_dist"):
        dfl_decode(torch.zeros(2, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"pred_dist must have shape 4\*reg_max entries in dim 1"):
        dfl_decode(torch.zeros(2, 12, 5), reg_max=4, dim=1)
    with pytest.raises(ValueError, match="pred_dist"):
        dfl_decode(torch.zeros(2, 8), dim=2)


def test_decode_level_channels_first_by_hand():
    # one level (B=1, 4R=8, HW=2): anchor 0 has sides (0.75, 0.5, 0.9, 1.0) as in test_decode_hand,
    # anchor 1 has every side one-hot on bin 0 -> 0
    row = [0.0, math.log(3.0), 0.0, 0.0, 0.0, math.log(9.0), -100.0, 100.0]
    x = torch.tensor([row, [0.0, -100.0] * 4], dtype=torch.float64).T[None]  # (1, 8, 2)
    out = dfl_decode(x, reg_max=2, dim=1)
    assert out.shape == (1, 4, 2)
    assert out[0, :, 0].tolist() == pytest.approx([0.75, 0.5, 0.9, 1.0], rel=1e-12)
    assert out[0, :, 1].tolist() == pytest.approx([0.0] * 4, abs=1e-40)


def test_decode_one_bin_is_the_distance_itself():
    # reg_max = 1 heads regress ltrb directly: a softmax over one bin would always give 0
    x = torch.tensor([[1.5, 0.0, 2.25, 7.0]], dtype=torch.float16)
    out = dfl_decode(x, reg_max=1)
    assert out.dtype == torch.float32 and out.tolist() == [[1.5, 0.0, 2.25, 7.0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_decode_low_precision_gives_float32(dtype):
    assert dfl_decode(torch.randn(4, 64).to(dtype)).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.linear(torch.randn(4, 64), torch.eye(64))
        assert h.dtype == torch.bfloat16
        assert dfl_decode(h).dtype == torch.float32


def test_entropy_one_hot_is_exactly_zero_and_uniform_is_one():
    r = 8
    one_hot = torch.full((4, r), -INF)
    one_hot[:, 3] = 0.0
    underflow = torch.full((4, r), OFF)
    underflow[:, 5] = 0.0
    for logits in (one_hot, underflow):
        h = dfl_entropy(logits, r)
        assert h.shape == ()
        assert h.item() == 0.0  # exactly, not approximately
    uniform = torch.zeros(4 * r)
    assert abs(dfl_entropy(uniform, r).item() - 1.0) <= 1e-6
    assert abs(dfl_entropy(torch.full((4, r), 7.5), r).item() - 1.0) <= 1e-6  # shift invariant


def test_entropy_two_bins_by_hand():
    # p = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351 nats, / ln 2 = 0.8112781
    h2 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0], [0.0, -INF], [0.0, 0.0]])
    expected = (h2 + h2 + 0.0 + 1.0) / 4
    torch.testing.assert_close(dfl_entropy(logits, 2), torch.tensor(expected))
    torch.testing.assert_close(dfl_entropy(logits.flatten(), 2), torch.tensor(expected))  # side-major flat
    # leading dims are kept: (2, 3, 4, 2) -> (2, 3)
    batch = logits.expand(2, 3, 4, 2)
    torch.testing.assert_close(dfl_entropy(batch, 2), torch.full((2, 3), expected))
    torch.testing.assert_close(dfl_entropy(batch.flatten(-2), 2), torch.full((2, 3), expected))


def test_entropy_gradient_is_finite_with_minus_inf_logits():
    logits = torch.tensor([[0.0, -INF, 1.0], [0.0, 0.0, 0.0], [2.0, -INF, -INF], [0.5, 0.0, -1.0]], requires_grad=True)
    h = dfl_entropy(logits, 3)
    assert torch.isfinite(h)
    h.backward()
    assert torch.isfinite(logits.grad).all()


def test_entropy_empty_and_bad_inputs():
    assert dfl_entropy(torch.zeros(0, 16), 4).shape == (0,)
    assert dfl_entropy(torch.zeros(0, 4, 4), 4).shape == (0,)
    with pytest.raises(ValueError, match="reg_max"):
        dfl_entropy(torch.zeros(4), 1)
    with pytest.raises(ValueError, match=r"dfl_logits must have shape \(\.\.\., 4, 4\) or \(\.\.\., 16\)"):
        dfl_entropy(torch.zeros(3, 12), 4)
    with pytest.raises(ValueError, match="dfl_logits"):
        dfl_entropy(torch.zeros(16, dtype=torch.long), 4)
