"""TinyDetector's levels: sizes and strides with and without the stride-4 level, and its gradient path."""

from __future__ import annotations

import math

import pytest
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


def test_objectness_output_reads_the_box_features_and_leaves_the_rest_unchanged():
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    base = TinyDetector(num_classes=2, reg_max=4, width=8, num_vertices=3)
    torch.manual_seed(0)
    obj = TinyDetector(num_classes=2, reg_max=4, width=8, num_vertices=3, objectness=True)
    assert obj.layout.objectness and not base.layout.objectness
    # off: no objectness parameters, so earlier checkpoints load; on: one 1x1 conv per level, nothing else new
    assert not any(k.startswith("obj.") for k in base.state_dict())
    new = {f"obj.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    assert set(obj.state_dict()) - set(base.state_dict()) == new
    base_out, obj_out = base(x), obj(x)
    assert [f.shape[1] for f in obj_out] == [4 * 4 + 2 + 1 + 2 * 3] * 3
    keep = [c for c in range(obj_out[0].shape[1]) if c != obj.layout.obj.start]
    for b, o in zip(base_out, obj_out, strict=True):  # box, class and polygon channels as without objectness
        torch.testing.assert_close(o[:, keep], b)
    assert all(conv.bias.item() == pytest.approx(math.log(0.01 / 0.99)) for conv in obj.obj)  # the 1% prior
    # the objectness logit trains its conv and the box branch it reads, not the class branch
    sum(f[:, obj.layout.obj].sum() for f in obj(x)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.obj.parameters())
    assert obj.box[0][0][0].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in obj.cls.parameters())
