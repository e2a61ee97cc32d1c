"""polygon_map with a degenerate ground-truth polygon: nothing but the same point set matches it."""

from __future__ import annotations

import torch

from detloss.evaluate.coco import polygon_map

# a pentagon of radius 1e-3 around (1, 0) stored as a 7-gon with two repeated vertices
SMALL_7GON = [
    [1.000999257716433, 3.8522930173500475e-05],
    [1.0006200900721618, 0.0007845306255376599],
    [1.0006200900721618, 0.0007845306255376599],
    [0.9994659324846635, 0.0008454418306792507],
    [0.9994625431129196, 0.0008432912275897604],
    [0.9990002387777194, 2.1851737320063804e-05],
    [0.9990002387777194, 2.1851737320063804e-05],
]


def test_degenerate_ground_truth_matches_only_the_same_point_set() -> None:
    """A GT of 7 copies of the origin: the small 7-gon far from it had polygon IoU 1.8e14 with it and was
    counted as a true positive (AP 1); it is a false positive (AP 0). The very same point set has IoU 1."""
    gt = {"polygons": torch.zeros(1, 7, 2, dtype=torch.float64), "labels": torch.tensor([0])}
    far = {"polygons": torch.tensor([SMALL_7GON], dtype=torch.float64), "scores": torch.tensor([0.9])}
    same = {"polygons": torch.zeros(1, 3, 2, dtype=torch.float64), "scores": torch.tensor([0.9])}
    assert polygon_map([{**far, "labels": torch.tensor([0])}], [gt])["map"] == 0.0
    assert polygon_map([{**same, "labels": torch.tensor([0])}], [gt])["map"] > 0.99
