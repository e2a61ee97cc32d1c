"""Terms and reports: the weighted value, recorded fields, graph connection, non-finite checks."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.core.debug import NonFiniteLossError, set_debug_nan
from detloss.core.report import LossReport, make_term


def test_term_is_weight_times_weighted_sum_over_normalizer():
    elements = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    w = torch.tensor([1.0, 0.5, 0.0])
    term = make_term("box", elements, torch.tensor(4.0), "num_pos", weights=w, weight=7.5, num_pos=2)
    assert term.value.item() == pytest.approx(7.5 * (1.0 + 1.0) / 4.0)
    assert term.raw_sum.item() == 2.0
    assert term.num_elements.item() == 3 and term.num_pos.item() == 2
    term.value.backward()
    assert elements.grad.tolist() == pytest.approx([7.5 / 4, 7.5 * 0.5 / 4, 0.0])


def test_report_total_keys_and_flat_dict():
    a = make_term("box", torch.tensor([0.5]), torch.tensor(2.0), "num_pos", weight=4.0)
    b = make_term("cls", torch.tensor([3.0, 1.0]), torch.tensor(8.0), "mean", weight=1.0)
    report = LossReport({"box": a, "cls": b})
    assert list(report) == ["box", "cls"]
    assert report.total.item() == pytest.approx(1.0 + 0.5)
    flat = report.as_dict(prefix="train/")
    assert flat["train/box"] == pytest.approx(1.0)
    assert flat["train/cls/normalizer"] == 8.0
    assert flat["train/cls/num_elements"] == 2.0
    assert flat["train/total"] == pytest.approx(1.5)
    assert set(flat) == {
        f"train/{n}{suffix}"
        for n in ("box", "cls")
        for suffix in ("", "/raw_sum", "/normalizer", "/weight", "/num_elements", "/num_pos")
    } | {"train/total"}
    table = report.table()
    assert "num_pos" in table and "total" in table


def test_empty_term_stays_attached_and_gives_zero_gradient():
    pred = torch.randn(2, 5, requires_grad=True)
    empty = pred[torch.zeros(2, dtype=torch.bool)].sum(-1)  # no positives: (0,)
    term = make_term("box", empty, torch.tensor(1.0), "num_pos", anchor=pred)
    assert term.value.item() == 0.0 and term.value.requires_grad
    term.value.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_anchor_connects_a_term_built_from_constants():
    pred = torch.randn(3, requires_grad=True)
    term = make_term("poly", torch.zeros(0), torch.tensor(1.0), "num_pos", anchor=pred)
    term.value.backward()
    assert torch.equal(pred.grad, torch.zeros(3))


def test_report_needs_terms():
    with pytest.raises(ValueError):
        LossReport({})


@pytest.fixture
def debug_nan():
    set_debug_nan(True)
    yield
    set_debug_nan(None)


def test_debug_nan_names_the_term_with_a_nonfinite_value(debug_nan):
    with pytest.raises(NonFiniteLossError, match="'cls'") as err:
        make_term("cls", torch.tensor([1.0, math.nan]), torch.tensor(1.0), "sum")
    assert err.value.where == "value"


def test_debug_nan_names_the_term_with_a_nonfinite_gradient(debug_nan):
    pred = torch.tensor([0.0, 4.0], requires_grad=True)
    make_term("box", pred * 2, torch.tensor(1.0), "sum", anchor=pred)  # finite: passes
    with pytest.raises(NonFiniteLossError, match="'dfl'") as err:
        make_term("dfl", torch.sqrt(pred), torch.tensor(1.0), "sum", anchor=pred)  # d sqrt(x) at 0 is inf
    assert err.value.where == "gradient"


def test_debug_nan_reads_the_environment(monkeypatch):
    monkeypatch.setenv("DETLOSS_DEBUG_NAN", "1")
    with pytest.raises(NonFiniteLossError):
        make_term("box", torch.tensor([math.inf]), torch.tensor(1.0), "sum")
    monkeypatch.setenv("DETLOSS_DEBUG_NAN", "0")
    assert math.isinf(make_term("box", torch.tensor([math.inf]), torch.tensor(1.0), "sum").value.item())


def test_pieces_add_up_and_record_the_given_element_count():
    dense = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    sparse = -dense[0, :1] * 0.5  # a correction on one element
    term = make_term("cls", [dense, sparse], torch.tensor(2.0), "target_sum", weight=3.0, num_elements=4)
    assert term.value.item() == pytest.approx(3.0 * (10.0 - 0.5) / 2.0)
    assert term.num_elements.item() == 4
    term.value.backward()
    assert dense.grad.flatten().tolist() == pytest.approx([1.5 * 0.5, 1.5, 1.5, 1.5])
