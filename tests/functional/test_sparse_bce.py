"""bce_with_sparse_targets: equals BCE with the dense target, by hand and by gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.functional.sparse_bce import bce_with_sparse_targets


def test_values_by_hand():
    x = torch.tensor([[[0.0, 2.0], [-1.0, 0.5]]])  # (1, 2, 2)
    index = (torch.tensor([0]), torch.tensor([1]), torch.tensor([1]))  # target 0.8 at [0, 1, 1]
    out = bce_with_sparse_targets(x, index, torch.tensor([0.8]))

    def bce(v: float, t: float) -> float:
        p = 1 / (1 + math.exp(-v))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expected = [[bce(0.0, 0), bce(2.0, 0)], [bce(-1.0, 0), bce(0.5, 0.8)]]
    assert out[0].flatten().tolist() == pytest.approx([v for row in expected for v in row], rel=1e-6)


def test_gradient_is_sigmoid_minus_target_and_gradcheck_passes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    index = (torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1]), torch.tensor([4, 0, 3]))
    values = torch.tensor([0.3, 0.9, 0.5], dtype=torch.float64)
    bce_with_sparse_targets(x, index, values).sum().backward()
    target = torch.zeros_like(x)
    target[index] = values
    torch.testing.assert_close(x.grad, torch.sigmoid(x.detach()) - target)
    weights = torch.rand(2, 3, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: bce_with_sparse_targets(z, index, values) * weights, (x,))


def test_strided_view_no_positives_and_bad_index():
    base = torch.randn(2, 7, 4, requires_grad=True)
    view = base.split((3, 4), 1)[1]  # (2, 4, 4), non-contiguous
    empty = (torch.zeros(0, dtype=torch.long),) * 3
    out = bce_with_sparse_targets(view, empty, torch.zeros(0))
    torch.testing.assert_close(out, torch.nn.functional.softplus(view))
    out.sum().backward()
    assert torch.equal(base.grad[:, :3], torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="index"):
        bce_with_sparse_targets(view, empty[:2], torch.zeros(0))
