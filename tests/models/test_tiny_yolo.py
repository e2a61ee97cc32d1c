"""TinyDetector's levels: sizes and strides with and without the stride-4 level, and its gradient path."""

from __future__ import annotations

import torch

from detloss.models import TinyDetector
from detloss.train.config import load_config
from detloss.train.tasks.dense import DenseTask


def test_levels_and_strides():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 96, 64)
    base = TinyDetector(num_classes=2, reg_max=4, width=8)
    p2 = TinyDetector(num_classes=2, reg_max=4, width=8, p2=True)
    channels = 4 * 4 + 2  # 4 sides x reg_max bins + classes
    assert base.strides == (8, 16, 32)
    assert [tuple(f.shape) for f in base(x)] == [(2, channels, 96 // s, 64 // s) for s in (8, 16, 32)]
    assert p2.strides == (4, 8, 16, 32)
    assert [tuple(f.shape) for f in p2(x)] == [(2, channels, 96 // s, 64 // s) for s in (4, 8, 16, 32)]


def test_p2_level_trains_the_stem_and_its_own_neck_conv():
    torch.manual_seed(0)
    model = TinyDetector(num_classes=1, reg_max=4, width=8, p2=True)
    model(torch.rand(1, 3, 64, 64))[0].square().sum().backward()
    for name in ("stem", "top_down2", "top_down3", "box.0", "cls.0"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(name + ".")]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), name
    # the stride-4 level's branches are its own: the stride-8 head gets no gradient from level 0
    assert all(p.grad is None for p in model.box[1].parameters())


def test_the_criterion_takes_the_models_strides():
    cfg = load_config(None, ["model.p2=true", "loss.num_vertices=0"])
    task = DenseTask(cfg, num_classes=3)
    assert task.criterion.strides == (4.0, 8.0, 16.0, 32.0) == tuple(float(s) for s in task.model.strides)
