"""Findings: each check fires on a hand-built history and stays quiet on a healthy one."""

from __future__ import annotations

import math

import pytest
import torch

from detloss import LossReport, make_term
from detloss.diagnose import (
    Finding,
    GradientAccount,
    check_dead,
    check_detection_collapse,
    check_dominance,
    check_nonfinite,
    check_normalizer_skew,
    check_plateau,
    term_names,
)
from detloss.train.logs import CsvLog, read_csv


def _account(norms: dict[str, float], weights: dict[str, float], dead: dict[str, float] | None = None):
    total = sum(norms.values())
    return GradientAccount(
        norms=norms,
        shares={n: v / total for n, v in norms.items()},
        ratios={(a, b): norms[a] / norms[b] for a in norms for b in norms if a != b and norms[b]},
        dead=dead or {},
        weights=weights,
    )


def _row(step: int, **terms: float) -> dict[str, float]:
    """A flat row like LossReport.as_dict(): each term with raw_sum, normalizer, weight, counts."""
    row: dict[str, float] = {"step": float(step)}
    for name, value in terms.items():
        row[name] = value
        row[f"{name}/raw_sum"] = value
        row[f"{name}/normalizer"] = 1.0
        row[f"{name}/weight"] = 1.0
        row[f"{name}/num_elements"] = 10.0
        row[f"{name}/num_pos"] = 2.0
    row["total"] = sum(terms.values())
    return row


def test_finding_validates_severity_and_prints_its_fix():
    f = Finding("X", "warning", "msg", {"a": 1.0}, "do this", "box")
    assert "do this" in str(f) and f.as_dict()["numbers"] == {"a": 1.0}
    with pytest.raises(ValueError, match="severity"):
        Finding("X", "fatal", "msg")


# -- GRAD_DOMINANCE -----------------------------------------------------------------------------


def test_dominance_recommends_weights_with_the_arithmetic():
    acc = _account({"cls": 4.41, "poly": 0.064}, {"cls": 0.5, "poly": 7.5})
    (f,) = check_dominance(acc)
    assert f.code == "GRAD_DOMINANCE" and f.severity == "warning" and f.term == "cls"
    assert f.numbers["share"] == pytest.approx(4.41 / 4.474)
    assert f.numbers["ratio/cls:poly"] == pytest.approx(68.90625)
    # 1:1 by lowering cls: 0.5 * 0.064 / 4.41; by raising poly: 7.5 * 4.41 / 0.064
    assert f.numbers["cls/weight_vs_poly"] == pytest.approx(0.5 * 0.064 / 4.41)
    assert f.numbers["poly/weight"] == pytest.approx(516.796875)
    for text in ("cls 4.41 vs poly 0.064", "ratio 68.9", "0.5 × 0.064/4.41 = 0.00726", "7.5 × 4.41/0.064 = 517"):
        assert text in f.message, text
    # in the loss's own terms: the factor 4.41 / 0.064 = 68.9 on poly's weight, or on cls's normalizer
    assert "raise the weight of poly ×68.9 (7.5 → 517)" in f.fix and "0.00726" in f.fix
    assert "change cls's normalizer to one 68.9× larger" in f.fix


def test_dominance_with_a_target_ratio_and_several_terms():
    acc = _account({"cls": 10.0, "box": 0.2, "dfl": 0.5}, {"cls": 0.5, "box": 7.5, "dfl": 1.5})
    (f,) = check_dominance(acc, target_ratio=2.0)
    assert f.numbers["box/weight"] == pytest.approx(7.5 * 10.0 / (2.0 * 0.2))  # 187.5
    assert f.numbers["dfl/weight"] == pytest.approx(1.5 * 10.0 / (2.0 * 0.5))  # 15
    assert f.numbers["cls/weight_vs_box"] == pytest.approx(0.5 * 2.0 * 0.2 / 10.0)
    assert "to reach 2:1" in f.message and "7.5 × 10/(2 × 0.2) = 188" in f.message
    # lowering cls to match the larger of the others (dfl) leaves cls >= every term
    assert "lower cls's weight to 0.05 (2:1 against dfl)" in f.fix
    # applying the raised weights gives exactly the target ratio (norms are linear in the weights)
    new = {n: acc.norms[n] * f.numbers[f"{n}/weight"] / acc.weights[n] for n in ("box", "dfl")}
    assert all(acc.norms["cls"] / v == pytest.approx(2.0) for v in new.values())


