"""The trainer's detector kinds (issue 7): config fields reach the criteria, each kind trains and evaluates."""

from __future__ import annotations

import math

import pytest
import torch

from detloss.criteria.two_stage import TwoStageCriterion
from detloss.testing.tiny import TINY_RUN
from detloss.train.config import load_config
from detloss.train.tasks import build_task
from detloss.train.trainer import Trainer


def _config(tmp_path, *extra: str):
    return load_config(None, [*TINY_RUN, f"out_dir={tmp_path}", "log_every=100", *extra])


def test_two_stage_config_fields_reach_both_criteria(tmp_path):
    cfg = _config(
        tmp_path,
        "model.kind=two_stage",
        "rpn.pos_weight=3",
        "rpn.normalizers={obj: batch_size}",
        "rpn.weights={box: 2}",
        "roi.fg_weight=1.5",
        "roi.normalizers={cls: num_pos, mask: batch_size}",
        "roi.weights={mask: 0.5}",
        "roi.mask_size=8",
        "rpn.box_loss=giou",
    )
    crit = build_task(cfg, 6).criterion
    assert isinstance(crit, TwoStageCriterion)
    assert crit.terms == ["rpn_obj", "rpn_box", "roi_cls", "roi_box", "roi_mask"]
    assert crit.rpn.pos_weight == 3 and crit.rpn.box_loss == "giou" and crit.roi.fg_weight == 1.5
    assert crit.roi.mask_size == 8
    names = {p: {t: n.spec for t, n in c.normalizers.items()} for p, c in crit.parts.items()}
    assert names == {
        "rpn": {"obj": "batch_size", "box": "num_pos"},
        "roi": {"cls": "num_pos", "box": "num_pos", "mask": "batch_size"},
    }
    assert crit.weights == {"rpn_obj": 1.0, "rpn_box": 2.0, "roi_cls": 1.0, "roi_box": 1.0, "roi_mask": 0.5}


def test_grid_config_defaults_to_batch_size_normalizers_and_keeps_overrides(tmp_path):
    crit = build_task(_config(tmp_path, "model.kind=grid"), 6).criterion
    assert {t: n.spec for t, n in crit.normalizers.items()} == {
        "loc": "batch_size",
        "obj": "batch_size",
        "cls": "batch_size",
    }
    cfg = _config(tmp_path, "model.kind=grid", "grid.normalizers={obj: num_samples}", "grid.obj_pos_weight=2",
                  "grid.weights={loc: 5}", "grid.loc_loss=smooth_l1")  # fmt: skip
    crit = build_task(cfg, 6).criterion
    assert {t: n.spec for t, n in crit.normalizers.items()} == {
        "loc": "batch_size",
        "obj": "num_samples",
        "cls": "batch_size",
    }
    assert crit.obj_pos_weight == 2 and crit.weights["loc"] == 5 and crit.loc_loss == "smooth_l1"


@pytest.mark.parametrize(
    "bad", ["rpn.normalizers={obj: avg}", "roi.fg_weight=0", "grid.cls_loss=focal", "model.kind=ssd"]
)
def test_bad_kind_options_are_rejected_by_the_config(tmp_path, bad):
    with pytest.raises(ValueError):
        _config(tmp_path, bad)


def test_two_stage_weights_dict_is_what_the_report_uses():
    from detloss.criteria.roi import ROICriterion
    from detloss.criteria.rpn import RPNCriterion

    crit = TwoStageCriterion(RPNCriterion(sample_num=4), ROICriterion(2, with_mask=False, sample_num=4))
    anchors = torch.tensor([[0.0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]])
    gt = [torch.tensor([[0.0, 0, 8, 9]])]
    rois, roi_image = anchors.clone(), torch.zeros(4, dtype=torch.long)
    targets = [{"boxes": gt[0], "labels": torch.tensor([1])}]
    outputs = {
        "objectness": torch.zeros(1, 4), "rpn_deltas": torch.zeros(1, 4, 4), "anchors": anchors,
        "cls_logits": torch.zeros(4, 3), "box_deltas": torch.zeros(4, 2, 4), "rois": rois, "roi_image": roi_image,
    }  # fmt: skip
    args = (outputs, targets)
    base = crit(*args)
    # hand values: BCE(0, y) = log 2 per sampled anchor over num_samples; CE over 3 logits of 0 = log 3
    assert base["rpn_obj"].value.item() == pytest.approx(math.log(2), rel=1e-6)
    assert base["roi_cls"].value.item() == pytest.approx(math.log(3), rel=1e-6)
    crit.weights["roi_cls"] = 2.5
    crit.weights["rpn_obj"] = 0.0
    again = crit(*args)
    assert again["roi_cls"].value.item() == pytest.approx(2.5 * math.log(3), rel=1e-6)
    assert again["rpn_obj"].value.item() == 0.0 and again["roi_cls"].weight == 2.5


@pytest.mark.parametrize("kind", ["two_stage", "grid"])
def test_each_kind_trains_evaluates_and_resumes_through_the_trainer(tmp_path, kind):
    trainer = Trainer(_config(tmp_path, f"model.kind={kind}", "epochs=2", "max_steps=5"))
    metrics = trainer.fit()
    assert trainer.step == 5
    assert {"map50", "dets_per_image", "precision", "recall"} <= set(metrics)
    assert "poly_map50" not in metrics  # polygons come from the dense kind only
    from detloss.train.logs import read_csv

    rows = read_csv(tmp_path / "steps.csv")
    terms = list(trainer.criterion.terms)
    assert all(math.isfinite(r[t]) for r in rows for t in terms)
    assert all(f"{t}/normalizer" in rows[0] for t in terms)
    resumed = Trainer(
        _config(tmp_path / "again", f"model.kind={kind}", "epochs=2", "max_steps=5"), resume=tmp_path / "last.pt"
    )
    assert resumed.step == 5
    for (name, a), b in zip(trainer.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
