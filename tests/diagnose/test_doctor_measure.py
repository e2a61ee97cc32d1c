"""Saturation of the MGIoU per-axis 1-D GIoU at ±1 (hand-built polygons), in the Doctor's dense
measurement, and the Doctor's generic ``measure_outputs`` on a two-term toy (hand-computed norms)."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import DenseCriterion, LossReport, make_term
from detloss.data.synthetic import random_feats, random_targets
from detloss.diagnose.dense import axis_giou_saturation, polygon_axis_saturation
from detloss.diagnose.doctor import Doctor
from detloss.functional.polygon import axis_giou, mgiou
from detloss.train.doctor import read_measurements
from detloss.train.logs import CsvLog

D = 1e7  # far apart: 1-D GIoU = -(gap) / hull = -1 + O(1 / D) on every axis
TRIANGLE = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def _rectangle(x0: float, y0: float, w: float, h: float) -> list[list[float]]:
    return [[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]


def _giou1d(p: tuple[float, float], g: tuple[float, float]) -> float:
    """The paper's 1-D GIoU of two intervals, by hand: IoU - (C - U) / C."""
    inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
    union = (p[1] - p[0]) + (g[1] - g[0]) - inter
    hull = max(p[1], g[1]) - min(p[0], g[0])
    return inter / union - (hull - union) / hull


def _interval(points: list[list[float]], axis: tuple[float, float]) -> tuple[float, float]:
    proj = [axis[0] * x + axis[1] * y for x, y in points]
    return min(proj), max(proj)


def test_identical_polygons_are_at_plus_one_on_every_axis():
    hexagon = [[math.cos(a), math.sin(a)] for a in (2 * math.pi * i / 6 + 0.3 for i in range(6))]
    pred = torch.tensor([hexagon])
    target = pred.roll(2, dims=1)  # same polygon, vertex list rotated
    giou, valid = axis_giou(pred, target)
    assert giou.shape == (1, 12) and valid.all()
    assert torch.allclose(giou, torch.ones(1, 12), atol=1e-6)
    assert axis_giou_saturation(giou, valid) == (1.0, 0.0)
    # padded target: a triangle in 6 slots; pred: the triangle with its first vertex repeated
    tri = torch.tensor(TRIANGLE)
    pred = torch.cat([tri, tri[:1].expand(3, 2)])[None]
    target = torch.cat([tri, torch.full((3, 2), 9.0)])[None]  # padded slots hold junk
    giou, valid = axis_giou(pred, target, target_valid=torch.tensor([3]))
    # pred's edges 0, 1 and 2 (back to vertex 0) exist; 3..5 have zero length; target's 0..2 exist
    assert valid.tolist() == [[True, True, True, False, False, False, True, True, True, False, False, False]]
    assert torch.equal(giou[valid], torch.ones(6))
    assert float(mgiou(pred, target, target_valid=torch.tensor([3]))) == 1.0


def test_far_apart_polygons_are_near_minus_one_by_hand():
    rect = _rectangle(D, D, 2.0, 3.0)
    pred = torch.tensor([TRIANGLE], dtype=torch.float64)
    target = torch.tensor([rect], dtype=torch.float64)
    giou, valid = axis_giou(pred, target)
    assert valid.tolist() == [[True] * 7]
    # axes: normals (-e_y, e_x) of pred's edges, then of target's
    axes = [(0.0, 1.0), (-1.0, -1.0), (1.0, 0.0), (0.0, 2.0), (-3.0, 0.0), (0.0, -2.0), (3.0, 0.0)]
    for a, axis in enumerate(axes):
        want = _giou1d(_interval(TRIANGLE, axis), _interval(rect, axis))
        assert float(giou[0, a]) == pytest.approx(want, rel=1e-12, abs=1e-12), a
    # e.g. on the diagonal normal (-1, -1): [-1, 0] vs [-2D - 5, -2D]: gap 2D - 1, hull 2D + 5
    assert float(giou[0, 1]) == pytest.approx(-(2 * D - 1) / (2 * D + 5), rel=1e-12)
    assert float(giou[0, 0]) == pytest.approx(-(D - 1) / (D + 3), rel=1e-12)  # y: [0, 1] vs [D, D + 3]
    assert (giou > -1).all() and (giou <= -1 + 1e-6).all()
    assert axis_giou_saturation(giou, valid) == (0.0, 1.0)


def test_saturation_fractions_over_a_mixed_batch():
    near = _rectangle(1.5, 0.0, 2.0, 3.0)  # 10 apart: far from -1 (e.g. x: [0, 1] vs [1.5, 3.5]: -0.5/3.5)
    pred = torch.tensor([_rectangle(0, 0, 1, 1), _rectangle(0, 0, 1, 1), _rectangle(0, 0, 1, 1)], dtype=torch.float64)
    target = torch.tensor([_rectangle(0, 0, 1, 1), _rectangle(D, D, 2, 3), near], dtype=torch.float64)
    giou, valid = axis_giou(pred, target)
    assert valid.all() and giou.shape == (3, 8)
    # pair 0: 8 axes at +1; pair 1: 8 axes at -1 + O(1e-7); pair 2: x axes -0.5/3.5 = -1/7, y axes 1/3
    assert float(giou[2, 1]) == pytest.approx(-1 / 7) and float(giou[2, 0]) == pytest.approx(1 / 3)
    plus, minus = axis_giou_saturation(giou, valid)
    assert (plus, minus) == (8 / 24, 8 / 24)
    plus, minus = axis_giou_saturation(giou, valid & torch.tensor([[True], [False], [True]]))
    assert (plus, minus) == (8 / 16, 0.0)
    assert all(math.isnan(v) for v in axis_giou_saturation(giou, torch.zeros_like(valid)))
    with pytest.raises(ValueError, match="tol"):
        axis_giou_saturation(giou, valid, tol=1.0)
    with pytest.raises(ValueError, match="valid"):
        axis_giou_saturation(giou, valid[:, :3])


