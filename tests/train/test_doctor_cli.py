"""``detloss doctor`` on a tiny run: dominance with its recommended weights, NaN at step k, ``--run``."""

from __future__ import annotations

import json
import math

import pytest

from detloss.cli import main
from detloss.criteria.dense import DenseCriterion
from detloss.diagnose.doctor import Doctor
from detloss.testing.tiny import TINY_RUN
from detloss.train.doctor import read_measurements

TINY = [*TINY_RUN]
TERMS = ("box", "cls", "dfl", "poly")


def _doctor(tmp_path, *args: str) -> int:
    return main(["doctor", *TINY, f"out_dir={tmp_path}", *args])


def test_dominance_is_found_and_the_recommended_weights_printed(tmp_path, capsys):
    # raising the cls gain 70x (0.5 -> 35): cls then takes > 90% of the gradient (of the four terms of
    # the run without the corner term)
    out_json = tmp_path / "doctor.json"
    args = ("loss.weights.cls=35", "loss.polygon_corner=false", "--steps", "6", "--every", "2", "--json", str(out_json))
    assert _doctor(tmp_path, *args) == 0
    text = capsys.readouterr().out
    assert "GRAD_DOMINANCE" in text and "gradient share per term" in text and "doctor cost" in text
    data = json.loads(out_json.read_text())
    assert set(data["account"]) == set(TERMS) and data["terms"] == data["account"]
    assert set(data["account"]["poly"]) == {"value", "weight", "grad_norm", "grad_share", "dead_fraction", "normalizer"}
    assert not [f for f in data["findings"] if f["severity"] == "error"]
    assert [m["step"] for m in data["measurements"]] == [1, 3, 5]

    (dom,) = [f for f in data["findings"] if f["code"] == "GRAD_DOMINANCE"]
    d, n = dom["term"], dom["numbers"]
    assert d == "cls"
    assert n["share"] > 0.9
    overrides = []
    for o in TERMS:
        if o == d:
            continue
        # the weight giving the other term the dominant one's gradient norm: w_o * norm_d / norm_o
        want = n[f"{o}/weight_now"] * n[f"{d}/grad_norm"] / n[f"{o}/grad_norm"]
        assert n[f"{o}/weight"] == pytest.approx(want)
        overrides.append(f"loss.weights.{o}={n[f'{o}/weight']:.4g}")
    assert " ".join(overrides) in text  # ready to paste into `detloss train`

    folder = tmp_path / "doctor"
    for name in ("config.yaml", "steps.csv", "doctor.csv", "doctor_shares.png"):
        assert (folder / name).is_file(), name
    measured = read_measurements(folder / "doctor.csv")
    assert [m.step for m in measured] == [1, 3, 5]
    assert all(math.fsum(m.account.shares.values()) == pytest.approx(1.0) for m in measured)
    assert all(m.seconds > 0 for m in measured)

    # the same findings from the written logs
    assert main(["doctor", "--run", str(folder), "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    (dom2,) = [f for f in again["findings"] if f["code"] == "GRAD_DOMINANCE"]
    assert dom2["term"] == d and dom2["numbers"][f"{d}/grad_norm"] == pytest.approx(n[f"{d}/grad_norm"])


def test_the_default_run_accounts_the_corner_term(tmp_path, capsys):
    """The harness's default loss has the ``corner`` term: the doctor gives it a row (value, normalizer,
    gradient norm, share) and a share in every measurement."""
    out_json = tmp_path / "doctor.json"
    assert _doctor(tmp_path, "--steps", "2", "--every", "1", "--no-eval", "--json", str(out_json)) == 0
    text = capsys.readouterr().out
    assert "\ncorner " in text
    data = json.loads(out_json.read_text())
    assert set(data["account"]) == {*TERMS, "corner"}
    corner = data["account"]["corner"]
    assert corner["normalizer"].endswith("(target_sum)") or "target_sum" in str(corner["normalizer"])
    assert corner["grad_norm"] > 0 and 0 < corner["grad_share"] < 1


def test_nan_at_step_k_is_reported_with_step_and_term_and_exits_1(tmp_path, capsys, monkeypatch):
    k = 3
    calls = []
    original = DenseCriterion._polygon_elements

    def poisoned(self, pred, target, valid):
        calls.append(1)
        el = original(self, pred, target, valid)
        return el * math.nan if len(calls) == k else el

    monkeypatch.setattr(DenseCriterion, "_polygon_elements", poisoned)
    out_json = tmp_path / "nan.json"
    assert _doctor(tmp_path, "--steps", "6", "--every", "2", "--no-eval", "--json", str(out_json)) == 1
    text = capsys.readouterr().out
    assert "NONFINITE" in text and f"step {k}" in text and "'poly'" in text
    (nonfinite,) = [f for f in json.loads(out_json.read_text())["findings"] if f["code"] == "NONFINITE"]
    assert nonfinite["severity"] == "error" and nonfinite["term"] == "poly" and nonfinite["numbers"]["step"] == k
    assert len(calls) == k  # stopped at the first non-finite step


def test_run_folder_with_collapsing_detections_exits_1(tmp_path, capsys):
    from detloss.train.logs import CsvLog

    steps, epochs = CsvLog(tmp_path / "steps.csv"), CsvLog(tmp_path / "epochs.csv")
    for step in range(1, 31):  # healthy losses, every normalizer 4
        row = {"step": step, "epoch": 0}
        for t in TERMS:
            row.update({t: 1.0 / step, f"{t}/raw_sum": 4.0 / step, f"{t}/normalizer": 4.0, f"{t}/weight": 1.0})
        row["total"] = 4.0 / step
        steps.write(row)
    for epoch, dets in enumerate((1.5, 2.5, 0.02), start=1):
        epochs.write({"epoch": epoch, "step": 10 * epoch, "val/map50": 0.1, "val/dets_per_image": dets})
    assert main(["doctor", "--run", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "DETECTION_COLLAPSE" in text and "fell from 2.5 (epoch 2) to 0.02 (epoch 3)" in text
    assert "GRAD_DOMINANCE" not in text and "PLATEAU" not in text  # no doctor.csv; every term decreases


def test_doctor_rejects_bad_arguments(tmp_path, capsys):
    assert main(["doctor", "--run", str(tmp_path / "missing")]) == 2
    assert "steps.csv" in capsys.readouterr().err
    with pytest.raises(ValueError, match="every_steps"):
        Doctor(every_steps=0)
