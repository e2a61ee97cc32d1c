"""The trainer's ModelEMA: the decay after k updates and the averaged weights, by hand (plain ``math``).

The n-th update (n = 1, 2, ...) uses ``d_n = decay * (1 - exp(-n / tau))``: small at first, so the
random initialisation is forgotten quickly, rising to ``decay``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detloss.models.ema import ModelEMA


class Scalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def test_decay_after_k_updates():
    ema = ModelEMA(Scalar(), decay=0.9, tau=2.0)
    model = Scalar()
    seen = []
    for _ in range(4):
        seen.append(ema.current_decay())
        ema.update(model)
    expected = [0.9 * (1 - math.exp(-n / 2)) for n in (1, 2, 3, 4)]  # 0.354, 0.569, 0.699, 0.778
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen == sorted(seen)  # the ramp rises
    for _ in range(96):
        ema.update(model)
    assert ema.updates == 100
    assert ema.current_decay() == pytest.approx(0.9 * (1 - math.exp(-101 / 2)), rel=1e-12)  # = 0.9 to 1e-22


def test_trainer_default_ramp():
    # decay 0.999 and tau 200 (YOLO's): the first update keeps only 0.5% of the copy
    ema = ModelEMA(Scalar(), decay=0.999)
    assert ema.current_decay() == pytest.approx(0.999 * (1 - math.exp(-1 / 200)), rel=1e-12)
    assert ema.current_decay() < 0.005


def test_trainer_takes_the_ramp_from_the_config(tmp_path):
    from detloss.testing.tiny import TINY_RUN
    from detloss.train.config import load_config
    from detloss.train.trainer import Trainer

    cfg = load_config(None, [*TINY_RUN, f"out_dir={tmp_path}", "optim.ema_decay=0.99", "optim.ema_tau=50"])
    ema = Trainer(cfg).ema
    assert ema.current_decay() == pytest.approx(0.99 * (1 - math.exp(-1 / 50)), rel=1e-12)  # 0.0196
    with pytest.raises(ValueError, match="ema_tau"):
        load_config(None, ["optim.ema_tau=0"])


def test_averaged_weights_after_three_updates():
    model = Scalar()
    ema = ModelEMA(model, decay=0.9, tau=2.0)  # copy of w = 0
    expected = 0.0
    for n, w in enumerate((1.0, 2.0, 3.0), start=1):
        with torch.no_grad():
            model.w.fill_(w)
            model.steps.fill_(10 * n)
        ema.update(model)
        d = 0.9 * (1 - math.exp(-n / 2))
        expected = d * expected + (1 - d) * w
        assert ema.module.w.item() == pytest.approx(expected, rel=1e-12), n
        assert ema.module.steps.item() == 10 * n  # integer buffers are copied, not averaged
    # d = 0.354, 0.569, 0.699: w_ema = 0.646 * 1 = 0.646, 0.569 * 0.646 + 0.431 * 2 = 1.230,
    # 0.699 * 1.230 + 0.301 * 3 = 1.762
    assert ema.module.w.item() == pytest.approx(1.7622, abs=1e-4)


def test_state_dict_resumes_the_ramp():
    model = Scalar()
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    for _ in range(3):
        ema.update(model)
    resumed = ModelEMA(Scalar(), decay=0.9, tau=2.0)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.updates == 3
    assert resumed.current_decay() == pytest.approx(0.9 * (1 - math.exp(-4 / 2)), rel=1e-12)
