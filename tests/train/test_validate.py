"""``detloss val``: a finished run's checkpoint evaluated again, with the evaluation changed and nothing else."""

from __future__ import annotations

import pytest

import detloss.train.evaluation as evaluation
from detloss.cli import main
from detloss.train.config import load_config
from detloss.train.trainer import Trainer
from detloss.train.validate import validate_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "run"
    cfg = load_config(None, [
        f"out_dir={out}", "data.image_size=64", "data.train_images=8", "data.val_images=4", "model.width=8",
        "batch_size=4", "epochs=1", "loss.reg_max=4", "loss.num_vertices=4", "eval.plots=false", "eval.conf=0.01",
    ])  # fmt: skip
    return out, Trainer(cfg).fit()


def test_same_checkpoint_same_metrics(run):
    out, trained = run
    again = validate_run(out)
    assert again.keys() == trained.keys()
    assert again == pytest.approx(trained)  # the EMA weights the trainer evaluated, read back from last.pt


def test_cli_evaluates_with_tta(run, capsys, monkeypatch):
    out, _ = run
    calls = []
    real = evaluation.tta_predict
    monkeypatch.setattr(evaluation, "tta_predict", lambda *a: calls.append(a[2:]) or real(*a))
    assert main(["val", str(out), "eval.tta=d4", "eval.max_det=50"]) == 0
    assert calls == [("d4", 0.6, 50)]  # the 4 validation images in one batch; the run's NMS IoU
    rows = dict(line.split() for line in capsys.readouterr().out.splitlines()[1:])
    assert 0 <= float(rows["map50"]) <= 1 and float(rows["dets_per_image"]) <= 50


def test_overrides_outside_eval_are_refused(run):
    out, _ = run
    with pytest.raises(ValueError, match=r"changes only eval\.\*, device and threads, got 'loss.reg_max=8'"):
        validate_run(out, ["loss.reg_max=8"])


def test_cli_counts_the_errors_that_make_precision_and_recall(run, capsys):
    out, trained = run
    assert main(["val", str(out), "--errors"]) == 0
    rows = {k: float(v) for k, v in (line.split() for line in capsys.readouterr().out.splitlines()[1:])}
    kinds = ("duplicate", "wrong_class", "localization", "background")
    assert rows["errors/detections"] == rows["errors/true_positives"] + sum(rows[f"errors/{k}"] for k in kinds)
    # the same detections box_map counted at eval.conf: 4 images' worth of dets_per_image, its P and R
    assert rows["errors/detections"] == pytest.approx(4 * trained["dets_per_image"])
    assert rows["errors/true_positives"] / rows["errors/detections"] == pytest.approx(trained["precision"])
    assert 1 - rows["errors/missed"] / rows["errors/ground_truths"] == pytest.approx(trained["recall"])
