"""``NONFINITE`` names the operation under ``DETLOSS_DEBUG_NAN=1`` (issue 6): the mode that finds the first
operation making NaN/Inf out of finite inputs, forward and backward, and ``detloss doctor`` using it on
the failing step."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

import detloss.criteria.dense as dense
from detloss.cli import main
from detloss.criteria.dense import DenseCriterion
from detloss.core.debug import NonFiniteLossError, debug_nan, debug_nan_enabled, locate_nonfinite, set_debug_nan
from detloss.core.report import make_term
from detloss.testing.tiny import TINY_RUN

HERE = Path(__file__).resolve()
REL = HERE.relative_to(Path.cwd()).as_posix() if HERE.is_relative_to(Path.cwd()) else str(HERE)


def _line_of(func, text: str) -> int:
    """The line number in this file of the line of ``func`` containing ``text``."""
    lines, first = inspect.getsourcelines(func)
    (offset,) = [i for i, line in enumerate(lines) if text in line]
    return first + offset


def _line_in(path: Path, text: str) -> int:
    (number,) = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if text in line]
    return number


# -- the mode ------------------------------------------------------------------------------------


def test_log_of_a_negative_number_is_named_with_its_line():
    x = torch.tensor([2.0, -1.0])

    def fn():
        y = x * 3  # finite
        return torch.log(y).sum()  # log(-3) = nan

    op, err = locate_nonfinite(fn)
    assert err is None
    assert (op.op, op.produced, op.phase, op.node) == ("aten.log.default", "nan", "forward", None)
    assert op.location == f"{REL}:{_line_of(fn, 'torch.log(y)')} in fn"
    assert op.detloss_location is None  # nothing of detloss on the stack


def test_zero_over_zero_and_in_place_division():
    def fn():
        a = torch.tensor([1.0, 0.0])
        return a / a  # 0 / 0

    op, _ = locate_nonfinite(fn)
    assert (op.op, op.produced) == ("aten.div.Tensor", "nan")

    def in_place():
        a = torch.tensor([1.0, 0.0])
        a.mul_(0.0).div_(a)  # the input of div_ is finite (zeros) before the op

    op, _ = locate_nonfinite(in_place)
    assert (op.op, op.produced) == ("aten.div_.Tensor", "nan")


def test_inf_then_nan_names_both_and_masks_are_not_events():
    x = torch.tensor([0.0, 1.0])

    def fn():
        y = torch.log(x)  # log(0) = -inf: the cause
        return (y * 0).sum()  # -inf * 0 = nan: the symptom

    op, _ = locate_nonfinite(fn)
    assert (op.op, op.produced) == ("aten.mul.Tensor", "nan")
    assert op.after_inf is not None and (op.after_inf.op, op.after_inf.produced) == ("aten.log.default", "inf")
    assert op.after_inf.location.endswith(f":{_line_of(fn, 'torch.log(x)')} in fn")
    assert "aten.log.default" in op.describe()

    masked = torch.tensor([True, False])  # a deliberate -inf (a constant) is no event, nor is empty()
    op, _ = locate_nonfinite(lambda: (torch.empty(5), torch.zeros(2).masked_fill(masked, -math.inf).amax()))
    assert op is None


def test_gradient_names_the_backward_node_and_the_forward_line():
    x = torch.tensor([0.0, 4.0], requires_grad=True)

    def fn():
        y = torch.sqrt(x).sum()  # finite value; d sqrt / dx at 0 = 1 / (2 sqrt(0)) = inf
        (g,) = torch.autograd.grad(y, x)
        return g

    op, _ = locate_nonfinite(fn, "gradient")
    assert (op.op, op.produced, op.phase, op.node) == ("aten.div.Tensor", "inf", "backward", "SqrtBackward0")
    assert op.location == f"{REL}:{_line_of(fn, 'torch.sqrt(x)')} in fn"
    assert locate_nonfinite(fn, "value")[0] is None  # the forward pass is finite
    with pytest.raises(ValueError, match="where"):
        locate_nonfinite(fn, "grad")


def test_the_error_raised_by_fn_is_returned_and_the_debug_switch_restored(monkeypatch):
    monkeypatch.delenv("DETLOSS_DEBUG_NAN", raising=False)
    set_debug_nan(None)
    with debug_nan(True):
        assert debug_nan_enabled()
        op, err = locate_nonfinite(lambda: make_term("t", torch.log(-torch.ones(2)), torch.ones(()), "sum"))
    assert isinstance(err, NonFiniteLossError) and err.term == "t" and err.where == "value"
    assert op.op == "aten.log.default"
    assert not debug_nan_enabled()  # back to the environment (unset)


# -- detloss doctor ------------------------------------------------------------------------------


@pytest.fixture
def debug_on():
    with debug_nan(True):
        yield


def _doctor(tmp_path, *args: str) -> dict:
    out_json = tmp_path / "nan.json"
    code = main(["doctor", *TINY_RUN, f"out_dir={tmp_path}", "--steps", "6", "--every", "2", "--no-eval",
                 "--json", str(out_json), *args])  # fmt: skip
    assert code == 1
    (finding,) = [f for f in json.loads(out_json.read_text())["findings"] if f["code"] == "NONFINITE"]
    return finding


def test_doctor_names_a_zero_over_zero_inside_detloss(tmp_path, monkeypatch, debug_on):
    # from step k on, CIoU gets point-sized target boxes and eps=0: w2 / h2 = 0 / 0 in iou.py
    k, calls = 3, []
    original = dense.iou_loss

    def degenerate_targets(pred, target, kind="ciou", **kw):
        calls.append(1)
        if len(calls) < k:
            return original(pred, target, kind, **kw)
        return original(pred, target[:, :2].repeat(1, 2), kind, eps=0.0)

    monkeypatch.setattr(dense, "iou_loss", degenerate_targets)
    f = _doctor(tmp_path)
    iou_py = Path(dense.__file__).parent.parent / "ops" / "boxes.py"
    line = _line_in(iou_py, "(p.w2 / p.h2).atan()")
    assert f["term"] == "box" and f["numbers"]["step"] == k and f"step {k}" in f["message"]
    assert f"aten.div.Tensor (forward, made nan) at detloss/ops/boxes.py:{line} in _ciou" in f["message"]
    assert "aten.div.Tensor" in f["fix"] and "nan_to_num" in f["fix"]
    assert len(calls) == k + 1  # the failing step, then once more under the mode


def test_doctor_names_a_log_of_a_negative_number_with_the_calling_line(tmp_path, monkeypatch, debug_on):
    k, calls = 2, []
    original = DenseCriterion._polygon_elements

    def poisoned(self, pred, target, valid):
        calls.append(1)
        el = original(self, pred, target, valid)  # in [0, 1]
        return torch.log(el - 2) if len(calls) >= k else el  # log of < 0 from step k on

    monkeypatch.setattr(DenseCriterion, "_polygon_elements", poisoned)
    f = _doctor(tmp_path)
    dense_py = Path(dense.__file__)
    caller = _line_in(dense_py, "poly_el = self._polygon_elements(")
    assert f["term"] == "poly" and f["numbers"]["step"] == k
    assert (
        f"aten.log.default (forward, made nan) at {REL}:{_line_of(poisoned, 'torch.log(el - 2)')} in poisoned, "
        f"called from detloss/criteria/dense.py:{caller} in forward" in f["message"]
    )


def test_doctor_names_the_backward_operation_of_a_gradient_only_nan(tmp_path, monkeypatch, debug_on):
    k, calls = 3, []
    original = DenseCriterion._polygon_elements

    def sqrt_at_zero(self, pred, target, valid):
        calls.append(1)
        el = original(self, pred, target, valid)
        if len(calls) < k:
            return el
        zero = pred[:, 0, 0] - pred[:, 0, 0].detach()  # exactly 0, with gradient 1
        return el + torch.sqrt(zero)  # value unchanged and finite; d sqrt at 0 = inf

    monkeypatch.setattr(DenseCriterion, "_polygon_elements", sqrt_at_zero)
    f = _doctor(tmp_path)
    line = _line_of(sqrt_at_zero, "torch.sqrt(zero)")
    assert f["term"] == "poly" and f["numbers"]["step"] == k
    assert f"first non-finite gradient at step {k} in term 'poly'" in f["message"]
    assert "operation aten.div.Tensor in SqrtBackward0" in f["message"]
    assert f"the derivative of the forward operation at {REL}:{line} in sqrt_at_zero" in f["message"]
    assert f"look at the operation at {REL}:{line} in sqrt_at_zero: its derivative (SqrtBackward0) is inf" in f["fix"]
