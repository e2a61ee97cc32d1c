"""WarmupSchedule: burn-in, mid-warm-up and after, for both modes."""

import pytest

from detloss import WarmupSchedule


def test_linear_warmup_values():
    s = WarmupSchedule(max_value=1.5, burn_in=5, warmup=5)
    assert [s.value(e) for e in (0, 4.99, 5, 6, 7.5, 10, 50)] == pytest.approx([0, 0, 0, 0.3, 0.75, 1.5, 1.5])


def test_step_warmup_values():
    s = WarmupSchedule(max_value=2.0, burn_in=2, warmup=3, mode="step")
    assert [s.value(e) for e in (0, 2, 4.9, 5, 9)] == [0.0, 0.0, 0.0, 2.0, 2.0]


def test_no_warmup_jumps_after_burn_in():
    s = WarmupSchedule(max_value=1.0, burn_in=1)
    assert [s.value(e) for e in (0, 0.5, 1, 2)] == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("kwargs", [{"mode": "cosine"}, {"burn_in": -1}, {"warmup": -2}])
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        WarmupSchedule(max_value=1.0, **kwargs)
