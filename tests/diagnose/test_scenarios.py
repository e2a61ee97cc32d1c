"""Scenario tests of the loss doctor (issue 6, section 5) not covered elsewhere.

(a) GRAD_DOMINANCE, (c) NONFINITE and (e) the default configuration are in test_findings.py /
test_gradients.py / test_doctor_cli.py; this file reproduces report 001's hard mask over padded
vertices, (b) -> DEAD_GRADIENT. (d) DETECTION_COLLAPSE from a background penalty is not here: on a
tiny CPU run (64 px, width 8, 32 images, 14-16 epochs) a `max`/`focal` penalty of 100-5000 switched on
at epoch 8-10 did not make val/dets_per_image collapse reliably (it dipped, then recovered).
"""

from __future__ import annotations

import math

import torch

from detloss.diagnose import check_dead, gradient_accounting
from detloss.functional import mgiou_loss
from detloss.report import LossReport, make_term

K = 8


def _padded_polygons(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets: triangles and quads on a circle, padded to K vertices with zeros; predictions: noisy
    copies whose padded slots hold arbitrary (network-like) values. Returns pred, target, valid."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor([3, 4] * (n // 2) + [3] * (n % 2))
    valid = torch.arange(K)[None, :] < counts[:, None]  # (n, K)
    angle = 2 * math.pi * torch.arange(K)[None, :] / counts[:, None] + torch.rand(n, 1, generator=gen)
    radius = 1.0 + torch.rand(n, 1, generator=gen)
    center = 4 * torch.rand(n, 1, 2, generator=gen)
    target = center + radius[..., None] * torch.stack([angle.cos(), angle.sin()], -1)
    target = torch.where(valid[..., None], target, torch.zeros(()))
    pred = target + 0.3 * torch.randn(n, K, 2, generator=gen)  # padded slots: whatever the head says
    return pred.requires_grad_(True), target, valid


def _buggy_axis_giou_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Report 001's polygon loss, bug included: 1-D GIoU on the normals of all K edges of both padded
    polygons, then ``giou1d * mask`` with the binary edge-validity mask, divided by the clamped count.
    The masked axes (and the padded vertices, which only they involve) get exactly zero gradient."""
    nxt = torch.roll(torch.arange(K), -1)
    edge_valid = valid & valid[:, nxt]  # (N, K): both endpoints real

    def normals(poly: torch.Tensor) -> torch.Tensor:
        e = poly[:, nxt] - poly
        n = torch.stack([-e[..., 1], e[..., 0]], -1)
        return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-6)

    axes = torch.cat([normals(pred), normals(target)], 1)  # (N, 2K, 2)
    mask = torch.cat([edge_valid, edge_valid], 1).float()  # (N, 2K)
    big = torch.tensor(1e4)

    def interval(poly: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        proj = torch.einsum("nkd,nad->nak", poly, axes)  # (N, 2K axes, K vertices)
        lo = torch.where(valid[:, None, :], proj, big).amin(-1)
        hi = torch.where(valid[:, None, :], proj, -big).amax(-1)
        return lo, hi

    plo, phi = interval(pred)
    glo, ghi = interval(target)
    inter = (torch.minimum(phi, ghi) - torch.maximum(plo, glo)).clamp(min=0)
    union = (phi - plo) + (ghi - glo) - inter
    hull = torch.maximum(phi, ghi) - torch.minimum(plo, glo)
    union, hull = union.clamp(min=1e-9), hull.clamp(min=1e-9)  # degenerate (padded) axes stay finite
    giou1d = inter / union - (hull - union) / hull
    giou = (giou1d * mask).sum(1) / mask.sum(1).clamp(min=1)  # the hard masked mean over padded axes
    return (1 - giou) / 2


def test_b_hard_mask_over_padded_vertices_is_dead_gradient():
    pred, target, valid = _padded_polygons(12)
    one = torch.ones(())
    buggy = _buggy_axis_giou_loss(pred, target, valid)
    healthy = mgiou_loss(pred, target, pred_valid=valid, target_valid=valid)
    assert torch.isfinite(buggy).all() and torch.isfinite(healthy).all()
    report = LossReport(
        {
            "axis_giou": make_term("axis_giou", buggy, one * len(buggy), "fixed"),
            "mgiou": make_term("mgiou", healthy, one * len(healthy), "fixed"),
        }
    )
    every = torch.ones_like(pred, dtype=torch.bool)  # the buggy loss is fed all K predicted vertices
    real = valid[..., None].expand_as(pred)  # mgiou with pred_valid depends on the real vertices only
    account = gradient_accounting(report, [pred], depends={"axis_giou": [every], "mgiou": [real]})

    # at least every padded coordinate (5/8 of a triangle's, 4/8 of a quad's) is dead in the buggy term
    padded = 1 - valid.sum().item() / valid.numel()
    assert account.dead["axis_giou"] >= padded > 0.5
    assert account.dead["mgiou"] < 0.1
    assert account.norms["axis_giou"] > 0 and account.norms["mgiou"] > 0

    findings = check_dead(account)
    assert [(f.code, f.term) for f in findings] == [("DEAD_GRADIENT", "axis_giou")]
    assert findings[0].numbers["dead_fraction"] == account.dead["axis_giou"]
    assert "mask" in findings[0].fix
