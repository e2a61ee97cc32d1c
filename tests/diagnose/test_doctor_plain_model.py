"""The doctor on a plain PyTorch model with a hand-written loss dict: no detloss criterion, no trainer.

Two ``nn.Linear`` heads on the same input ``x = [[1, 2], [3, 4]]``; the losses are linear in each head's
output, so their gradients w.r.t. the parameters do not depend on the weights and are worked by hand:

- ``box = 10 * mean(box_head(x))``: ``d/dW = 10 * mean(x, 0) = (20, 30)``, ``d/db = 10``;
  norm ``sqrt(400 + 900 + 100) = sqrt(1400)``;
- ``cls = 0.5 * mean(cls_head(x))``: ``d/dW = (1, 1.5)``, ``d/db = 0.5``; norm ``sqrt(3.5)``.

Ratio ``sqrt(1400 / 3.5) = 20``; box's share ``20 / 21 = 0.952`` > 0.9: ``GRAD_DOMINANCE`` of box. The
wrapped terms have weight 1, so 1:1 needs cls's weight ``1 * 20 = 20`` or box's ``1 / 20 = 0.05``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detloss.core.report import LossReport
from detloss.diagnose.doctor import Doctor, Measurement

X = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.box = nn.Linear(2, 1)
        self.cls = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"box": 10 * self.box(x).mean(), "cls": 0.5 * self.cls(x).mean()}


def test_grad_dominance_on_two_linear_heads_by_hand():
    model = TwoHeads()
    doctor = Doctor()
    m = doctor.observe(1, model(X), wrt=model, normalizers={"cls": "target_sum"})
    a = m.account
    assert a.norms["box"] == pytest.approx(math.sqrt(1400.0), rel=1e-6)
    assert a.norms["cls"] == pytest.approx(math.sqrt(3.5), rel=1e-6)
    assert a.shares["box"] == pytest.approx(20 / 21, rel=1e-6)
    assert a.ratios[("box", "cls")] == pytest.approx(20.0, rel=1e-6)
    assert a.weights == {"box": 1.0, "cls": 1.0} and a.normalizers == {"box": "unknown", "cls": "target_sum"}

    (f,) = [f for f in doctor.findings() if f.code == "GRAD_DOMINANCE"]
    assert f.term == "box" and f.numbers["share"] == pytest.approx(20 / 21, rel=1e-6)
    assert f.numbers["cls/weight"] == pytest.approx(20.0, rel=1e-6)  # 1 * sqrt(1400) / sqrt(3.5)
    assert f.numbers["box/weight_vs_cls"] == pytest.approx(0.05, rel=1e-6)  # 1 * sqrt(3.5) / sqrt(1400)
    # in the loss's own terms, not a configuration key
    assert "raise the weight of cls ×20 (1 → 20)" in f.fix and "lower box's weight to 0.05" in f.fix
    assert "change box's normalizer from unknown to one 20× larger" in f.fix
    assert "loss.weights" not in f.fix
    # the recommended weight does what it says: cls's gradient is linear in its weight
    assert nn.utils.parameters_to_vector(
        torch.autograd.grad(f.numbers["cls/weight"] * model(X)["cls"], list(model.cls.parameters()))
    ).norm() == pytest.approx(a.norms["box"], rel=1e-5)


def test_observe_takes_a_report_tensors_or_parameters_and_records_the_losses():
    model = TwoHeads()
    losses = model(X)
    report = LossReport.from_losses(losses)
    doctor = Doctor()
    by_params = doctor.observe(3, report, wrt=list(model.parameters()))
    assert by_params.account.norms == pytest.approx({"box": math.sqrt(1400.0), "cls": math.sqrt(3.5)}, rel=1e-6)
    # w.r.t. one head's weight only: box's (20, 30), cls's none
    one = doctor.observe(4, report, wrt=model.box.weight).account
    assert one.norms == pytest.approx({"box": math.sqrt(1300.0), "cls": 0.0}, rel=1e-6)
    assert doctor.observe(5, {"box": losses["box"]}) is None  # losses only
    rows = []
    Doctor(sink=rows.append).observe(6, losses, wrt=model)
    (row,) = rows
    assert row["box/grad_norm"] == pytest.approx(math.sqrt(1400.0), rel=1e-6)
    assert math.isnan(row["box/normalizer"])  # a wrapped value's D is unknown, not 1
    back = Measurement.from_row(row)
    assert back.step == 6 and back.account.norms == pytest.approx({"box": math.sqrt(1400.0), "cls": math.sqrt(3.5)})
    assert [r["step"] for r in doctor.rows] == [3, 4, 5]
    assert doctor.rows[0]["box"] == pytest.approx(float(losses["box"].detach()))
    assert [m.step for m in doctor.measurements] == [3, 4]


def test_observe_rejects_bad_input():
    model = TwoHeads()
    doctor = Doctor()
    with pytest.raises(ValueError, match="losses\\['box'\\] must be a 0-dim tensor, got \\(2, 1\\)"):
        doctor.observe(1, {"box": model.box(X)}, wrt=model)
    with pytest.raises(ValueError, match="normalizers has terms \\['dfl'\\]"):
        doctor.observe(1, model(X), wrt=model, normalizers={"dfl": "num_pos"})
    with pytest.raises(ValueError, match="wrt must be a module, a tensor or an iterable"):
        doctor.observe(1, model(X), wrt=3)
    with pytest.raises(ValueError, match="wrt\\[0\\] must be a tensor that requires grad"):
        doctor.observe(1, model(X), wrt=[X])
    frozen = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="has no parameter that requires grad"):
        doctor.observe(1, model(X), wrt=frozen)
    assert doctor.rows == [] and doctor.measurements == []  # bad input records nothing


def test_from_losses_wraps_a_loss_vector_with_names():
    vec = torch.tensor([0.5, 2.0, 0.25], requires_grad=True)
    report = LossReport.from_losses(vec * 2, names=["box", "cls", "dfl"], normalizers={"cls": "num_pos"})
    assert list(report) == ["box", "cls", "dfl"] and float(report.total.detach()) == 5.5
    report.total.backward()
    assert vec.grad.tolist() == [2.0, 2.0, 2.0]
    flat = report.as_dict()
    assert flat["cls/raw_sum"] == 4.0 and flat["cls/normalizer"] == 1.0 and flat["cls/weight"] == 1.0
    assert math.isnan(flat["cls/num_pos"]) and report["cls"].normalizer_name == "num_pos"
    assert report["box"].normalizer_name == "unknown" and report["box"].wrapped
    with pytest.raises(ValueError, match="one name per entry in names"):
        LossReport.from_losses(vec, names=["box"])
    with pytest.raises(ValueError, match="non-empty dict"):
        LossReport.from_losses({})
