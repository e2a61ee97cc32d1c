"""Balancers: closed-form optima and convergence on two linear terms; the trainer's exact resume with each."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from detloss import LossReport, make_term
from detloss.diagnose.gradients import term_grad_norms
from detloss.testing.tiny import TINY_RUN
from detloss.train.config import load_config
from detloss.weighting.balancers import (
    Balancer,
    EmaNormBalancer,
    GradNormBalancer,
    UncertaintyBalancer,
    _norms_and_losses,
    build_balancer,
)

ONE = torch.ones(())
U = torch.tensor([10.0, 0.0, 0.0])  # term a's gradient direction, |U| = 10
V = torch.tensor([0.0, 1.0, 0.0])  # term b's, |V| = 1


def _report(balancer: Balancer, loss_a: float = 1.0, loss_b: float = 1.0, base=None):
    """Two linear terms ``weight * (U.x + loss)``: gradient norms ``10 * w_a`` and ``w_b``, losses as given."""
    x = torch.zeros(3, requires_grad=True)
    w = balancer.weights(base or {"a": 1.0, "b": 1.0})
    a = make_term("a", [U * x, torch.tensor([loss_a])], ONE, "fixed", weight=w["a"])
    b = make_term("b", [V * x, torch.tensor([loss_b])], ONE, "fixed", weight=w["b"])
    return LossReport({"a": a, "b": b}), [x]


def _grad_ratio(balancer: Balancer) -> float:
    m = balancer.multipliers()
    return 10 * m["a"] / m["b"]


def test_term_grad_norms_are_the_weighted_norms_and_unweighted_losses():
    report, x = _report(Balancer(["a", "b"]), 3.0, 0.5, base={"a": 2.0, "b": 0.5})
    norms, losses = _norms_and_losses(report, x, ["a", "b"])
    assert norms.tolist() == pytest.approx([20.0, 0.5])
    assert term_grad_norms(report, x, ["b", "a"]).tolist() == pytest.approx([0.5, 20.0])
    assert losses.tolist() == pytest.approx([3.0, 0.5])  # raw_sum / normalizer: without the weight


def test_fixed_changes_nothing_and_leaves_unbalanced_terms_alone():
    b = build_balancer(load_config(None).balance, ["box", "cls"])
    assert type(b) is Balancer and not b.due(0) and b.regularizer(None) is None
    assert b.weights({"box": 7.5, "cls": 0.5}) == {"box": 7.5, "cls": 0.5}
    g = GradNormBalancer(["a"])
    g.m = [3.0]
    assert g.weights({"a": 2.0, "bg": 0.25}) == {"a": 6.0, "bg": 0.25}


# -- uncertainty --------------------------------------------------------------------------------


def _fit_uncertainty(losses: dict[str, float], bounds=(-4.0, 4.0), steps=1500):
    bal = UncertaintyBalancer(list(losses), bounds)
    opt = torch.optim.Adam(bal.parameters(), lr=0.05)
    lowest = math.inf
    for _ in range(steps):
        w = bal.weights(dict.fromkeys(losses, 1.0))
        report = LossReport({t: make_term(t, torch.tensor([v]), ONE, "fixed", weight=w[t]) for t, v in losses.items()})
        objective = report.total + bal.regularizer(report)
        lowest = min(lowest, objective.item())
        opt.zero_grad()
        objective.backward()
        opt.step()
    return bal, lowest


def test_uncertainty_optimum_is_log_of_the_loss():
    bal, _ = _fit_uncertainty({"a": 4.0, "b": 0.25})
    assert bal.log_vars().tolist() == pytest.approx([math.log(4.0), math.log(0.25)], abs=2e-3)
    m = {t: float(v.detach()) for t, v in bal.multipliers().items()}  # at the optimum exp(-s) L = 1
    assert m["a"] * 4.0 == pytest.approx(1.0, abs=3e-3)
    assert m["b"] * 0.25 == pytest.approx(1.0, abs=3e-3)
    assert set(bal.log()) == {"balance/s/a", "balance/s/b"}


def test_uncertainty_total_never_goes_below_its_bound():
    # unbounded, the optimum of exp(-s) 1e-6 + s is s = log 1e-6 = -13.8: the total would reach -12.8
    lo = -2.0
    bal, lowest = _fit_uncertainty({"a": 1e-6, "b": 1e-6}, bounds=(lo, 3.0), steps=600)
    assert lowest > 2 * lo
    s = bal.log_vars()
    assert (s > lo).all() and s.tolist() == pytest.approx([lo, lo], abs=0.05)


def test_uncertainty_starts_at_one_and_scales_with_the_report():
    bal = UncertaintyBalancer(["a", "b"], (-1.0, 5.0))
    assert bal.log_vars().tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    report, _ = _report(bal)
    report.scale = 3.0
    assert bal.regularizer(report).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="bounds"):
        UncertaintyBalancer(["a"], (0.5, 2.0))


# -- GradNorm -----------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [None, {"a": 1.0, "b": 2.0}])
def test_gradnorm_drives_two_linear_terms_to_the_target_ratio(targets):
    bal = GradNormBalancer(["a", "b"], targets=targets, alpha=1.5)
    want = 1.0 if targets is None else 0.5  # G_a : G_b; equal losses, so the training rates are equal
    for _ in range(100):
        bal.update(*_report(bal))
    assert _grad_ratio(bal) == pytest.approx(want, rel=0.06)  # the L1 step oscillates within lr * 2
    assert sum(bal.m) == pytest.approx(2.0)


def test_gradnorm_alpha_gives_the_slower_term_more_gradient():
    # L_a halves while L_b stays: r = (0.5, 1) / 0.75, so with alpha = 1 the targets are G_a : G_b = 1 : 2
    bal = GradNormBalancer(["a", "b"], alpha=1.0)
    bal.update(*_report(bal, 1.0, 1.0))  # records L(0)
    for _ in range(150):
        bal.update(*_report(bal, 0.5, 1.0))
    assert bal.initial == [1.0, 1.0]
    assert _grad_ratio(bal) == pytest.approx(0.5, rel=0.06)
    with pytest.raises(ValueError, match="alpha"):
        GradNormBalancer(["a"], alpha=-1.0)


# -- EMA of norms -------------------------------------------------------------------------------


def test_ema_norm_reaches_the_target_ratio_with_bounded_steps():
    bal = EmaNormBalancer(["a", "b"], targets={"a": 1.0, "b": 2.0}, max_step=2.0)
    ratios = [_grad_ratio(bal)]
    for _ in range(16):
        bal.update(*_report(bal))
        ratios.append(_grad_ratio(bal))
    steps = [later / earlier for earlier, later in zip(ratios, ratios[1:], strict=False)]
    assert all(0.25 - 1e-9 <= s <= 1.0 for s in steps)  # each multiplier moves <= 2x: the ratio <= 4x
    # first update: ideal m ∝ t / h = (2/3 / 10, 4/3 / 1), scaled to the current sum 2; a's step (log 0.095
    # / 2) is capped at 1/2, b moves half-way in log: m_b = sqrt(ideal_b); renormalizing keeps the ratio
    ideal = [2 / 3 / 10, 4 / 3]
    ideal_b = ideal[1] * 2 / sum(ideal)
    assert ratios[1] == pytest.approx(10 * 0.5 / math.sqrt(ideal_b))
    assert ratios[-1] == pytest.approx(0.5, rel=1e-3)
    assert bal.norms == pytest.approx([10.0, 1.0])  # the EMA of h = G / m, constant here
    assert sum(bal.m) == pytest.approx(2.0)


def test_measured_balancers_skip_terms_without_gradient():
    bal = EmaNormBalancer(["a", "b"], every_steps=3)
    assert [bal.due(s) for s in range(4)] == [True, False, False, True]
    bal.update(*_report(bal, base={"a": 1.0, "b": 0.0}))  # b's base weight is 0: no gradient to steer
    assert bal.norms[1] is None and bal.m == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="targets"):
        EmaNormBalancer(["a"], targets={"zz": 1.0})
    with pytest.raises(ValueError, match="max_step"):
        EmaNormBalancer(["a"], max_step=1.0)


def test_state_dict_round_trip():
    for make in (lambda: GradNormBalancer(["a", "b"]), lambda: EmaNormBalancer(["a", "b"])):
        bal = make()
        for _ in range(3):
            bal.update(*_report(bal, 2.0, 1.0))
        copy = make()
        copy.load_state_dict(bal.state_dict())
        assert copy.m == bal.m and copy.get_extra_state() == bal.get_extra_state()


def test_build_balancer_from_config_checks_terms():
    cfg = load_config(None, ["balance.kind=ema_norm", "balance.targets={cls: 2}"]).balance
    bal = build_balancer(cfg, ["box", "cls", "dfl"])
    assert isinstance(bal, EmaNormBalancer) and bal.every_steps == 10 and bal.targets["cls"] == 2.0
    with pytest.raises(ValueError, match="balance.terms"):
        build_balancer(load_config(None, ["balance.terms=[poly]"]).balance, ["box", "cls"])
    with pytest.raises(ValueError, match="targets"):
        build_balancer(load_config(None, ["balance.kind=gradnorm", "balance.targets={zz: 1}"]).balance, ["box"])


# -- in the trainer -----------------------------------------------------------------------------

TINY = [*TINY_RUN, "log_every=1", "epochs=2", "optim.ema_decay=0.9", "optim.warmup_steps=2"]


@pytest.mark.parametrize(
    "balance",
    [
        ["balance.kind=uncertainty", "balance.log_var_lr=0.05"],
        ["balance.kind=gradnorm", "balance.every_steps=2"],
        ["balance.kind=ema_norm", "balance.every_steps=2", "doctor.every_steps=2"],
    ],
    ids=["uncertainty", "gradnorm", "ema_norm"],
)
def test_resume_with_a_balancer_continues_exactly(tmp_path: Path, balance):
    from detloss.train.logs import read_csv
    from detloss.train.trainer import Trainer

    def config(name: str, steps: int):
        return load_config(None, [*TINY, *balance, f"out_dir={tmp_path / name}", f"max_steps={steps}"])

    straight = Trainer(config("a", 6))
    straight.fit()
    Trainer(config("b", 3)).fit()  # stops mid-epoch 1 (4 steps per epoch) and writes last.pt
    resumed = Trainer(config("b", 6), resume=tmp_path / "b" / "last.pt")
    resumed.fit()
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    for key, value in straight.balancer.state_dict().items():
        other = resumed.balancer.state_dict()[key]
        assert torch.equal(value, other) if torch.is_tensor(value) else value == other, key

    rows = read_csv(tmp_path / "a" / "steps.csv")
    weights = [r["poly/weight"] for r in rows]
    assert weights[0] == pytest.approx(7.5) and len(set(weights)) > 1  # logged every step, and moving
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows == read_csv(tmp_path / "b" / "steps.csv")  # the logs of the resumed run agree too
    if "doctor.every_steps=2" in balance:
        doctor = read_csv(tmp_path / "a" / "doctor.csv")
        assert [r["step"] for r in doctor] == [1, 3, 5] and all(r["seconds"] > 0 for r in doctor)
        assert sum(doctor[0][f"{t}/grad_share"] for t in ("box", "cls", "dfl", "poly", "corner")) == pytest.approx(1.0)