def test_dominance_quiet_below_threshold_and_names_zero_gradient_terms():
    assert check_dominance(_account({"cls": 0.8, "box": 0.2}, {"cls": 1.0, "box": 1.0})) == []
    (f,) = check_dominance(_account({"cls": 1.0, "box": 0.0, "dfl": 0.05}, {"cls": 1, "box": 1, "dfl": 1}))
    assert "box has zero gradient" in f.message and "DEAD_GRADIENT" in f.fix
    assert "box/weight" not in f.numbers and f.numbers["dfl/weight"] == pytest.approx(20.0)
    with pytest.raises(ValueError):
        check_dominance(_account({"a": 1.0}, {"a": 1.0}), threshold=1.5)


# -- DEAD_GRADIENT ------------------------------------------------------------------------------


def test_dead_gradient_fires_per_term_above_the_threshold():
    acc = _account({"box": 1, "poly": 1, "cls": 1}, {}, dead={"box": 0.0, "poly": 0.625, "cls": float("nan")})
    (f,) = check_dead(acc)
    assert f.code == "DEAD_GRADIENT" and f.term == "poly" and f.numbers["dead_fraction"] == 0.625
    assert "62.5%" in f.message and "mask" in f.fix
    assert [g.term for g in check_dead(acc, threshold=0.0)] == ["poly"]
    assert check_dead(acc, threshold=0.7) == []


# -- NONFINITE ----------------------------------------------------------------------------------


def test_nonfinite_names_the_first_step_and_term():
    history = [_row(s, box=1.0, poly=0.7) for s in range(1, 10)]
    assert check_nonfinite(history) == []
    history[6]["poly"] = history[6]["poly/raw_sum"] = float("nan")
    history[6]["total"] = float("nan")
    history[8]["box"] = float("inf")
    (f,) = check_nonfinite(history)
    assert f.code == "NONFINITE" and f.severity == "error"
    assert f.term == "poly" and f.numbers["step"] == 7.0
    assert "step 7" in f.message and "'poly'" in f.message and "DETLOSS_DEBUG_NAN=1" in f.fix


def test_nonfinite_from_loss_reports_uses_the_index_as_step():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    one = torch.ones(())

    def report(v):
        return LossReport({"a": make_term("a", x, one, "sum"), "b": make_term("b", v * x, one, "sum")})

    (f,) = check_nonfinite([report(1.0), report(2.0), report(float("inf")), report(float("nan"))])
    assert f.term == "b" and f.numbers["step"] == 2.0


def test_nonfinite_ignores_empty_csv_cells_of_other_columns(tmp_path):
    log = CsvLog(tmp_path / "steps.csv")
    for s in range(1, 6):
        log.write({**_row(s, box=1.0, cls=2.0), "lr": 0.01, "val/map": ""})  # an always-empty column
    rows = read_csv(tmp_path / "steps.csv")
    assert math.isnan(rows[0]["val/map"]) and term_names(rows[0]) == ["box", "cls"]
    assert check_nonfinite(rows) == []
    log.write({**_row(6, box=float("nan"), cls=2.0), "lr": 0.01, "val/map": ""})
    (f,) = check_nonfinite(read_csv(tmp_path / "steps.csv"))
    assert f.term == "box" and f.numbers["step"] == 6.0


# -- NORMALIZER_SKEW ----------------------------------------------------------------------------


def _with_normalizers(prefix: str, values: list[float]) -> list[dict[str, float]]:
    rows = []
    for s, d in enumerate(values):
        row = {f"{prefix}{k}": v for k, v in _row(s, box=1.0, cls=1.0).items() if k != "step"}
        row[f"{prefix}box/normalizer"] = d
        rows.append(row)
    return rows


def test_normalizer_skew_across_steps():
    (f,) = check_normalizer_skew(_with_normalizers("", [2.0, 40.0, 10.0, 5.0]))
    assert f.code == "NORMALIZER_SKEW" and f.term == "box"
    assert f.numbers["spread"] == pytest.approx(20.0) and f.numbers["median"] == pytest.approx(7.5)
    assert "'fixed:7.5'" in f.fix and "batch_size" in f.fix
    assert check_normalizer_skew(_with_normalizers("", [5.0, 20.0, 8.0])) == []  # 4x
    assert check_normalizer_skew(_with_normalizers("", [5.0, 20.0, 8.0]), ratio=3.0)[0].term == "box"


