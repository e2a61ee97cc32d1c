"""MGIoU+ convexity penalty worked out on paper: mean reflex turn over mean squared edge length.

``penalty = mean_i relu(-s * cross_i) / mean_i |v_next - v_i|^2`` over the valid vertices, with
``cross_i = (v_i - v_prev) x (v_next - v_i)`` and ``s`` the sign of the signed area.

Dart (0, 0), (2, 1), (4, 0), (2, 4): shoelace 0 - 4 + 16 + 0 = 12 > 0, so ``s = +1``. The turns are
    (0, 0): (-2, -4) x (2, 1) = -2 + 8 = 6;   (2, 1): (2, 1) x (2, -1) = -2 - 2 = -4 (reflex);
    (4, 0): (2, -1) x (-2, 4) = 8 - 2 = 6;    (2, 4): (-2, 4) x (-2, -4) = 8 + 8 = 16.
Reflex mean 4 / 4 = 1; squared edges 5, 5, 20, 20, mean 12.5: penalty 1 / 12.5 = 2 / 25.

Pentagon (0, 0), (4, 0), (4, 4), (2, 1), (0, 4): shoelace 0 + 16 - 4 + 8 + 0 = 20 > 0; turns 16, 16, 8,
    (2, 1): (-2, -3) x (-2, 3) = -6 - 6 = -12 (reflex), 8.
Reflex mean 12 / 5; squared edges 16, 16, 13, 13, 16, mean 74 / 5: penalty 12 / 74 = 6 / 37.
"""

from __future__ import annotations

import pytest
import torch

from detloss.functional.polygon import convexity_penalty, mgiou_loss

DART = [[0.0, 0.0], [2.0, 1.0], [4.0, 0.0], [2.0, 4.0]]
PENTAGON = [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [2.0, 1.0], [0.0, 4.0]]


def poly(points, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([points], dtype=dtype)


@pytest.mark.parametrize(("points", "expected"), [(DART, 2 / 25), (PENTAGON, 6 / 37)], ids=["dart", "pentagon"])
def test_penalty_of_the_hand_worked_polygons(points, expected):
    p = poly(points)
    assert convexity_penalty(p).item() == pytest.approx(expected, rel=1e-12)
    assert convexity_penalty(p.flip(1)).item() == pytest.approx(expected, rel=1e-12)  # clockwise order
    assert convexity_penalty(p.roll(2, 1)).item() == pytest.approx(expected, rel=1e-12)  # another start
    assert convexity_penalty(poly(points, torch.float32)).item() == pytest.approx(expected, rel=1e-6)


def test_padded_batch_averages_over_each_polygons_valid_vertices():
    dart = DART + [[9.0, 9.0]]  # a fifth, padded vertex far away: must not enter either mean
    batch = torch.tensor([dart, PENTAGON], dtype=torch.float64)
    counts = torch.tensor([4, 5])
    assert convexity_penalty(batch, counts).tolist() == pytest.approx([2 / 25, 6 / 37], rel=1e-12)


def test_mgiou_plus_adds_the_weighted_penalty():
    # a polygon against itself: MGIoU 1, so the MGIoU+ loss is the weighted penalty alone
    batch = torch.tensor([DART + [DART[-1]], PENTAGON], dtype=torch.float64)
    counts = torch.tensor([4, 5])
    loss = mgiou_loss(batch, batch, counts, counts, convexity_weight=0.5)
    assert loss.tolist() == pytest.approx([0.5 * 2 / 25, 0.5 * 6 / 37], rel=1e-12)
