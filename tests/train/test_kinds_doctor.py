"""The doctor on the two-stage and grid detectors (issue 7): dominance from a normalizer, collapse from a
positive weight (the RPN's pos_weight), in real short runs; the healthy part of the collapse runs is the
short training demo of both models (losses fall, detections stay, AP above a floor)."""

from __future__ import annotations

import pytest

from detloss.train.doctor import read_run, recommended_overrides, run_doctor
from detloss.testing.tiny import TINY_RUN
from detloss.train.config import load_config
from detloss.train.logs import read_csv
from detloss.train.trainer import Trainer

SMALL_TWO_STAGE = ["model.proposals_train=64", "roi.sample_num=64", "rpn.sample_num=64"]


@pytest.mark.parametrize(
    ("kind", "overrides", "term"),
    [
        # a sum over every active cell of the batch, weighted up: a grid detector's objectness
        ("grid", ["grid.normalizers={obj: sum}", "grid.weights={obj: 10}"], "obj"),
        # a sum over every sampled anchor: an RPN without avg_factor
        ("two_stage", ["rpn.normalizers={obj: sum}", "rpn.weights={obj: 3}"], "rpn_obj"),
    ],
)
def test_a_summed_term_dominates_and_the_recommended_weights_balance_it(tmp_path, kind, overrides, term):
    base = [*TINY_RUN, f"model.kind={kind}", *(SMALL_TWO_STAGE if kind == "two_stage" else []), *overrides]
    run = run_doctor(load_config(None, [*base, f"out_dir={tmp_path / 'a'}"]), steps=4, every=2, evaluate=False)
    (dominance,) = [f for f in run.findings if f.code == "GRAD_DOMINANCE"]
    assert dominance.term == term and run.measurements[-1].account.shares[term] > 0.9
    recommended = recommended_overrides(run.findings, kind)
    section = "grid" if kind == "grid" else None
    assert recommended and all(r.split(".")[0] in ((section,) if section else ("rpn", "roi")) for r in recommended)
    # applied, the recommended weights bring every term's gradient norm within 2x of the dominant one's
    again = run_doctor(load_config(None, [*base, *recommended, f"out_dir={tmp_path / 'b'}"]), steps=4, every=2,
                       evaluate=False)  # fmt: skip
    norms = again.measurements[-1].account.norms
    assert all(0.5 <= n / norms[term] <= 2 for n in norms.values()), norms
    assert not [f for f in again.findings if f.code == "GRAD_DOMINANCE"]


@pytest.mark.parametrize(
    ("kind", "knob"),
    [("grid", "grid.obj_pos_weight=0.001"), ("two_stage", "roi.fg_weight=0.001")],
)
def test_a_vanishing_positive_weight_collapses_detections_and_the_doctor_says_so(tmp_path, kind, knob):
    """Six healthy epochs, then two with the positives' weight cut 1000x (resumed from the checkpoint, the
    way a user changes a knob mid-run): detections per image fall to 0 and read_run reports it."""
    base = [
        *TINY_RUN, f"out_dir={tmp_path}", f"model.kind={kind}", "data.image_size=96", "data.train_images=64",
        "data.val_images=16", "batch_size=8", "model.width=16", "optim.ema_decay=null", "optim.schedule=constant",
        "optim.warmup_steps=10", "optim.lr=0.004", "eval.every_epochs=1", "eval.conf=0.1",
        *(SMALL_TWO_STAGE if kind == "two_stage" else []),
    ]  # fmt: skip
    Trainer(load_config(None, [*base, "epochs=6"])).fit()
    healthy = [f.code for f in read_run(tmp_path).findings]
    # the short training itself: losses fall, detections do not collapse, AP above a floor
    rows = read_csv(tmp_path / "epochs.csv")
    # (the two-stage ROI terms first rise: as the RPN learns, more proposals become positives to fit)
    falling = ["train/total"] if kind == "grid" else ["train/rpn_obj", "train/rpn_box"]
    assert all(rows[-1][k] < 0.8 * rows[0][k] for k in falling)
    assert rows[-1]["val/dets_per_image"] > 1.0 and max(r["val/map50"] for r in rows) > 0.1
    changed = knob.partition("=")[0]  # a deliberate change: the resume must be told
    Trainer(load_config(None, [*base, "epochs=8", knob]), resume=tmp_path / "last.pt", allow_changes=(changed,)).fit()
    dets = [r["val/dets_per_image"] for r in read_csv(tmp_path / "epochs.csv")]
    assert max(dets[:6]) > 1.0 and dets[6:] == [0.0, 0.0]
    assert "DETECTION_COLLAPSE" not in healthy
    (collapse,) = [f for f in read_run(tmp_path).findings if f.code == "DETECTION_COLLAPSE"]
    assert collapse.numbers["last"] == 0.0 and collapse.numbers["peak"] == max(dets)
