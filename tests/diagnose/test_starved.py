"""GRAD_STARVED: a term whose gradient norm is over ``ratio`` times smaller than another's, and the weight or
normalizer that lifts it, checked against arithmetic done by hand."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import LossReport, make_term
from detloss.diagnose import GradientAccount, check_starved, gradient_accounting
from detloss.diagnose.doctor import Doctor, Measurement
from detloss.train.doctor import read_measurements, recommended_overrides
from detloss.train.logs import CsvLog


def _account(norms: dict[str, float], weights: dict[str, float], normalizers: dict[str, str] | None = None):
    total = sum(n for n in norms.values() if math.isfinite(n))
    return GradientAccount(
        norms=norms,
        shares={n: v / total for n, v in norms.items()},
        ratios={},
        weights=weights,
        normalizers=normalizers or {},
    )


# The issue's `loss.normalizers.cls=mean` account in round numbers: cls divided by B·A·C = 8 · 4200 · 6 elements.
NORMS = {"box": 0.08, "cls": 2.5e-5, "dfl": 0.032, "poly": 0.028}
WEIGHTS = {"box": 7.5, "cls": 0.5, "dfl": 1.5, "poly": 1.0}
NORMALIZERS = {"box": "12 (num_pos)", "cls": "2.016e+05 (mean)", "dfl": "12 (num_pos)", "poly": "12 (num_pos)"}


def test_starved_cls_gets_the_weight_and_normalizer_that_lift_it_by_hand():
    (f,) = check_starved(_account(NORMS, WEIGHTS, NORMALIZERS))
    assert f.code == "GRAD_STARVED" and f.severity == "warning" and f.term == "cls"
    n = f.numbers
    # every term starves cls: 0.08 / 2.5e-5 = 3200, 0.032 / 2.5e-5 = 1280, 0.028 / 2.5e-5 = 1120
    assert n["ratio/box:cls"] == pytest.approx(3200) and n["ratio/dfl:cls"] == pytest.approx(1280)
    assert n["ratio/poly:cls"] == pytest.approx(1120)
    # 1:1 against box: 0.5 * 0.08 / 2.5e-5 = 1600; the least within 100:1: 0.5 * 0.08 / (100 * 2.5e-5) = 16
    assert n["cls/weight"] == pytest.approx(1600) and n["cls/weight_min"] == pytest.approx(16)
    # or a normalizer 3200x smaller: 201600 * 2.5e-5 / 0.08 = 63
    assert n["cls/normalizer_now"] == 201600 and n["cls/normalizer"] == pytest.approx(63)
    for text in (
        "box 0.08 vs cls 2.5e-05: ratio 3.2e+03",
        "poly 0.028 vs cls 2.5e-05: ratio 1.12e+03",
        "To reach 1:1 against box",
        "0.5 → 0.5 × 0.08/2.5e-05 = 1.6e+03",
        "0.5 × 0.08/(100 × 2.5e-05) = 16",
        "2.02e+05 × 2.5e-05/0.08 = 63 instead of 2.016e+05 (mean)",
    ):
        assert text in f.message, text
    assert "raise the weight of cls ×3.2e+03 (0.5 → 1.6e+03" in f.fix and "num_pos or target_sum" in f.fix
    assert "change cls's normalizer from 2.016e+05 (mean) to one 3.2e+03× smaller, about 63" in f.fix


def test_the_weights_it_recommends_put_the_pair_at_the_target_and_at_the_bound():
    # norms are linear in the weight: cls's norm with weight w is 2.5e-5 * w / 0.5
    (f,) = check_starved(_account(NORMS, WEIGHTS, NORMALIZERS), target_ratio=2.0)
    assert f.numbers["cls/weight"] == pytest.approx(0.5 * 0.08 / (2 * 2.5e-5))  # 800
    assert f.numbers["cls/normalizer"] == pytest.approx(201600 * 2 * 2.5e-5 / 0.08)  # 126
    assert "0.5 × 0.08/(2 × 2.5e-05) = 800" in f.message and "2.02e+05 × 2 × 2.5e-05/0.08 = 126" in f.message
    lifted = 2.5e-5 * f.numbers["cls/weight"] / 0.5
    assert 0.08 / lifted == pytest.approx(2.0)
    assert 0.08 / (2.5e-5 * f.numbers["cls/weight_min"] / 0.5) == pytest.approx(100.0)


def test_every_pair_is_checked_both_ways_and_the_bound_is_strict():
    weak = 2.0**-7  # exactly 1/128 of 1.0
    for norms in ({"a": 1.0, "b": weak}, {"b": weak, "a": 1.0}):
        (f,) = check_starved(_account(norms, {"a": 1.0, "b": 1.0}), ratio=127.0)
        assert f.term == "b" and f.numbers["ratio/a:b"] == 128.0 and f.numbers["b/weight"] == 128.0
        assert check_starved(_account(norms, {"a": 1.0, "b": 1.0}), ratio=128.0) == []


def test_a_chain_names_each_starved_term_and_aims_at_the_strongest():
    acc = _account({"box": 1.0, "dfl": 1e-3, "cls": 1e-6}, {"box": 1.0, "dfl": 2.0, "cls": 0.5})
    dfl, cls = check_starved(acc)
    assert (dfl.term, cls.term) == ("dfl", "cls")
    assert set(k for k in dfl.numbers if k.startswith("ratio/")) == {"ratio/box:dfl"}
    assert cls.numbers["ratio/box:cls"] == pytest.approx(1e6) and cls.numbers["ratio/dfl:cls"] == pytest.approx(1e3)
    assert dfl.numbers["dfl/weight"] == pytest.approx(2.0 * 1.0 / 1e-3)
    assert cls.numbers["cls/weight"] == pytest.approx(0.5 * 1.0 / 1e-6)  # against box, not dfl
    assert "cls/normalizer" not in cls.numbers  # no normalizer measured: only the weight


def test_zero_and_non_finite_gradients_are_not_starved_and_bad_bounds_raise():
    acc = _account({"box": 1.0, "cls": 0.0, "poly": math.nan, "dfl": 0.5}, {"box": 1, "cls": 0, "poly": 1, "dfl": 1})
    assert check_starved(acc) == []
    for kwargs in ({"ratio": 1.0}, {"ratio": 100.0, "target_ratio": 101.0}, {"target_ratio": 0.0}):
        with pytest.raises(ValueError, match="ratio"):
            check_starved(acc, **kwargs)
    with pytest.raises(ValueError, match="starved_ratio"):
        Doctor(target_ratio=200.0)


def test_doctor_reports_starvation_per_step_and_recommends_the_weight_once():
    doctor = Doctor(starved_ratio=100.0)
    doctor.measurements = [Measurement(41, 0.1, _account(NORMS, WEIGHTS, NORMALIZERS))]
    (f,) = doctor.gradient_findings()
    assert f.code == "GRAD_STARVED" and f.term == "cls" and f.message.startswith("step 41: ")
    assert recommended_overrides([f]) == ["loss.weights.cls=1600"]
    loose = Doctor(starved_ratio=5000.0)  # 3200:1 is within 5000:1
    loose.measurements = doctor.measurements
    assert loose.gradient_findings() == []
    # cls dominates (96.3%) and box is starved (200:1): both recommend box's weight 1 * 10 / 0.05, listed once
    acc = _account({"cls": 10.0, "box": 0.05, "dfl": 0.33}, {"cls": 1.0, "box": 1.0, "dfl": 1.0})
    doctor.measurements = [Measurement(3, 0.1, acc)]
    found = doctor.gradient_findings()
    assert sorted(f.code for f in found) == ["GRAD_DOMINANCE", "GRAD_STARVED"]
    assert recommended_overrides(found) == ["loss.weights.box=200", "loss.weights.dfl=30.3"]


def test_measured_account_through_doctor_csv(tmp_path):
    """Norms from a real backward: box = sum(x) has gradient ones(4), norm 2; cls = sum(y) / 1600 has norm
    2 / 1600 = 1.25e-3: 1600:1, so cls needs weight 1600 or a normalizer of 1600 * 1.25e-3 / 2 = 1."""
    x = torch.rand(4, requires_grad=True)
    y = torch.rand(4, requires_grad=True)
    report = LossReport(
        {
            "box": make_term("box", x, torch.tensor(1.0), "num_pos"),
            "cls": make_term("cls", y, torch.tensor(1600.0), "mean"),
        }
    )
    doctor = Doctor(1, sink=CsvLog(tmp_path / "doctor.csv").write)
    doctor.measure_outputs(7, report, [x, y])
    for account in (doctor.measurements[0].account, read_measurements(tmp_path / "doctor.csv")[0].account):
        assert account.norms["box"] == pytest.approx(2.0) and account.norms["cls"] == pytest.approx(2.0 / 1600)
        (f,) = check_starved(account)
        assert f.term == "cls" and f.numbers["cls/weight"] == pytest.approx(1600.0)
        assert f.numbers["cls/normalizer"] == pytest.approx(1.0)
