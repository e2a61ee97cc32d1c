"""WeightPolicy: the one source of a step's gains — schedules, ramps of the base gain, then a balancer."""

from __future__ import annotations

import pytest

from detloss.weighting.balancers import GradNormBalancer
from detloss.weighting.policy import WeightPolicy
from detloss.weighting.schedule import WarmupSchedule


class _Ramp:
    def value(self, epoch: float) -> float:
        return min(1.0, epoch / 4)


def test_schedules_replace_ramps_scale_and_the_rest_keep_the_base_gain():
    policy = WeightPolicy(
        {"box": 7.5, "cls": 0.5, "bg": 1.0},
        schedules={"bg": WarmupSchedule(max_value=2.0, burn_in=1, warmup=2)},
        ramps={"cls": _Ramp()},
    )
    # epoch 2: bg = 2 * (2 - 1) / 2 = 1.0; cls = 0.5 * 2 / 4 = 0.25; box untouched
    assert policy.weights(2) == {"box": 7.5, "cls": 0.25, "bg": 1.0}
    assert policy.weights(0) == {"box": 7.5, "cls": 0.0, "bg": 0.0}
    assert policy.weights(9) == {"box": 7.5, "cls": 0.5, "bg": 2.0}
    assert policy.base == {"box": 7.5, "cls": 0.5, "bg": 1.0}  # asking never changes the base


def test_the_balancer_multiplies_the_scheduled_gains():
    balancer = GradNormBalancer(["box", "bg"])
    balancer.m = [3.0, 0.5]
    policy = WeightPolicy({"box": 2.0, "bg": 1.0}, schedules={"bg": WarmupSchedule(4.0)}, balancer=balancer)
    assert policy.weights(0) == {"box": 6.0, "bg": 2.0}  # 2 * 3, (scheduled 4) * 0.5


def test_terms_without_a_base_gain_or_with_two_rules_raise():
    with pytest.raises(ValueError, match=r"schedules has terms \['bg'\] without a base weight"):
        WeightPolicy({"box": 1.0}, schedules={"bg": WarmupSchedule(1.0)})
    with pytest.raises(ValueError, match=r"terms \['box'\] have both a schedule and a ramp"):
        WeightPolicy({"box": 1.0}, schedules={"box": WarmupSchedule(1.0)}, ramps={"box": _Ramp()})
