"""``Term(fn, normalizer=...)``: the same value and the same 2-rank gloo DDP gradient as the four-step path
(element loss, ``Normalizer``, ``denominators``, ``make_term``), a hand-worked value, and its checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detloss.core.normalize import Normalizer, denominators
from detloss.core.report import TermRecord, make_term
from detloss.functional import Term, sigmoid_focal
from detloss.testing import ddp_and_single_gradients

FEATURES, CLASSES = 4, 3


def test_focal_by_positives_by_hand():
    # logits 0: p = 1/2, so each element is alpha_t * (1/2)^2 * log 2; one positive class entry (alpha 0.25)
    # and five negatives (0.75 each), divided by the 2 positive rows the mask counts, times the weight 3
    logits = torch.zeros(2, 3, requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    term = Term(sigmoid_focal, normalizer="num_pos", weight=3.0)
    record = term(logits, targets, pos_mask=torch.tensor([True, True]))
    expected = 3.0 * (0.25 + 5 * 0.75) * 0.25 * math.log(2) / 2
    assert isinstance(record, TermRecord) and record.normalizer_name == "num_pos"
    assert float(record.value.detach()) == pytest.approx(expected, rel=1e-6)
    assert float(record.normalizer) == 2.0 and float(record.num_pos) == 2.0 and float(record.num_elements) == 6.0
    assert term.name == "sigmoid_focal"


def test_mean_counts_the_elements_and_the_floor_holds_without_positives():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert float(Term(lambda a: a, normalizer="mean")(x).value) == 3.0  # 12 / 4 elements
    assert float(Term(lambda a: a, normalizer="num_pos")(x, num_pos=0).value) == 12.0  # floor 1


def test_an_empty_term_stays_attached_with_zero_gradient():
    logits = torch.zeros(0, 3, requires_grad=True)
    record = Term(sigmoid_focal)(logits, torch.zeros(0, 3), num_pos=0)
    record.value.backward()
    assert float(record.value.detach()) == 0.0 and logits.grad is not None and logits.grad.shape == (0, 3)


def test_ema_normalizer_state_rides_in_state_dict():
    term = Term(sigmoid_focal, normalizer="ema_num_pos:0.5")
    for n in (4.0, 8.0):
        term(torch.zeros(1, 1), torch.ones(1, 1), num_pos=n)
    state = term.state_dict()
    assert float(state["normalizer.ema_value"]) == 6.0  # 0.5 * 4 + 0.5 * 8
    fresh = Term(sigmoid_focal, normalizer="ema_num_pos:0.5")
    fresh.load_state_dict(state)
    assert float(fresh.eval()(torch.zeros(1, 1), torch.ones(1, 1), num_pos=100.0).normalizer) == 6.0


def test_bad_input_names_the_argument():
    focal = Term(sigmoid_focal, normalizer="num_pos")
    x, t = torch.zeros(2, 1), torch.zeros(2, 1)
    with pytest.raises(ValueError, match="needs the counts \\['num_pos'\\]"):
        focal(x, t)
    with pytest.raises(ValueError, match="pos_mask must be a bool tensor"):
        focal(x, t, pos_mask=torch.ones(2))
    with pytest.raises(ValueError, match="num_pos or pos_mask, not both"):
        focal(x, t, num_pos=1, pos_mask=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown keys \\['positives'\\]"):
        focal(x, t, counts={"positives": 1})
    with pytest.raises(ValueError, match="unknown normalizer"):
        Term(sigmoid_focal, normalizer="positives")


# -- the one-line Module against the four-step path, in one process and under 2-rank DDP ----------


class FourSteps(nn.Module):
    """A linear head scored by focal loss normalized by positives, written out in four steps."""

    def __init__(self, spec: str = "num_pos") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(FEATURES, CLASSES)
        self.norm = Normalizer(spec)

    def forward(self, batch: dict) -> TermRecord:
        logits = self.head(batch["x"])
        elements = sigmoid_focal(logits, batch["targets"])  # 1. element loss
        counts = {"num_pos": (batch["targets"].amax(1) > 0).sum()}
        d = denominators({"cls": self.norm}, {"cls": counts})["cls"]  # 2.-3. normalizer and its all-reduce
        return make_term(
            "cls", elements, d, self.norm.spec, weight=2.0, num_pos=counts["num_pos"], anchor=logits
        )  # 4. reduction


class OneLine(nn.Module):
    def __init__(self, spec: str = "num_pos") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(FEATURES, CLASSES)
        self.cls = Term(sigmoid_focal, normalizer=spec, weight=2.0, name="cls")

    def forward(self, batch: dict) -> TermRecord:
        return self.cls(self.head(batch["x"]), batch["targets"], pos_mask=batch["targets"].amax(1) > 0)


def _loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(batch).value


def _shard(rows: int, positives: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    targets = torch.zeros(rows, CLASSES)
    pick = torch.randperm(rows, generator=g)[:positives]
    targets[pick, torch.randint(CLASSES, (positives,), generator=g)] = 1.0
    return {"x": torch.randn(rows, FEATURES, generator=g), "targets": targets}


def _concat(shards: list[dict]) -> dict:
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


def test_same_value_as_the_four_step_path():
    batch = _shard(10, 3, seed=1)
    four, one = FourSteps()(batch), OneLine()(batch)
    for field in ("value", "raw_sum", "normalizer", "num_elements", "num_pos"):
        assert torch.equal(getattr(four, field), getattr(one, field)), field


def test_two_rank_ddp_gradient_equals_the_four_step_path_and_one_process():
    # uneven positives (4 and 1), then a rank without positives: the global count decides D on both ranks
    shards = [[_shard(8, 4, seed=2), _shard(6, 1, seed=3)], [_shard(5, 0, seed=4), _shard(7, 2, seed=5)]]
    builds = [FourSteps, OneLine]
    (four_ddp, four_single), (one_ddp, one_single) = ddp_and_single_gradients(builds, _loss, shards, _concat)
    for step in range(len(shards)):
        for rank in range(2):
            for p_four, p_one in zip(four_ddp[rank][step], one_ddp[rank][step], strict=True):
                assert torch.equal(p_four, p_one)
        for p_one, p_single in zip(one_ddp[0][step], one_single[step], strict=True):
            torch.testing.assert_close(p_one, p_single, rtol=1e-5, atol=1e-7)
        assert any(p.abs().sum() > 0 for p in one_single[step])
