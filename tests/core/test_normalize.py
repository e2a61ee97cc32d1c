"""Normalizers by name: hand-computed denominators, floor, EMA state, errors."""

from __future__ import annotations

import pytest
import torch

from detloss.core.normalize import NORMALIZERS, Normalizer, build_normalizers, denominators

COUNTS = {
    "num_elements": torch.tensor(67200.0),
    "num_pos": torch.tensor(76.0),
    "target_sum": torch.tensor(23.5),
    "num_samples": torch.tensor(256.0),
    "batch_size": torch.tensor(8.0),
    "images_with_fg": torch.tensor(6.0),
    "num_cells": torch.tensor(8400.0),
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("sum", 1.0),
        ("mean", 67200.0),
        ("num_pos", 76.0),
        ("target_sum", 23.5),
        ("num_samples", 256.0),
        ("batch_size", 8.0),
        ("images_with_fg", 6.0),
        ("fixed:12.5", 12.5),
        ("density", 8.0 * (1.0 + 76.0 / (8.0 * 8400.0))),
        ("ema_num_pos:0.9", 76.0),
    ],
)
def test_denominator_by_name(spec, expected):
    d = Normalizer(spec)(COUNTS)
    assert d.shape == ()
    assert d.item() == pytest.approx(expected, rel=1e-6)


def test_names_are_exactly_the_design_table():
    assert list(NORMALIZERS) == [
        "sum", "mean", "num_pos", "target_sum", "num_samples", "batch_size",
        "images_with_fg", "fixed:k", "density", "ema_num_pos:m", "ema_num_pos:m:init=v",
    ]  # fmt: skip


@pytest.mark.parametrize("spec", ["num_pos", "target_sum", "images_with_fg", "ema_num_pos:0.5", "density"])
def test_floor_applies_to_data_dependent_counts(spec):
    zero = {k: torch.tensor(0.0) for k in COUNTS}
    zero["num_cells"] = torch.tensor(100.0)
    assert Normalizer(spec)(zero).item() == 1.0
    assert Normalizer(spec, floor=0.25)(zero).item() == 0.25


def test_fixed_and_sum_ignore_the_floor():
    assert Normalizer("fixed:0.5", floor=1.0)({}).item() == 0.5
    assert Normalizer("sum", floor=10.0)({}).item() == 1.0


def test_ema_follows_momentum_and_survives_state_dict():
    n = Normalizer("ema_num_pos:0.9")
    seen = [n({"num_pos": torch.tensor(p)}).item() for p in (10.0, 20.0, 0.0)]
    # starts at the first count, then 0.9 * old + 0.1 * new
    assert seen == pytest.approx([10.0, 11.0, 9.9])
    restored = Normalizer("ema_num_pos:0.9")
    restored.load_state_dict(n.state_dict())
    assert restored({"num_pos": torch.tensor(30.0)}).item() == pytest.approx(0.9 * 9.9 + 3.0)
    restored.eval()  # evaluation reads the running value and leaves it alone
    before = restored.ema_value.clone()
    assert restored({"num_pos": torch.tensor(1000.0)}).item() == pytest.approx(before.item())
    assert torch.equal(restored.ema_value, before)


def test_ema_state_rides_in_a_criterion_state_dict():
    norms = build_normalizers({"cls": "target_sum", "box": "ema_num_pos:0.5"})
    norms["box"]({"num_pos": torch.tensor(4.0)})
    assert norms.state_dict()["box.ema_value"].item() == 4.0
    assert bool(norms.state_dict()["box.ema_started"])


def _ema_run(spec: str, counts: list[float], floor: float = 1.0) -> list[float]:
    n = Normalizer(spec, floor)
    return [n({"num_pos": torch.tensor(c)}).item() for c in counts]