def _dense(**kw):
    strides = (8, 16, 32)
    crit = DenseCriterion(3, strides, 4, num_vertices=6, **kw)
    feats = random_feats(2, crit.num_channels, 64, strides, seed=1)
    targets = random_targets(2, 3, 4, num_vertices=6, seed=1)
    return crit, feats, targets


def _predict_the_targets(crit, feats, targets) -> list[torch.Tensor]:
    """feats whose polygon channels put each weighted positive's K vertices on its target polygon
    (padded slots: copies of the first vertex), so every valid axis has GIoU1D 1 (up to rounding)."""
    t = crit.assign(feats, targets)
    k, lo = crit.num_vertices, 4 * crit.reg_max + crit.num_classes
    valid = t.polygon_valid
    first = t.polygons[:, :1].expand_as(t.polygons)
    filled = torch.where(valid[..., None], t.polygons, first)  # (P, K, 2) grid units
    offsets = (filled - t.points[:, None, :]).reshape(-1, 2 * k)  # (P, 2K)
    sizes = [f.shape[2] * f.shape[3] for f in feats]
    flat = torch.cat([f.detach().flatten(2) for f in feats], 2).clone()  # (B, ch, A)
    flat[t.image, lo : lo + 2 * k, t.anchor] = offsets
    pieces = zip(flat.split(sizes, 2), feats, strict=True)
    out = [piece.reshape_as(f).clone().requires_grad_(True) for piece, f in pieces]
    assert torch.equal(crit.assign(out, targets).fg, t.fg)  # the polygon channels do not move the assignment
    return out


def test_doctor_measure_reports_per_axis_giou_saturation_of_the_polygon_branch(tmp_path):
    crit, feats, targets = _dense()
    doctor = Doctor(sink=CsvLog(tmp_path / "doctor.csv").write)
    m = doctor.measure(1, crit(feats, targets), feats, crit, targets)
    assert set(m.account.saturated) == {"cls", "poly_axis_giou_pos", "poly_axis_giou_neg"}
    assert m.account.saturated["poly_axis_giou_pos"] == 0.0  # random offsets: no axis exact
    assert m.account.saturated["poly_axis_giou_neg"] == 0.0  # nor far apart

    exact = _predict_the_targets(crit, feats, targets)
    m = doctor.measure(2, crit(exact, targets), exact, crit, targets)
    assert m.account.saturated["poly_axis_giou_pos"] == 1.0
    assert m.account.saturated["poly_axis_giou_neg"] == 0.0
    assert "poly_axis_giou_pos: 100.00% of (positive, axis) pairs with a per-axis GIoU at +1" in m.account.table()
    assert polygon_axis_saturation(crit, exact, targets) == {"poly_axis_giou_pos": 1.0, "poly_axis_giou_neg": 0.0}

    back = read_measurements(tmp_path / "doctor.csv")
    assert [r.step for r in back] == [1, 2]
    assert back[1].account.saturated == pytest.approx(m.account.saturated)

    # no per-axis GIoU in an L1 polygon loss, nor without a polygon branch
    l1, feats, targets = _dense(polygon_loss="l1")
    assert polygon_axis_saturation(l1, feats, targets) == {}
    assert set(Doctor().measure(1, l1(feats, targets), feats, l1, targets).account.saturated) == {"cls"}


def test_measure_outputs_on_a_two_term_toy(tmp_path):
    x = torch.randn(4, requires_grad=True)
    y = torch.randn(2, requires_grad=True)
    u = torch.tensor([0.0, 3.0, 0.0, 4.0])  # |u| = 5
    one = torch.ones(())
    # a = 2 * (u . x) / 5: gradient 0.4 u w.r.t. x (norm 2); b = (y0 + 2 * y1 + sum x) / 1, scale 2 below
    report = LossReport(
        {
            "rpn": make_term("rpn", u * x, 5 * one, "fixed", weight=2.0),
            "roi": make_term("roi", [y * torch.tensor([1.0, 2.0]), x], one, "sum"),
        },
        scale=2.0,
    )
    every = torch.ones(4, dtype=torch.bool)
    logits = torch.tensor([20.0, -1.0, -16.0, 3.0])
    doctor = Doctor(sink=CsvLog(tmp_path / "doctor.csv").write)
    m = doctor.measure_outputs(7, report, [x, y], depends={"rpn": [every, None]}, saturation_logits={"obj": logits})
    a = m.account
    assert m.step == 7 and m.seconds > 0 and doctor.measurements == [m]
    assert a.norms["rpn"] == pytest.approx(2.0 * 0.4 * 5)  # scale 2 x |0.4 u|
    assert a.norms["roi"] == pytest.approx(2.0 * math.sqrt(1 + 4 + 4))  # scale 2 x |(1, 1, 1, 1, 1, 2)|
    assert a.shares["rpn"] == pytest.approx(4 / (4 + 6))
    assert a.dead == {"rpn": 0.5}  # u has two zeros: x0 and x2 get exactly nothing from rpn
    assert a.saturated == {"obj": 0.5}  # 20 and -16 beyond ±15
    assert a.weights == {"rpn": 2.0, "roi": 1.0}
    (row,) = read_measurements(tmp_path / "doctor.csv")
    assert row.step == 7 and row.account.norms == pytest.approx(a.norms) and row.account.dead == pytest.approx(a.dead)
    # no masks, no logits: norms only
    bare = Doctor().measure_outputs(1, report, [x, y]).account
    assert bare.dead == {} and bare.saturated == {} and bare.norms == pytest.approx(a.norms)