def test_normalizer_skew_between_train_and_validation():
    train = _with_normalizers("train/", [30.0, 25.0, 35.0])
    val = _with_normalizers("val/", [3.0, 2.0, 2.5])
    (f,) = check_normalizer_skew(train, val)  # medians 30 vs 2.5: 12x
    assert f.term == "box" and f.numbers["train_median"] == 30.0 and f.numbers["val_median"] == 2.5
    assert f.numbers["skew"] == pytest.approx(12.0)
    assert "validation" in f.message
    assert check_normalizer_skew(train, _with_normalizers("val/", [20.0, 28.0])) == []
    assert len(check_normalizer_skew(train, _with_normalizers("val/", [12.0]), val_ratio=2.0)) == 1


# -- DETECTION_COLLAPSE -------------------------------------------------------------------------


def _epochs(values: list[float]) -> list[dict[str, float]]:
    return [{"epoch": float(e + 1), "val/dets_per_image": v} for e, v in enumerate(values)]


def test_detection_collapse():
    (f,) = check_detection_collapse(_epochs([5.0, 8.0, 6.0, 1.0]))  # 1 < 0.2 * 8
    assert f.code == "DETECTION_COLLAPSE" and f.severity == "error"
    assert f.numbers["peak"] == 8.0 and f.numbers["last"] == 1.0 and f.numbers["epoch"] == 4.0
    assert "background penalty" in f.fix
    assert check_detection_collapse(_epochs([5.0, 8.0, 6.0, 3.0])) == []
    (f,) = check_detection_collapse(_epochs([0.08, 0.04]))  # under the floor after being above it
    assert f.numbers["last"] == 0.04
    assert check_detection_collapse(_epochs([0.01, 0.02, 0.0])) == []  # never detected: not a collapse
    assert check_detection_collapse(_epochs([3.0])) == []


def test_detection_collapse_skips_epochs_without_evaluation():
    rows = _epochs([4.0, float("nan"), 5.0, float("nan")]) + [{"epoch": 5.0}]
    assert check_detection_collapse(rows) == []
    rows.append({"epoch": 6.0, "val/dets_per_image": 0.5})
    (f,) = check_detection_collapse(rows)
    assert f.numbers["epoch"] == 6.0 and f.numbers["peak_epoch"] == 3.0


# -- PLATEAU ------------------------------------------------------------------------------------


def _noise(n: int, amplitude: float, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (amplitude * (2 * torch.rand(n, generator=g) - 1)).tolist()


def test_plateau_flags_the_flat_term_while_another_decreases():
    n = 100
    box = [1.0 - 0.5 * i / n + e for i, e in enumerate(_noise(n, 0.02))]  # -50% over the window
    poly = [0.68 + e for e in _noise(n, 0.015, seed=1)]  # a polygon loss stuck near 0.68 while box learns
    rows = [_row(i, box=b, poly=p) for i, (b, p) in enumerate(zip(box, poly, strict=True))]
    (f,) = check_plateau(rows)
    assert f.code == "PLATEAU" and f.term == "poly"
    assert abs(f.numbers["relative_change"]) < 0.05 and f.numbers["box/relative_change"] < -0.4
    assert "its own learning rate" in f.fix
    # everything flat: no single term to blame
    flat = [_row(i, box=1.0 + a, poly=0.68 + b) for i, (a, b) in enumerate(zip(_noise(n, 0.01), poly, strict=True))]
    assert check_plateau(flat) == []
    # both decreasing: healthy
    both = [_row(i, box=b, poly=0.68 * (1 - 0.3 * i / n)) for i, b in enumerate(box)]
    assert check_plateau(both) == []


def test_plateau_uses_the_unweighted_loss_and_the_last_window():
    n = 60
    rows = []
    for i in range(n):
        row = _row(i, box=1.0 - 0.4 * i / n, bg=0.5)
        row["bg/weight"] = 0.1 + i / n  # a warm-up schedule: bg's value rises, its loss does not change
        row["bg"] = 0.5 * row["bg/weight"]
        rows.append(row)
    (f,) = check_plateau(rows)
    assert f.term == "bg" and abs(f.numbers["relative_change"]) < 1e-9
    # a term that decreased early and stalled in the last window is flagged; with the full window it is not
    early = [_row(i, box=1.0 - 0.4 * i / n, poly=max(0.3, 1.0 - 0.05 * i)) for i in range(n)]
    assert [g.term for g in check_plateau(early, window=30)] == ["poly"]
    assert check_plateau(early, window=60) == []
    assert check_plateau(early[:5]) == []  # fewer than min_points