def test_detectron2_ema_floors_each_count_and_starts_at_init():
    # e_0 = 100; e_t = 0.9 e_(t-1) + 0.1 max(n_t, 1): 90 + 0.1 = 90.1; 81.09 + 1 = 82.09; 73.881 + 5 = 78.881
    assert _ema_run("ema_num_pos:0.9:init=100", [0.0, 10.0, 50.0]) == pytest.approx([90.1, 82.09, 78.881], rel=1e-6)
    # the floor is the constructor's: max(0, 0.25) enters the mean
    assert _ema_run("ema_num_pos:0.9:init=100", [0.0], floor=0.25) == pytest.approx([90.025], rel=1e-6)
    # D is the running mean itself, not floored again: from init=0, 0.9 * 0 + 0.1 * max(0, 1) = 0.1
    assert _ema_run("ema_num_pos:0.9:init=0", [0.0]) == pytest.approx([0.1])


def test_detectron2_ema_after_k_empty_batches_is_the_closed_form():
    # k counts of 0 floored to 1: e_k = 1 + (100 - 1) * 0.9^k
    k = 10
    seen = _ema_run("ema_num_pos:0.9:init=100", [0.0] * k)
    assert seen == pytest.approx([1 + 99 * 0.9**i for i in range(1, k + 1)], rel=1e-6)
    assert seen[-1] == pytest.approx(35.5191655699, rel=1e-6)
    # the first-count rule on the same counts: e = 0 throughout, floored after the mean to 1
    assert _ema_run("ema_num_pos:0.9", [0.0] * 3) == [1.0, 1.0, 1.0]


def test_detectron2_ema_state_dict_round_trip_and_eval():
    n = Normalizer("ema_num_pos:0.9:init=100")
    n.eval()  # before any training step, evaluation reads the initial value and leaves it
    assert n({"num_pos": torch.tensor(7.0)}).item() == 100.0 and n.ema_value.item() == 100.0
    n.train()
    for c in (0.0, 10.0):
        n({"num_pos": torch.tensor(c)})
    restored = Normalizer("ema_num_pos:0.9:init=100")
    restored.load_state_dict(n.state_dict())
    assert restored.ema_value.item() == pytest.approx(82.09, rel=1e-6)
    assert restored({"num_pos": torch.tensor(50.0)}).item() == pytest.approx(78.881, rel=1e-6)
    assert set(n.state_dict()) == {"ema_value", "ema_started"}


def test_detectron2_ema_through_denominators_uses_the_summed_count():
    norms = {"cls": Normalizer("ema_num_pos:0.9:init=100"), "box": Normalizer("ema_num_pos:0.9")}
    d = denominators(norms, {"*": {"num_pos": torch.tensor(20.0)}})
    assert d["cls"].item() == pytest.approx(0.9 * 100 + 0.1 * 20, rel=1e-6) and d["box"].item() == 20.0


@pytest.mark.parametrize(
    "spec",
    [
        "avg", "fixed", "fixed:0", "fixed:-2", "ema_num_pos:1.5", "mean:3", "fixed:abc", "ema_num_pos:0.9:",
        "ema_num_pos:0.9:init=", "ema_num_pos:0.9:init=-1", "ema_num_pos:0.9:init=nan", "ema_num_pos:0.9:start=5",
        "ema_num_pos:0.9:init=5:x",
    ],
)  # fmt: skip
def test_bad_names_list_the_valid_ones_or_say_what_is_wrong(spec):
    with pytest.raises(ValueError) as err:
        Normalizer(spec)
    assert spec in str(err.value)
    if spec == "avg":
        assert "num_pos" in str(err.value) and "ema_num_pos:m" in str(err.value)


def test_missing_count_names_the_normalizer_and_the_count():
    with pytest.raises(ValueError, match=r"'num_samples'.*num_samples"):
        Normalizer("num_samples")({"num_pos": torch.tensor(1.0)})


def test_denominators_one_call_for_all_terms_with_overrides():
    norms = {"cls": Normalizer("target_sum"), "box": Normalizer("num_pos"), "bg": Normalizer("mean")}
    d = denominators(
        norms,
        {"*": {"target_sum": 3.5, "num_pos": torch.tensor(0.0)}, "bg": {"num_elements": 400.0}},
    )
    assert {k: v.item() for k, v in d.items()} == {"cls": 3.5, "box": 1.0, "bg": 400.0}


def test_denominators_reject_unknown_count_keys():
    with pytest.raises(ValueError, match="positives"):
        denominators({"cls": Normalizer("sum")}, {"*": {"positives": 3.0}})
